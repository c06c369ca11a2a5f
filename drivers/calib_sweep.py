"""calib_sweep.py: how many calibration tokens each pruning criterion needs (method §3 note).

One-shot pruning at 50 % (drivers/prune.py) of the default model for every method x budget x
calibration text (the general corpus, or the med domain's training half), each cell scored
on two held-out texts: the general corpus's tail and the med domain's perplexity half (the
same windows of --eval_seqlen tokens for every cell, whatever the calibration windows' length).
Each finished cell is one JSON file in --out (a rerun skips it: the sweep resumes where it
stopped); the tables are rebuilt from the files at the end.

    python -m drivers.calib_sweep                              # the whole grid; resumes from study/calib_sweep/
    python -m drivers.calib_sweep --budgets 8 32 --texts general   # a part of it
    python -m drivers.calib_sweep --seqlen 512 --budgets 32       # 16k tokens in windows of 512
"""
import argparse
import json
import time
from pathlib import Path

import data
import eval as ev
import model as M
from drivers import prune
from support import assets

METHODS = {  # row name -> drivers/prune.py fields
    "wanda": dict(method="wanda"),
    "sparsegpt": dict(method="sparsegpt"),
    "foresight": dict(method="foresight"),
    "foresight+E16": dict(method="foresight", reconstruct="obs"),
}


def domain_text(out, name="med"):
    """The built-in domain's training half as a text file (data.default_domain: disjoint from
    its held-out perplexity half)."""
    path = Path(out) / f"{name}_train_text.txt"
    if not path.exists():
        path.write_text(data.default_domain(name)["train_text"])
    return path


def domain_ppl(model, tok, seqlen, windows, name="med"):
    """Perplexity on the first `windows` windows of the domain's held-out half."""
    ids = tok.encode(data.default_domain(name)["ppl_text"], bos=False)[: windows * seqlen]
    return ev.perplexity_record(model, ids, seqlen, f"{name}:ppl_text")["ppl"]


def cell(out, method, windows, seqlen, text):
    return Path(out) / f"{method}-{text}-{windows}x{seqlen}.json"


def table(out):
    """Markdown, one table per calibration text: held-out perplexity (general tail / med half)
    per method (rows) and calibration budget (columns), prune-call seconds in brackets."""
    cells = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*-*x*.json"))]
    cells = [c for c in cells if "domain_ppl" in c]
    if not cells:
        return "no finished cells yet\n"
    budgets = sorted({(c["windows"], c["seqlen"]) for c in cells}, key=lambda b: (b[0] * b[1], b[1]))
    lines = []
    for text in sorted({c["text"] for c in cells}):
        dense = next(c for c in cells if c["text"] == text)
        lines += [f"\ncalibration text: {text}; held-out perplexity, general tail / med half (dense "
                  f"{dense['dense_ppl']:.2f} / {dense['dense_domain_ppl']:.2f}); prune-call seconds in brackets\n",
                  "| method | " + " | ".join(f"{w} x {s} = {w * s // 1024}k" for w, s in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for m in METHODS:
            got = {(c["windows"], c["seqlen"]): c for c in cells if c["method"] == m and c["text"] == text}
            row = [f"{got[b]['ppl']:.2f} / {got[b]['domain_ppl']:.2f} [{got[b]['prune_s']:.0f}]"
                   if b in got else "-" for b in budgets]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--budgets", nargs="+", type=int, default=[8, 32, 64, 128], help="calibration windows")
    ap.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window")
    ap.add_argument("--eval_seqlen", type=int, default=256, help="tokens per perplexity window (every cell)")
    ap.add_argument("--texts", nargs="+", default=["general", "med"], choices=["general", "med"])
    ap.add_argument("--eval_windows", type=int, default=16)
    ap.add_argument("--out", default="study/calib_sweep", help="cell files (committed: the sweep resumes from them)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    scored = lambda c: "domain_ppl" in c and c.get("eval_seqlen", 256) == a.eval_seqlen
    done = lambda path: path.exists() and scored(json.loads(path.read_text()))
    todo = [(t, w, m) for t in a.texts for w in a.budgets for m in a.methods
            if not done(cell(out, m, w, a.seqlen, t))]
    print(f"calib_sweep: {len(todo)} cells to run in {out}")
    # the dense model's domain perplexity is the same for every cell: measured once, then reused
    known = [json.loads(p.read_text()) for p in out.glob("*-*x*.json")]
    dense_domain = next((c["dense_domain_ppl"] for c in known if scored(c)), None)
    for k, (text, windows, method) in enumerate(todo, 1):
        t0 = time.time()
        cfg = prune.check_config(prune.PruneConfig(
            sparsity=0.5, nsamples=windows, seqlen=a.seqlen,
            eval_windows=a.eval_windows, eval_seqlen=a.eval_seqlen,
            calib=str(domain_text(out)) if text == "med" else "", results=str(out / "last_prune.json"),
            overwrite=True, **METHODS[method]))
        res = prune.run(cfg)       # perplexity: the general corpus's held-out tail for every text
        if dense_domain is None:
            model_dir = assets.default_model_dir()
            dense = M.load_model(model_dir)
            dense_domain = domain_ppl(dense, res["tokenizer"], a.eval_seqlen, a.eval_windows)
            del dense
        rec = {"method": method, "text": text, "windows": windows, "seqlen": a.seqlen,
               "eval_seqlen": a.eval_seqlen,
               "ppl": res["pruned"]["ppl"], "dense_ppl": res["dense"]["ppl"],
               "domain_ppl": domain_ppl(res["model"], res["tokenizer"], a.eval_seqlen, a.eval_windows),
               "dense_domain_ppl": dense_domain, "prune_s": res["report"]["time_s"],
               "wall_s": time.time() - t0}
        del res
        cell(out, method, windows, a.seqlen, text).write_text(json.dumps(rec, indent=2))
        print(f"calib_sweep {k}/{len(todo)}: {json.dumps(rec)}", flush=True)
    (out / "table.md").write_text(table(out))
    print(table(out))


if __name__ == "__main__":
    main()
