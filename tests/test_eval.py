"""Tests of eval.py (method §9) on hand-built fakes and, when model.py exists, a tiny
Transformer. Every expected number is derived by hand in the comments."""
import json
import math
import re
import shutil
import sys
import types

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import eval as ev  # noqa: E402

TOL32 = 1e-5        # float32 logits


class Uniform(nn.Module):
    """All-zero logits: every token has probability 1/V."""
    def __init__(self, V):
        super().__init__()
        self.V, self.p = V, nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(*x.shape, self.V) + 0 * self.p


class Bigram(nn.Module):
    """logits[t] = log P[x_t]: the next-token distribution depends on the last token only,
    so log-likelihoods can be written down by hand."""
    def __init__(self, P):
        super().__init__()
        self.logP = nn.Parameter(torch.tensor(P, dtype=torch.float32).log(), requires_grad=False)

    def forward(self, x):
        return self.logP[x]                              # (B, T, V)


class CumSum(nn.Module):
    """Causal and dependent on the whole prefix: logits[t] = (sum_{s<=t} E[x_s]) @ Wout.
    A stand-in for a transformer when checking batched vs unbatched choice scoring."""
    def __init__(self, V, d=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E = nn.Parameter(torch.randn(V, d, generator=g))
        self.Wout = nn.Parameter(torch.randn(d, V, generator=g))

    def forward(self, x):
        return self.E[x].cumsum(1) @ self.Wout

    def generate(self, ids, max_new_tokens, eos_id=None):   # greedy, no cache (fake)
        for _ in range(max_new_tokens):
            nxt = self(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if eos_id is not None and nxt.item() == eos_id:
                break
        return ids


class Scripted(nn.Module):
    """generate() appends a fixed token string (tests the parse path)."""
    def __init__(self, tok, answers):
        super().__init__()
        self.tok, self.answers, self.p = tok, list(answers), nn.Parameter(torch.zeros(1))

    def generate(self, ids, max_new_tokens, eos_id=None):
        new = self.tok.encode(self.answers.pop(0)) + [self.tok.eos_id]
        return torch.cat([ids, torch.tensor([new])], 1)


class CharTok:
    """Character-level tokenizer; the last id is EOS."""
    chars = "abcdefghijklmnopqrstuvwxyz ?:.,()ABCDE"

    def __init__(self):
        self.vocab_size = len(self.chars) + 1
        self.eos_id, self.bos_id, self.pad_id = len(self.chars), None, None

    def encode(self, text, bos=False):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids if i < len(self.chars))


# ----------------------------------------------------------------------------- perplexity

def test_s9_ppl_uniform_equals_vocab():
    V = 37
    ids = torch.randint(0, V, (100,), generator=torch.Generator().manual_seed(0))
    assert abs(ev.perplexity(Uniform(V), ids, seqlen=16, batch_size=4) - V) < TOL32 * V
    rec = ev.perplexity_record(Uniform(V), ids.tolist(), 16, corpus="rand")
    # 100 // 16 = 6 windows (4 tokens dropped), each predicting 15 tokens
    assert (rec["windows"], rec["predicted_tokens"], rec["seqlen"]) == (6, 90, 16)
    assert rec["corpus"] == "rand" and rec["dtype"] == "float32"


def test_s9_ppl_hand_and_remainder_dropped():
    P = [[0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]
    m = Bigram(P)
    # windows [0,1,2] and [2,2,0]; the trailing 1 is dropped.
    # NLL = -log P[0][1] - log P[1][2] - log P[2][2] - log P[2][0] over 4 predicted tokens
    nll = -(math.log(0.6) + math.log(0.25) + math.log(0.6) + math.log(0.2))
    want = math.exp(nll / 4)
    assert abs(ev.perplexity(m, [0, 1, 2, 2, 2, 0, 1], 3) - want) < TOL32 * want
    assert abs(ev.perplexity(m, [0, 1, 2, 2, 2, 0, 2], 3, batch_size=1) - want) < TOL32 * want
    with pytest.raises(ValueError, match="fewer than one window"):
        ev.perplexity(m, [0, 1], 3)


# ----------------------------------------------------------------------------- choices

def test_s9_choice_loglik_hand_and_known_answer():
    P = [[0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1], [0.25] * 4, [0.4, 0.3, 0.2, 0.1]]
    m = Bigram(P)
    # prompt [0]; choice A = [1, 2]: log P[0][1] + log P[1][2] = log .6 + log .7 = log .42
    #             choice B = [3]:    log P[0][3] = log .1
    #             choice C = [2, 3]: log P[0][2] + log P[2][3] = log .2 + log .25 = log .05
    want = [math.log(0.42), math.log(0.1), math.log(0.05)]
    for batched in (True, False):
        got = ev.choice_logliks(m, [0], [[1, 2], [3], [2, 3]], batched=batched)
        assert max(abs(a - b) for a, b in zip(got, want)) < TOL32
    # through the classification loop: the known answer A (label 0) wins
    tok = types.SimpleNamespace(encode=lambda t, bos=False: [int(c) for c in t], eos_id=None)
    res = ev.eval_classification(m, tok, "t", [{"prompt": "0", "choices": ["12", "3", "23"],
                                                "label": 0}], log=lambda *_: None)
    assert res["accuracy"] == 1.0 and res["macro_f1"] == 1.0


def test_s9_batched_choices_equal_unbatched():
    tok = CharTok()
    m = CumSum(tok.vocab_size)
    prompt = "question: is the sky blue? answer:"
    for choices in ([" yes", " no", " maybe"], [" y", " n", " m"], ["(A) x", "(B) yy", " zzz."]):
        a = ev.score_choices(m, tok, prompt, choices, batched=True)
        b = ev.score_choices(m, tok, prompt, choices, batched=False)
        assert max(abs(x - y) for x, y in zip(a, b)) < TOL32, (choices, a, b)
    # tokenised separately: the boundary is exactly len(prompt ids)
    a = ev.score_choices(m, tok, "ab", ["c"])[0]
    logp = torch.log_softmax(m(torch.tensor([[0, 1]]))[0, -1], -1)
    assert abs(a - logp[2].item()) < TOL32


def test_s9_batched_choices_tiny_transformer(make_model):
    # the real model: prompt once, choices continued from its KV cache copied to C rows
    m = make_model(seed=3).double()
    with torch.no_grad():                     # sharper than the 0.02 init, so choices differ
        for p in m.parameters():
            p.mul_(10) if p.dim() == 2 else None
    prompt = [3, 7, 9, 11, 4]
    for choices in ([[5, 6, 7], [8], [9, 10, 11, 12, 13]], [[5], [8], [100]]):
        a = ev.choice_logliks(m, prompt, choices, batched=True)
        b = ev.choice_logliks(m, prompt, choices, batched=False)
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-10, (a, b)
        assert len(set(a)) == len(a)
    assert not m.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_s9_batched_choices_cuda_bf16(make_model):
    # bf16 on the GPU: cached (SDPA with an explicit mask) vs full causal forward may differ
    # by bf16 rounding of the activations; log-softmax itself runs in float32
    m = make_model(seed=3).to("cuda", torch.bfloat16)
    prompt, choices = [3, 7, 9, 11, 4], [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    a = ev.choice_logliks(m, prompt, choices, batched=True)
    b = ev.choice_logliks(m, prompt, choices, batched=False)
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05, (a, b)
    ids = torch.randint(0, 128, (300,), generator=torch.Generator().manual_seed(0))
    assert ev.perplexity(m, ids, 64) == pytest.approx(ev.perplexity(m.float(), ids, 64), rel=0.02)


def test_s9_macro_f1_hand():
    # class 0: TP 1 (i0), FP 1 (i1), FN 1 (i5)   -> 2/(2+1+1) = 1/2
    # class 1: TP 1 (i2), FP 0,      FN 1 (i1)   -> 2/(2+0+1) = 2/3
    # class 2: TP 2 (i3,i4), FP 1 (i5), FN 0     -> 4/(4+1+0) = 4/5
    preds, labels = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    assert abs(ev.macro_f1(preds, labels) - (1 / 2 + 2 / 3 + 4 / 5) / 3) < 1e-12
    # a class only predicted counts (sklearn union): class 0 -> 2/3, class 1 -> 0; mean 1/3
    assert abs(ev.macro_f1([0, 1], [0, 0]) - 1 / 3) < 1e-12
    # unparsable (None) is wrong but not a class: class 0 TP 1 FN 1 -> 2/3
    assert abs(ev.macro_f1([None, 0], [0, 0]) - 2 / 3) < 1e-12


# ----------------------------------------------------------------------------- generation

def test_s9_parse_answer():
    yn = ["yes", "no", "maybe"]
    assert ev.parse_answer(" yes, because the trial shows it", yn) == 0
    assert ev.parse_answer("No.", yn) == 1
    assert ev.parse_answer("I would say maybe.", yn) == 2        # the only choice inside
    assert ev.parse_answer("It is unclear", yn) is None          # unparsable
    assert ev.parse_answer("neither yes nor no", yn) is None     # ambiguous
    assert ev.parse_answer("A patient was seen", ["yes", "no"]) is None  # "A" is not a letter
    hold = ["holding that the contract is void", "holding that the claim is barred",
            "holding that", "holding x", "holding y"]
    assert ev.parse_answer("B", hold) == 1
    assert ev.parse_answer(" (C) because", hold) == 2
    assert ev.parse_answer("E.", hold) == 4
    assert ev.parse_answer("c) the third", hold) == 2 and ev.parse_answer("d", hold) == 3
    assert ev.parse_answer("E", hold[:3]) is None                # no fifth choice
    assert ev.parse_answer("Holding that the claim is barred.", hold) == 1  # longest prefix


def test_s9_generate_mode_counts_unparsable_wrong():
    tok = CharTok()
    exs = [{"prompt": "q?", "choices": ["yes", "no", "maybe"], "label": y} for y in (0, 1, 2)]
    m = Scripted(tok, ["yes", "hmm", "maybe."])
    res = ev.eval_classification(m, tok, "t", exs, mode="generate", log=lambda *_: None)
    assert res["accuracy"] == pytest.approx(2 / 3) and res["unparsable"] == 1
    # classes {0,1,2}: F1 1, 0 (FN only), 1 -> 2/3
    assert res["macro_f1"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- ROUGE

def test_s9_rouge_hand():
    # p = the cat sat on the mat, r = the cat is on the mat (6 tokens each, punctuation gone)
    # ROUGE-1: overlap the:min(2,2) + cat + on + mat = 5 -> P = R = 5/6
    # ROUGE-2: p {the cat, cat sat, sat on, on the, the mat}, r {the cat, cat is, is on,
    #          on the, the mat}: overlap 3 of 5 each -> 3/5
    # ROUGE-L: LCS "the cat on the mat" = 5 -> 5/6
    s = ev.rouge("The cat sat on the mat.", "The cat is on the mat!")
    assert s == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # clipping: "the the the" vs "the cat": unigram overlap min(3,1) = 1, P 1/3, R 1/2,
    # F1 = 2(1/6)/(5/6) = 2/5; no shared bigram; LCS 1 -> 2/5
    s = ev.rouge("the the the", "the cat")
    assert s == pytest.approx({"rouge1": 0.4, "rouge2": 0.0, "rougeL": 0.4})
    # order: all unigrams shared, no bigram, LCS of a b c d / d c b a is 1 -> 1/4
    assert ev.rouge("a b c d", "d c b a") == pytest.approx(
        {"rouge1": 1.0, "rouge2": 0.0, "rougeL": 0.25})
    # case and non-alphanumerics: "don't" -> "don t"; no stemming ("cats" != "cat")
    assert ev.rouge("Hello, WORLD! don't", "hello world don t")["rougeL"] == pytest.approx(1)
    assert ev.rouge("cats", "cat")["rouge1"] == 0.0
    assert ev.rouge("", "anything") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


# ----------------------------------------------------------------------------- % of dense

def test_s9_relative_performance():
    # acc 0.5 / 0.625 = 0.8; ppl inverted 16 / 20 = 0.8; rougeL 0.3 / 0.2 = 1.5
    # mean (0.8 + 0.8 + 1.5) / 3 x 100 = 103.33...; "x/f1" absent on the method side
    r = ev.relative_performance({"a/accuracy": 0.5, "ppl": 20.0, "s/rougeL": 0.3},
                                {"a/accuracy": 0.625, "ppl": 16.0, "s/rougeL": 0.2,
                                 "x/f1": 0.5})
    assert r["ratios"] == pytest.approx({"a/accuracy": 0.8, "ppl": 0.8, "s/rougeL": 1.5})
    assert r["percent_of_dense"] == pytest.approx(310 / 3) and r["skipped"] == ["x/f1"]


# ----------------------------------------------------------------------------- evaluate

def test_s9_evaluate_dispatch_and_greedy():
    tok = CharTok()
    m = CumSum(tok.vocab_size, seed=1)
    tasks = {"qa": [{"prompt": "is it? ", "completion": "yes", "choices": ["yes", "no"],
                     "label": 0}] * 3,
             "sum": [{"prompt": "text: abc. summary:", "completion": "ab", "reference": "ab"}]}
    lines = []
    res = ev.evaluate(m, tok, tasks, ppl_text="the quick brown fox jumps over the lazy dog",
                      seqlen=8, max_new_tokens=6, log=lines.append)
    assert set(res["metrics"]) == {"qa/accuracy", "qa/macro_f1", "sum/rouge1", "sum/rouge2",
                                   "sum/rougeL", "ppl"}
    assert res["ppl"]["windows"] == 43 // 8 and lines
    # the summary equals a hand-rolled greedy loop on the same model
    pred = ev.greedy(m, tok, "text: abc. summary:", 6).strip()
    assert res["tasks"]["sum"]["rougeL"] == pytest.approx(ev.rouge(pred, "ab")["rougeL"])
    with pytest.raises(ValueError, match="not a mix"):
        ev.evaluate(m, tok, {"bad": [{"prompt": "a", "completion": "b"}]}, log=lines.append)


def test_s9_markdown_table():
    t = ev.markdown_table([{"name": "dense", "metrics": {"ppl": 12.5}, "rel": 100.0}], ["ppl"])
    assert t.splitlines()[0] == "| method | ppl | % of dense |"
    assert t.splitlines()[2] == "| dense | 12.5000 | 100.0 |"


# ----------------------------------------------------------------------------- report, CLI

def test_s9_sparsity_report(make_model):
    m = make_model()
    with torch.no_grad():
        q = m.model.layers[0].self_attn.q_proj.weight          # (64, 64): 2:4 by hand
        q.view(q.shape[0], -1, 4)[:, :, :2] = 0                # first 2 of every 4 -> 1/2
        m.model.layers[1].mlp.down_proj.weight.zero_()         # (64, 96) fully zero
    r = ev.sparsity_report(m, nm=(2, 4))
    assert r["per_map"]["model.layers.0.self_attn.q_proj"] == {"zeros": 2048, "numel": 4096,
                                                               "sparsity": 0.5, "nm_valid": True}
    assert r["per_map"]["model.layers.0.self_attn.k_proj"]["nm_valid"] is False
    assert r["per_map"]["model.layers.1.mlp.down_proj"]["sparsity"] == 1.0
    # block 0: q (64x64 = 4096 weights, half zero) of q,k,v,o = 4096+2048+2048+4096 and
    # 3 MLP maps of 64x96 = 6144 each -> 12288 + 18432 = 30720 weights, 2048 zeros
    assert r["per_block"]["0"]["sparsity"] == pytest.approx(2048 / 30720)
    assert r["overall"]["sparsity"] == pytest.approx((2048 + 6144) / 61440)
    assert r["nm_valid"] is False                              # other maps are dense
    assert ev.sparsity_report(m)["nm_valid"] is None


def test_s9_cli_end_to_end(make_ckpt, tmp_path):
    pytest.importorskip("data")
    ckpt, _ = make_ckpt()                     # word-level tokenizer: w0 .. w124
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}", "completion": " w7",
                                      "choices": [" w7", " w8 w9"], "label": 0}) + "\n"
                          for i in range(3)))
    sm = tmp_path / "sm.jsonl"
    sm.write_text(json.dumps({"prompt": "w1 w2", "completion": " w3", "reference": "w3 w4"}))
    ppl = tmp_path / "ppl.txt"
    ppl.write_text(" ".join(f"w{i % 50}" for i in range(70)))
    out = tmp_path / "out"
    ev.main(["--model", str(ckpt), "--tasks", str(mc), str(sm), "--ppl_file", str(ppl),
             "--seqlen", "16", "--max_new_tokens", "4", "--device", "cpu", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["ppl"]["windows"] == 70 // 16 and res["tasks"]["mc"]["n"] == 3
    assert {"mc/accuracy", "sm/rougeL", "ppl"} <= set(res["metrics"])
    assert res["config"]["seqlen"] == 16 and res["sparsity"]["overall"]["zeros"] == 0
    assert (out / "results.md").read_text().startswith("| method | mc/accuracy")


def test_s9_ppl_window_nll_hand():
    """Each window's summed NLL (compare.py bootstraps over them): the Bigram windows of
    test_s9_ppl_hand_and_remainder_dropped, [0,1,2] and [2,2,0], by hand; they give the ppl."""
    m = Bigram([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    rec = ev.perplexity_record(m, [0, 1, 2, 2, 2, 0, 1], 3, batch_size=1)
    want = [-(math.log(0.6) + math.log(0.25)), -(math.log(0.6) + math.log(0.2))]
    assert rec["window_nll"] == pytest.approx(want, rel=TOL32)
    assert rec["ppl"] == pytest.approx(math.exp(sum(rec["window_nll"]) / 4), rel=1e-12)


def test_s9_prompt_ids_bos_and_left_cut():
    tok = types.SimpleNamespace(encode=lambda t, bos=False: [ord(c) for c in t], bos_id=1,
                                add_bos=True)
    assert ev._prompt_ids(tok, "abc", None) == [1, 97, 98, 99]
    assert ev._prompt_ids(tok, "abc", 3) == [1, 98, 99]        # BOS kept, prompt cut left
    tok.add_bos = False
    assert ev._prompt_ids(tok, "abc", 2) == [98, 99]
    assert ev._prompt_ids(tok, "", None) == [1]                # empty prompt: BOS as context


def test_s9_greedy_tiny_transformer_matches_argmax_loop(make_model):
    m = make_model(seed=1)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(10) if p.dim() == 2 else None
    tok = types.SimpleNamespace(encode=lambda t, bos=False: [int(w) for w in t.split()],
                                decode=lambda ids: " ".join(map(str, ids)), bos_id=1, eos_id=None)
    ids = [5, 9, 17]
    want = list(ids)
    with torch.no_grad():
        for _ in range(6):                    # full recompute, no cache
            want.append(int(m(torch.tensor([want]))[0, -1].argmax()))
    got = ev.greedy(m, tok, "5 9 17", 6)
    eos = m.config.eos_token_id
    new = want[3:][:want[3:].index(eos)] if eos in want[3:] else want[3:]
    assert got == " ".join(map(str, new))


# ----------------------------------------------------------------------------- trustworthy output

WORDS = ["yes", "no", "maybe", "q0", "q1", "q2"]          # one token per word
WTOK = types.SimpleNamespace(encode=lambda t, bos=False: [WORDS.index(w) for w in t.split()],
                             eos_id=None)


def prefers(picks):
    """Bigram whose answer after prompt word q<k> is the choice picks[k]: P(picks[k]) = 0.5, every
    other word 0.1; so the scores of yes/no/maybe after q<k> are log .5 / log .1."""
    P = [[1 / 6] * 6 for _ in range(3)]
    for k in range(3):
        P.append([0.5 if j == picks[k] else 0.1 for j in range(6)])
    return Bigram(P)


def qa(pairs, **extra):
    """Examples from (prompt word, gold index) pairs, choices yes / no / maybe."""
    choices = [" yes", " no", " maybe"]
    return [{"prompt": q, "completion": choices[y], "choices": choices, "label": y, **extra}
            for q, y in pairs]


def test_s9_predictions_file_and_counts(tmp_path):
    m = prefers([0, 1, 2])                              # q0 -> yes, q1 -> no, q2 -> maybe
    exs = qa([("q0", 0), ("q1", 0), ("q1", 1), ("q2", 1), ("q2", 2)])
    exs[0] = {**exs[0], "id": "pmid-7"}
    lines = []
    res = ev.evaluate(m, WTOK, {"qa": exs}, log=lines.append, name="runA")
    t = res["tasks"]["qa"]
    # gold yes yes no no maybe, predicted yes no no maybe maybe -> 3 of 5 right
    assert t["accuracy"] == pytest.approx(3 / 5) and t["labels"] == ["yes", "no", "maybe"]
    assert t["gold_counts"] == {"yes": 2, "no": 2, "maybe": 1}
    assert t["pred_counts"] == {"yes": 1, "no": 2, "maybe": 2}
    assert t["confusion"] == {"yes": {"yes": 1, "no": 1, "maybe": 0},
                              "no": {"yes": 0, "no": 1, "maybe": 1},
                              "maybe": {"yes": 0, "no": 0, "maybe": 1}}
    assert t["collapse"] is None and "predictions" not in t
    assert any(ln.startswith("[eval] qa 5/5") for ln in lines)           # cli.Progress line
    ev.write(tmp_path, res, "table\n")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "predictions" not in saved and saved["name"] == "runA"
    recs = [json.loads(ln) for ln in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(r["index"], r["prediction"], r["label"], r["correct"]) for r in recs] == [
        (0, 0, 0, True), (1, 1, 0, False), (2, 1, 1, True), (3, 2, 1, False), (4, 2, 2, True)]
    assert {r["name"] for r in recs} == {"runA"} and {r["task"] for r in recs} == {"qa"}
    assert recs[0]["id"] == "pmid-7" and recs[1]["id"] is None
    want = [math.log(0.5), math.log(0.1), math.log(0.1)]            # q0: yes 0.5, no/maybe 0.1
    assert recs[0]["scores"] == pytest.approx(want, abs=TOL32)
    ev.write_predictions(tmp_path / "p2.jsonl", res)                 # the helper train.py calls
    assert (tmp_path / "p2.jsonl").read_text() == (tmp_path / "predictions.jsonl").read_text()


def test_s9_summary_record_and_index_labels():
    tok = CharTok()
    res = ev.eval_summarisation(Scripted(tok, ["the cat"]), tok, "sum",
                                [{"prompt": "a", "reference": "the cat sat"}], log=lambda *_: None)
    (r,) = res["predictions"]
    assert (r["prediction"], r["label"]) == ("the cat", "the cat sat")
    assert r["rouge"] == pytest.approx(ev.rouge("the cat", "the cat sat"))
    # option texts differ per example: labels are indices; None counts as '<unparsable>'
    exs = [{"choices": ["a x", "b y"], "label": 0}, {"choices": ["c", "d", "e"], "label": 2},
           {"choices": ["f", "g"], "label": 1}]
    rep = ev.label_report("mc", exs, [1, 2, None], log=lambda *_: None)
    assert rep["labels"] == ["0", "1", "2"]
    assert rep["gold_counts"] == {"0": 1, "1": 1, "2": 1}
    assert rep["pred_counts"] == {"0": 0, "1": 1, "2": 1, "<unparsable>": 1}
    assert rep["confusion"]["0"] == {"0": 0, "1": 1, "2": 0, "<unparsable>": 0}
    assert rep["confusion"]["1"]["<unparsable>"] == 1


def test_s9_collapse_warning():
    # 12 items, gold 7 yes / 5 no; a model that always answers yes
    exs = qa([("q0", 0)] * 4 + [("q1", 0)] * 3 + [("q1", 1)] * 2 + [("q2", 1)] * 3)
    lines = []
    t = ev.evaluate(prefers([0, 0, 0]), WTOK, {"pqa": exs}, log=lines.append)["tasks"]["pqa"]
    warn = [ln for ln in lines if "WARNING" in ln]
    assert len(warn) == 1 and warn[0].startswith("[eval] WARNING pqa: 'yes' predicted for 12/12 "
                                                 "items (gold 7/12)")
    assert t["collapse"] == {"label": "yes", "predicted": 12, "gold": 7, "n": 12, "share": 1.0}
    # a balanced model (q0 -> yes, q1 -> no, q2 -> maybe: 4/5/3 answers): no warning
    lines = []
    t = ev.evaluate(prefers([0, 1, 2]), WTOK, {"pqa": exs}, log=lines.append)["tasks"]["pqa"]
    assert t["collapse"] is None and not any("WARNING" in ln for ln in lines)
    assert t["pred_counts"] == {"yes": 4, "no": 5, "maybe": 3}
    # thresholds: 9 of 10 fires, 8 of 10 does not; one gold label or < 10 items never fires
    ten = qa([("q0", 0)] * 5 + [("q0", 1)] * 5)
    quiet = lambda *_: None  # noqa: E731
    assert ev.label_report("t", ten, [0] * 9 + [1], quiet)["collapse"]["share"] == 0.9
    assert ev.label_report("t", ten, [0] * 8 + [1] * 2, quiet)["collapse"] is None
    assert ev.label_report("t", qa([("q0", 0)] * 10), [0] * 10, quiet)["collapse"] is None
    assert ev.label_report("t", ten[1:], [0] * 9, quiet)["collapse"] is None


def test_s9_collapse_is_marked_in_the_table_row():
    """The final table marks a collapsed task's accuracy with the label and the test set's
    majority-label rate; a task that did not collapse shows the plain value."""
    exs = qa([("q0", 0)] * 4 + [("q1", 0)] * 3 + [("q1", 1)] * 2 + [("q2", 1)] * 3)
    res = ev.evaluate(prefers([0, 0, 0]), WTOK, {"pqa": exs}, log=lambda *_: None)
    assert res["tasks"]["pqa"]["majority"] == 7 / 12
    table = ev.markdown_table([{"name": "run", **res}], list(res["metrics"]))
    assert f"{7 / 12:.4f} (all 'yes'; majority 0.583)" in table
    assert ev.metric_cell("pqa/macro_f1", 0.5, res["tasks"]) == "0.5000"       # only accuracy is marked
    fine = ev.evaluate(prefers([0, 1, 2]), WTOK, {"pqa": exs}, log=lambda *_: None)
    assert ev.metric_cell("pqa/accuracy", 0.5, fine["tasks"]) == "0.5000"
    recs = res["predictions"]
    assert [r["prediction_text"] for r in recs] == [exs[0]["choices"][0]] * 12
    assert [r["label_text"] for r in recs] == [ex["choices"][ex["label"]] for ex in exs]


def test_s9_run_name():
    assert ev.run_name("runs/wanda50/model") == "wanda50"
    assert ev.run_name("runs/wanda50/model/") == "wanda50"
    assert ev.run_name("/data/ckpts/smollm2-135m") == "smollm2-135m"


def test_s9_ppl_progress_silent_by_default(capsys):
    ids = torch.randint(0, 37, (100,), generator=torch.Generator().manual_seed(0))
    lines = []
    ev.perplexity_record(Uniform(37), ids, 16, batch_size=4, log=lines.append)
    assert lines and lines[-1].startswith("[eval] ppl 6/6 ")          # 100 // 16 windows
    ev.perplexity_record(Uniform(37), ids, 16, batch_size=4)
    assert capsys.readouterr().out == ""


def test_s9_cli_name_default_model_and_overwrite(make_ckpt, tmp_path, monkeypatch, capsys):
    pytest.importorskip("data")
    ckpt, _ = make_ckpt()
    run_dir = tmp_path / "myrun" / "model"                 # train.py's layout: <run>/model
    shutil.copytree(ckpt, run_dir)
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"prompt": f"w{i}", "completion": [" w7", " w8"][i % 2],
                                      "choices": [" w7", " w8"], "label": i % 2}) + "\n" for i in range(4)))
    monkeypatch.chdir(tmp_path)                            # the default out is relative: runs/...
    monkeypatch.setattr(ev.assets, "default_model_dir", lambda: run_dir)
    argv = ["--tasks", str(mc), "--seqlen", "16", "--device", "cpu"]
    ev.main(argv)                                          # no --model, no --out
    assert capsys.readouterr().out.splitlines()[0].startswith(f"[eval] model {run_dir} ")
    out = tmp_path / "runs" / "eval-myrun"
    res = json.loads((out / "results.json").read_text())
    assert res["name"] == "myrun" and res["config"]["model"] == str(run_dir)
    assert (out / "results.md").read_text().splitlines()[2].startswith("| myrun |")
    recs = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and {r["name"] for r in recs} == {"myrun"}
    with pytest.raises(SystemExit, match=r"eval-myrun/results\.json exists .*--overwrite"):
        ev.main(argv)                                      # an earlier evaluation is kept
    ev.main(argv + ["--overwrite", "--max_examples", "2"])
    assert json.loads((out / "results.json").read_text())["tasks"]["mc"]["n"] == 2
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit):
        ev.main(["--help"])
    assert "relative performance (% of dense) and the sparsity report." in capsys.readouterr().out


# ------------------------------------------------------------ edges the mutation run found
def test_s9_ppl_record_fields_window_cap_and_shortest_window():
    """The record's own fields (corpus "" by default, corpus_tokens), max_windows caps the
    windows (the rest is not read), and seqlen = 2 (one predicted token a window) is valid."""
    ids = torch.randint(0, 37, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    rec = ev.perplexity_record(Uniform(37), ids, 16, max_windows=3)
    assert rec["corpus"] == "" and rec["corpus_tokens"] == 100
    assert rec["windows"] == 3 and rec["predicted_tokens"] == 45 and len(rec["window_nll"]) == 3
    assert ev.perplexity_record(Uniform(37), ids, 16)["windows"] == 6            # 100 // 16
    two = ev.perplexity_record(Uniform(37), ids, 2)
    assert two["windows"] == 50 and two["ppl"] == pytest.approx(37.0)


def test_s9_rouge_one_word_and_relative_performance_edges():
    """One-word texts (P and R divide by 1, not by a floor of 2); a metric named
    "perplexity" is inverted like "ppl"; no comparable metric at all -> nan, not an error."""
    assert ev.rouge("cat", "cat") == {"rouge1": 1.0, "rouge2": 0.0, "rougeL": 1.0}
    assert ev.rouge("the cat", "cat")["rouge1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    r = ev.relative_performance({"Perplexity": 20.0}, {"Perplexity": 10.0})
    assert r["ratios"] == {"Perplexity": 0.5}
    assert math.isnan(ev.relative_performance({}, {"x/accuracy": 0.5})["percent_of_dense"])


def test_s9_metric_refusals_and_ppl_progress_line():
    """The refusals say what they refused; the perplexity progress line counts windows and
    shows the running perplexity (the uniform model: exactly the vocabulary size)."""
    with pytest.raises(ValueError, match=r"^eval\.macro_f1: 2 predictions, 3 labels$"):
        ev.macro_f1([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"^eval\.perplexity: seqlen must be >= 2, got 1$"):
        ev.perplexity_record(Uniform(37), list(range(30)), 1)
    lines = []
    ev.perplexity_record(Uniform(37), list(range(30)) * 2, 16, batch_size=2, log=lines.append)
    assert re.fullmatch(r"\[eval\] ppl 3/3 \([\d.]+ (window/s|s/window), 0:00 elapsed\)  ppl 37\.000", lines[-1]), lines
