"""Evaluation (method §9): perplexity, classification / multiple choice, summarisation,
relative performance (% of dense) and the sparsity report. The CLI evaluates one model and
writes results.json, results.md and predictions.jsonl (one record per example) to --out.

* Perplexity: non-overlapping windows of the tokenised corpus (remainder dropped),
  PPL = exp(total NLL / predicted tokens), recorded with corpus, seqlen, windows and dtype.
* Classification: summed log-likelihood of each choice's continuation after the prompt
  (deterministic) -> accuracy, macro-F1; or `generate` mode (greedy, answer parsed from text,
  unparsable = wrong). Summarisation: greedy decoding (KV cache) -> ROUGE-1/2/L F1.
* Relative performance: per-metric ratio to dense (perplexity inverted), mean x 100.

Run (every field of EvalConfig is a flag; --help lists them; the comparison: compare.py):
    python eval.py --domain med        # default model; out runs/eval-<name>, kept unless --overwrite
    python eval.py --model runs/x/model --tasks a.jsonl --ppl_file corpus.txt     # name x
Model: `model(ids (B,T)) -> logits (B,T,V)` at every position, `.generate`; tokenizer (files.py)
`.encode(text, bos=False)`, `.decode(ids)`, `.eos_id`.
"""
import dataclasses
import inspect
import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import model as M
from support import assets, cli, files


def _wide(t):                  # log-softmax in float32 at least (bf16/fp16 logits), float64 kept
    return t if t.dtype == torch.float64 else t.float()


# ----------------------------------------------------------------------------- perplexity
def perplexity_record(model, token_ids, seqlen, corpus="", batch_size=8, max_windows=None, log=None):
    """method §9 perplexity with its protocol (what results JSON records).

    Each window of seqlen tokens predicts its last seqlen-1 tokens from the ones before it;
    PPL = exp(total NLL / predicted tokens) (the Wanda/SparseGPT wikitext scripts divide by
    n*seqlen, a factor seqlen/(seqlen-1) in the exponent); "window_nll": each window's summed
    NLL (compare.py bootstraps over windows). max_windows: only the first windows (quick CPU
    checks); recorded, so a partial corpus is never mistaken for the whole."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if seqlen < 2:
        raise ValueError(f"eval.perplexity: seqlen must be >= 2, got {seqlen}")
    n = ids.numel() // seqlen                                # remainder dropped (method §9)
    if n == 0:
        raise ValueError(f"eval.perplexity: {ids.numel()} corpus tokens, fewer than one window of seqlen={seqlen}")
    n = min(n, max_windows) if max_windows else n
    windows = ids[: n * seqlen].view(n, seqlen)              # (n, seqlen)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    nll = []                                                 # per window, float64
    bar = cli.Progress("[eval] ppl", n, "window", log=log or (lambda _: None))  # None: silent
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x = windows[i:i + batch_size].to(device)         # (B, T)
            logits = model(x)                                # (B, T, V)
            for b in range(x.shape[0]):                      # float32 copy of one row at a time
                nll.append(F.cross_entropy(_wide(logits[b, :-1]), x[b, 1:], reduction="sum").item())
            bar.update(i + len(x), f"ppl {math.exp(sum(nll) / (len(nll) * (seqlen - 1))):.3f}")
    model.train(was_training)
    return {"ppl": math.exp(sum(nll) / (n * (seqlen - 1))), "corpus": corpus, "seqlen": seqlen, "windows": n,
            "predicted_tokens": n * (seqlen - 1), "corpus_tokens": ids.numel(), "window_nll": nll,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}


def perplexity(model, token_ids, seqlen, batch_size=8):
    """method §9: exp(total NLL / predicted tokens) over non-overlapping windows -> float."""
    return perplexity_record(model, token_ids, seqlen, batch_size=batch_size)["ppl"]


# ----------------------------------------------------------------------------- choices
def _prompt_ids(tok, prompt, max_len):
    """[BOS] + prompt ids as data.encode_example builds them for fine-tuning (BOS only when
    the tokenizer adds one); a too-long prompt keeps its end (cut from the left, as data.py)."""
    ids, bos = tok.encode(prompt, bos=False), getattr(tok, "bos_id", None)
    add = int(bos is not None and (getattr(tok, "add_bos", False) or not ids))  # empty: context
    if not ids and not add:
        raise ValueError("eval: empty prompt and the tokenizer has no bos_id")
    if max_len:
        ids = ids[max(len(ids) - (max_len - add), 0):]
    return [bos] * add + ids


def choice_logliks(model, prompt_ids, choice_ids, batched=True):
    """Summed log p(choice tokens | prompt) per choice; exact token boundaries.

    batched=True: the prompt runs once; its last position scores every choice's first token
    (one-token label words such as yes/no/maybe need nothing more). Longer choices continue
    from the prompt's KV cache, copied to C rows, as one right-padded (C, L-1) batch; causal
    attention means the padding after a row's last real token cannot change its logits.
    A model without a `cache` argument gets one right-padded batch of prompt+choice rows
    instead (the prompt is then recomputed per row, in the same forward).
    batched=False: one full forward per prompt+choice row (the reference the tests use)."""
    if not prompt_ids:
        raise ValueError("eval.choice_logliks: prompt_ids is empty (need >= 1 context token)")
    if any(len(c) == 0 for c in choice_ids):
        raise ValueError("eval.choice_logliks: a choice tokenised to zero tokens")
    device, P, L = next(model.parameters()).device, len(prompt_ids), max(map(len, choice_ids))

    def picked(logits, targets):               # logits (n, V), targets list[int] -> sum log p
        logp = torch.log_softmax(_wide(logits), dim=-1)
        return logp.gather(1, torch.tensor(targets, device=logp.device)[:, None]).sum().item()

    was_training = model.training
    model.eval()
    with torch.no_grad():
        if not batched:                          # position P-1+j predicts choice token j
            scores = [picked(model(torch.tensor([prompt_ids + c], device=device))[0, P - 1:-1],
                             c) for c in choice_ids]
        elif L == 1 or "cache" in inspect.signature(model.forward).parameters:
            cache = M.KVCache(len(model.model.layers), P + L - 1) if L > 1 else None
            x = torch.tensor([prompt_ids], device=device)                       # (1, P)
            first = (model(x) if cache is None else model(x, cache=cache))[0, -1]
            scores = [picked(first[None], c[:1]) for c in choice_ids]         # token 0
            if L > 1:                           # the one-row prompt cache widens to C rows
                x = torch.tensor([c[:-1] + [0] * (L - len(c)) for c in choice_ids], device=device)
                rest = model(x, cache=cache)    # (C, L-1, V): position j predicts token j+1
                scores = [s + (picked(rest[i, :len(c) - 1], c[1:]) if len(c) > 1 else 0.0)
                          for i, (s, c) in enumerate(zip(scores, choice_ids))]
        else:
            x = torch.tensor([prompt_ids + c + [0] * (L - len(c)) for c in choice_ids], device=device)
            logits = model(x)                   # (C, P+L, V)
            scores = [picked(logits[i, P - 1:P - 1 + len(c)], c) for i, c in enumerate(choice_ids)]
    model.train(was_training)
    return scores


def score_choices(model, tok, prompt, choices, batched=True, max_len=None):
    """method §9: summed log-likelihood of each choice text after the prompt.

    Prompt and choice are tokenised separately and the ids concatenated, so the boundary is
    exactly where the data puts it (as fine-tuning does with prompt/completion)."""
    choice_ids = [tok.encode(c, bos=False) for c in choices]
    room = max_len - max(len(c) for c in choice_ids) if max_len else None
    return choice_logliks(model, _prompt_ids(tok, prompt, room), choice_ids, batched)


def _norm_words(text):
    # rouge-score tokenisation (method §9): lowercase, non-alphanumerics -> space, split
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def parse_answer(text, choices):
    """Index of the choice a generated answer names, or None (counted wrong).

    In order: (1) the answer starts with a choice's words (the longest such choice: label
    words like "yes", or a whole option text); (2) a letter A-E / a-e first, alone or followed
    by ).: ("B", "(b)", "c)"); (3) exactly one choice's words occur somewhere in the answer."""
    words, cw = _norm_words(text), [_norm_words(c) for c in choices]
    starts = [i for i, c in enumerate(cw) if c and words[:len(c)] == c]
    if starts:
        best = max(len(cw[i]) for i in starts)
        hits = [i for i in starts if len(cw[i]) == best]
        if len(hits) == 1:
            return hits[0]
    m = re.match(r"\s*\(?([A-Ea-e])(?:[).:]|\s*$|\s*\n)", text)  # "A patient" is no letter
    if m and ord(m.group(1).upper()) - 65 < len(choices):
        return ord(m.group(1).upper()) - 65
    padded = " " + " ".join(words) + " "
    inside = [i for i, c in enumerate(cw) if c and (" " + " ".join(c) + " ") in padded]
    return inside[0] if len(inside) == 1 else None


def macro_f1(predictions, labels):
    """Macro-F1, sklearn convention: classes = union of labels and predictions; per class
    F1 = 2TP / (2TP + FP + FN), 0 when TP = 0. A prediction of None (unparsable answer) is
    wrong (a false negative of its true class) but adds no class of its own."""
    if len(predictions) != len(labels):
        raise ValueError(f"eval.macro_f1: {len(predictions)} predictions, {len(labels)} labels")
    classes = sorted(set(labels) | {p for p in predictions if p is not None})
    f1s = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / max(len(f1s), 1)          # no class at all: 0


# ----------------------------------------------------------------------------- generation
def greedy(model, tok, prompt, max_new_tokens, max_len=None):
    """Greedy decoding with the model's KV cache; returns the new text, cut at EOS."""
    ids = _prompt_ids(tok, prompt, max_len - max_new_tokens if max_len else None)
    was_training = model.training
    model.eval()
    with torch.no_grad():                       # eos_id None: the model's config EOS
        out = model.generate(torch.tensor([ids], device=next(model.parameters()).device),
                             max_new_tokens, eos_id=tok.eos_id)
    model.train(was_training)
    eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    eos = {tok.eos_id} | set(eos if isinstance(eos, list) else [eos])
    new = out[0, len(ids):].tolist()            # generate returns prompt + new tokens
    cut = [i for i, t in enumerate(new) if t in eos]
    return tok.decode(new[:cut[0]] if cut else new)


def _ngrams(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _f1(overlap, n_pred, n_ref):
    p, r = overlap / max(n_pred, 1), overlap / max(n_ref, 1)      # overlap 0 when a side is empty
    return 2 * p * r / (p + r) if p > 0 and r > 0 else 0.0


def _lcs(a, b):
    prev = [0] * (len(b) + 1)                  # one DP row, O(len(a) * len(b)) time
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge(prediction, reference):
    """ROUGE-1/2/L F1 with rouge-score semantics (no stemming): clipped n-gram overlap for
    ROUGE-N, longest common subsequence for ROUGE-L, F1 = 2PR/(P+R), 0 if P or R is 0."""
    p, r = _norm_words(prediction), _norm_words(reference)
    out = {}
    for n in (1, 2):                          # Counter & Counter: per-n-gram min (clipping)
        gp, gr = _ngrams(p, n), _ngrams(r, n)
        out[f"rouge{n}"] = _f1(sum((gp & gr).values()), sum(gp.values()), sum(gr.values()))
    out["rougeL"] = _f1(_lcs(p, r), len(p), len(r))
    return out


# ----------------------------------------------------------------------------- tasks
def task_kind(name, examples):
    """'classification' if examples carry choices, 'summarisation' if a reference."""
    kinds = {"classification" if "choices" in ex else "summarisation" if "reference" in ex
             else None for ex in examples}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"eval: task {name!r}: every example needs 'choices'+'label' "
                         f"(classification) or 'reference' (summarisation), not a mix")
    return kinds.pop()


def label_report(task, examples, preds, log=print, share=0.9, min_n=10):
    """Gold and predicted counts per label, confusion {gold: {predicted: n}}, collapse check.
    Labels are named by the choice texts when every example has the same choices (yes / no),
    else by index "0", "1", ... (preds stay indices, macro_f1's classes); None is '<unparsable>'.
    A model answering one label for >= share of >= min_n items while several gold labels
    occur has learnt the label prior, not the task: one warning line and "collapse" (else None)."""
    first, labels = examples[0]["choices"], [ex["label"] for ex in examples]
    names = [c.strip() for c in first]
    if any(ex["choices"] != first for ex in examples) or len(set(names)) < len(names):
        names = [str(i) for i in range(max(len(ex["choices"]) for ex in examples))]
    cols = names + ["<unparsable>"] * (None in preds)
    conf = {g: dict.fromkeys(cols, 0) for g in names}
    for p, y in zip(preds, labels):
        conf[names[y]][cols[-1] if p is None else names[p]] += 1
    gold_counts = {g: sum(row.values()) for g, row in conf.items()}
    out = {"labels": names, "gold_counts": gold_counts,
           "majority": max(gold_counts.values()) / max(len(labels), 1),   # always answering the commonest label
           "pred_counts": {c: sum(row[c] for row in conf.values()) for c in cols},
           "confusion": conf, "collapse": None}
    top, n = Counter(p for p in preds if p is not None).most_common(1), len(preds)
    if n >= min_n and len(set(labels)) > 1 and top and top[0][1] >= share * n:
        (p, k), g = top[0], labels.count(top[0][0])
        log(f"[eval] WARNING {task}: '{names[p]}' predicted for {k}/{n} items (gold {g}/{n}): "
            f"the model answers one label; accuracy is no better than always answering it")
        out["collapse"] = {"label": names[p], "predicted": k, "gold": g, "n": n, "share": k / n}
    return out


def eval_classification(model, tok, task, examples, mode="loglik", max_new_tokens=16,
                        max_len=None, log=print, name=""):
    """Accuracy, macro-F1, label_report; "predictions": one record per example (evaluate
    moves them out of the metrics). name: the run's name, carried by every record."""
    if mode not in ("loglik", "generate"):
        raise ValueError(f"eval: mode must be 'loglik' or 'generate', got {mode!r}")
    records, t0 = [], time.time()
    bar = cli.Progress(f"[eval] {task}", len(examples), "item", log=log)
    for i, ex in enumerate(examples):
        if not 0 <= ex["label"] < len(ex["choices"]):
            raise ValueError(f"eval: task {task!r} example {i}: label {ex['label']} not in 0..{len(ex['choices']) - 1}")
        if mode == "loglik":
            s = score_choices(model, tok, ex["prompt"], ex["choices"], max_len=max_len)
            pred, extra = max(range(len(s)), key=s.__getitem__), {"scores": s}  # ties -> lowest
        else:
            extra = {"text": greedy(model, tok, ex["prompt"], max_new_tokens, max_len)}
            pred = parse_answer(extra["text"], ex["choices"])
        records.append({"name": name, "task": task, "index": i, "id": ex.get("id"), "prediction": pred,
                        "label": ex["label"], "correct": pred == ex["label"],
                        "prediction_text": None if pred is None else ex["choices"][pred],
                        "label_text": ex["choices"][ex["label"]], **extra})
        bar.update(i + 1, f"acc {sum(r['correct'] for r in records) / (i + 1):.4f}")
    preds, labels = [r["prediction"] for r in records], [r["label"] for r in records]
    return {"kind": "classification", "mode": mode, "n": len(labels),
            "accuracy": sum(r["correct"] for r in records) / len(labels),
            "macro_f1": macro_f1(preds, labels), "unparsable": preds.count(None),
            "time_s": round(time.time() - t0, 2), **label_report(task, examples, preds, log),
            "predictions": records}


def eval_summarisation(model, tok, task, examples, max_new_tokens=128, max_len=None, log=print, name=""):
    totals, records, t0 = Counter(), [], time.time()
    bar = cli.Progress(f"[eval] {task}", len(examples), "item", log=log)
    for i, ex in enumerate(examples):
        pred = greedy(model, tok, ex["prompt"], max_new_tokens, max_len).strip()
        records.append({"name": name, "task": task, "index": i, "id": ex.get("id"), "prediction": pred,
                        "label": ex["reference"], "rouge": rouge(pred, ex["reference"])})
        totals.update(records[-1]["rouge"])
        bar.update(i + 1, f"rougeL {totals['rougeL'] / (i + 1):.4f}")
    n = len(examples)                          # corpus score = mean of per-example F1
    return {"kind": "summarisation", "n": n, "max_new_tokens": max_new_tokens,
            **{k: totals[k] / n for k in ("rouge1", "rouge2", "rougeL")},
            "time_s": round(time.time() - t0, 2), "predictions": records}


HEADLINE = {"classification": ("accuracy", "macro_f1"), "summarisation": ("rouge1", "rouge2", "rougeL")}


def evaluate(model, tok, tasks, ppl_text=None, seqlen=512, max_examples=None, mode="loglik",
             max_new_tokens=128, ppl_corpus="ppl_text", ppl_max_windows=None, log=print, name=""):
    """Run every task (dict name -> examples) and the perplexity corpus; name: the run's name.

    Returns {"name", "ppl": record or None, "tasks": {task: metrics}, "metrics": flat
    {"ppl", "task/metric": value} (what relative_performance takes), "predictions": one
    record per example, task by task (write() puts them in predictions.jsonl)}."""
    if mode not in ("loglik", "generate"):
        raise ValueError(f"eval.evaluate: mode must be 'loglik' or 'generate', got {mode!r}")
    max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    out = {"name": name, "ppl": None, "tasks": {}, "metrics": {}, "predictions": []}
    for task, examples in tasks.items():
        examples = examples[:max_examples] if max_examples else examples
        if not examples:
            raise ValueError(f"eval: task {task!r} has no examples")
        kind = task_kind(task, examples)
        log(f"[eval] {task}: {len(examples)} {kind} examples")
        if kind == "classification":
            res = eval_classification(model, tok, task, examples, mode, max_len=max_len, log=log, name=name)
        else:
            res = eval_summarisation(model, tok, task, examples, max_new_tokens, max_len, log, name)
        out["predictions"] += res.pop("predictions")
        log(f"[eval] {task}: " + ", ".join(f"{k} {res[k]:.4f}" for k in HEADLINE[kind])
            + f" ({res['n']} items, {res['time_s']:.0f}s)")
        out["tasks"][task] = res
        out["metrics"].update({f"{task}/{k}": res[k] for k in HEADLINE[kind]})
    if ppl_text:
        ids = tok.encode(ppl_text, bos=False)       # tokenised once (method §9)
        rec = perplexity_record(model, ids, min(seqlen, len(ids)), ppl_corpus,
                                max_windows=ppl_max_windows, log=log)
        log(f"[eval] ppl {rec['ppl']:.3f} ({rec['windows']} windows of {rec['seqlen']})")
        out["ppl"], out["metrics"]["ppl"] = rec, rec["ppl"]
    return out


def relative_performance(method_metrics, dense_metrics):
    """method §9: per metric m_method / m_dense (perplexity: ppl_dense / ppl_method); mean x 100.

    Both arguments are flat {metric: value}; a metric is a perplexity when its name contains
    'ppl' or 'perplexity'; one missing on a side or with a zero denominator goes to 'skipped'."""
    ratios, skipped = {}, []
    for k, d in dense_metrics.items():
        m = method_metrics.get(k)
        num, den = (d, m) if "ppl" in k.lower() or "perplexity" in k.lower() else (m, d)
        if m is None or not den:
            skipped.append(k)
        else:
            ratios[k] = num / den
    mean = 100 * sum(ratios.values()) / len(ratios) if ratios else float("nan")
    return {"ratios": ratios, "percent_of_dense": mean, "skipped": skipped}


def sparsity_report(model, nm=None):
    """method §9: exact zeros of the weight each of the seven maps uses in its forward (W + s B A),
    per map, per block and overall, each as {"zeros", "numel", "sparsity"} (efx.prune's format);
    with nm=(N, M), "nm_valid": every group of M consecutive columns holds >= N zeros in every
    row. Storage stays dense: the saved file does not shrink."""
    per_map, blocks = {}, {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.rsplit(".", 1)[-1] in M.SEVEN_MAPS:
                W = mod.augmented_weight() if hasattr(mod, "augmented_weight") else mod.weight
                per_map[name] = M.sparsity_of(W, nm)
                block = name.split(".layers.")[1].split(".")[0] if ".layers." in name else "?"
                blocks.setdefault(block, []).append(per_map[name])

    def total(entries):
        z, t = sum(e["zeros"] for e in entries), sum(e["numel"] for e in entries)
        return {"zeros": z, "numel": t, "sparsity": z / max(t, 1)}
    return {"overall": total(per_map.values()), "per_block": {k: total(v) for k, v in blocks.items()},
            "per_map": per_map, "nm": nm, "nm_valid": all(e["nm_valid"] for e in per_map.values()) if nm else None}


# ----------------------------------------------------------------------------- tables, CLI
def metric_cell(key, value, tasks=None):
    """One table cell: the value, and for the accuracy of a task whose answers collapsed onto
    one label (label_report) that label and the test set's majority-label rate, e.g.
    "0.5520 (all 'yes'; majority 0.552)": accuracy near the majority rate then means the prior."""
    cell = f"{value:.4f}"
    task, _, metric = key.rpartition("/")
    res = (tasks or {}).get(task) or {}
    if metric == "accuracy" and res.get("collapse"):
        c = res["collapse"]
        what = "all" if c["predicted"] == c["n"] else f"{c['predicted']}/{c['n']}"
        cell += f" ({what} '{c['label']}'; majority {res['majority']:.3f})"
    return cell


def markdown_table(rows, metric_keys):
    """rows: dicts with 'name', 'metrics' and optional 'tasks' (evaluate's per-task results,
    for the collapse mark of metric_cell), 'zeros', 'rel', 'wall_s', 'peak_gb'."""
    names = {"zeros": "zeros %", "rel": "% of dense", "wall_s": "wall s", "peak_gb": "peak GB"}
    extra = [k for k in names if any(k in r for r in rows)]
    head = ["method"] + list(metric_keys) + [names[k] for k in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["name"]] + [metric_cell(k, r["metrics"][k], r.get("tasks")) if k in r["metrics"] else "-"
                              for k in metric_keys]
        vals += [f"{r[k]:.1f}" if isinstance(r.get(k), (int, float)) else "-" for k in extra]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def write(out, results, table):
    """In folder `out`: results.json (all but the per-example records), the Markdown table
    results.md and, when results has "predictions", predictions.jsonl."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    small = {k: v for k, v in results.items() if k != "predictions"}    # kept small: no records
    files.atomic_write_text(json.dumps(small, indent=2, default=str), out / "results.json")
    (out / "results.md").write_text(table)
    if "predictions" in results:
        write_predictions(out / "predictions.jsonl", results)


def write_predictions(path, result):
    """predictions.jsonl at path: evaluate()'s result["predictions"] (or a list), one per line."""
    records = result["predictions"] if isinstance(result, dict) else result
    Path(path).write_text("".join(json.dumps(r, default=str) + "\n" for r in records))


def run_name(model_dir):
    """<run> for a model folder .../<run>/model (train.py's layout), else the folder's name."""
    p = Path(model_dir).resolve()
    return p.parent.name if p.name == "model" and p.parent.name else p.name


@dataclasses.dataclass
class EvalConfig:
    """One evaluation; every field is a flag (--seqlen 512) and a --config key."""
    model: str = ""              # HF-layout model directory ("" = the built-in default model)
    name: str = ""               # run name in the table, results and predictions ("" = from --model)
    domain: str = ""             # built-in test sets and perplexity text: med | legal | topics
    tasks: list = dataclasses.field(default_factory=list)   # JSONL task files (method §10); name = file stem
    ppl_file: str = ""           # text file for perplexity ("" = the domain's)
    out: str = ""                # folder for results.json, results.md, predictions.jsonl ("" = runs/eval-<name>)
    overwrite: bool = False      # replace the results of an earlier evaluation in --out
    seqlen: int = 512            # perplexity window and prompt length
    max_examples: int = 0        # first N examples per task (0 = all)
    ppl_max_windows: int = 0     # first N perplexity windows (0 = all)
    mode: str = "loglik"         # loglik (summed log-likelihood of each choice) | generate
    max_new_tokens: int = 128    # generated tokens for summaries (answers: 16)
    device: str = ""             # "" = cuda > mps > cpu
    dtype: str = "float32"       # float32 | bfloat16 | float16

    def __post_init__(self):     # every value, before a model is loaded
        if not (self.domain or self.tasks):
            raise ValueError("need one of --domain / --tasks")
        for field, allowed in (("domain", ("", *data.DOMAINS)), ("mode", ("loglik", "generate")),
                               ("dtype", ("float32", "bfloat16", "float16"))):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r}, expected one of {allowed}")
        if self.seqlen < 2 or min(self.max_examples, self.ppl_max_windows) < 0 or self.max_new_tokens < 1:
            raise ValueError(f"need seqlen >= 2, max_examples and ppl_max_windows >= 0, max_new_tokens >= 1;"
                             f" got {self.seqlen}, {self.max_examples}, {self.ppl_max_windows}, {self.max_new_tokens}")
        for field, p in [("model", self.model), ("ppl_file", self.ppl_file)] + [("tasks", t) for t in self.tasks]:
            if p and not Path(p).exists():
                raise FileNotFoundError(f"{field}: path {p!r} does not exist")


def main(argv=None):
    return cli.main("eval.py", lambda: run(cli.parse(EvalConfig, argv, __doc__.split("\n\n")[0])))


def run(c: EvalConfig) -> dict:
    model_dir = Path(c.model) if c.model else assets.default_model_dir()
    name = c.name or run_name(model_dir)                # recorded resolved (results.json config)
    c = dataclasses.replace(c, model=str(model_dir), name=name, out=c.out or f"runs/eval-{name}")
    cli.check_fresh(c.out, c.overwrite, "results.json")
    print(f"[eval] model {model_dir} (name {name}) -> {c.out}")
    config = M.load_config(c.model)                     # input checks before the weights load
    tok = files.load_tokenizer(c.model, config)
    tasks, ppl_text, corpus = {}, None, ""
    if c.domain:
        dom = data.default_domain(c.domain)
        tasks, ppl_text, corpus = dict(dom["test"]), dom.get("ppl_text"), f"{c.domain}:ppl_text"
    for f in c.tasks:
        tasks[Path(f).stem] = data.load_jsonl_tasks(f)
        if not tasks[Path(f).stem]:
            raise ValueError(f"{f}: no examples")
        task_kind(Path(f).stem, tasks[Path(f).stem])   # classification or summaries, not a mix
    if c.ppl_file:
        ppl_text, corpus = Path(c.ppl_file).read_text(), c.ppl_file
    device = torch.device(c.device) if c.device else M.pick_device()
    model = M.load_model(c.model, device=device, dtype=getattr(torch, c.dtype))
    res = evaluate(model, tok, tasks, ppl_text, ppl_corpus=corpus, seqlen=c.seqlen,
                   max_examples=c.max_examples or None, mode=c.mode, max_new_tokens=c.max_new_tokens,
                   ppl_max_windows=c.ppl_max_windows or None, name=name)
    res.update(sparsity=sparsity_report(model), config=dataclasses.asdict(c))
    table = markdown_table([{"name": name, "metrics": res["metrics"], "tasks": res["tasks"]}], list(res["metrics"]))
    write(c.out, res, table)
    print(table)
    return res


if __name__ == "__main__":
    main()
