"""compare.py: every method on the same data and budget, evaluated the same way (SPEC 9).

Trains dense LoRA once (the 100 % of "% of dense"), then each method at each sparsity with
train.run, evaluates each with eval.evaluate, and writes results.json and a Markdown table.

    python compare.py --domain med --sparsity 0.4 0.5 --train_config med.json --out runs/compare_med
"""
import dataclasses
import json
import time
from pathlib import Path

import torch

import cli
import data
import eval as E
import files
import train

# Method -> the train.py config fields that select it (see compare()). "efx" is the project's
# default; "efx_published" the authors' method (E6, PBS E14 after the merge, SPEC 7 note).
METHODS = {"dense_lora": {"method": "dense"},
           "wanda_lora": {"method": "wanda"},
           "sparsegpt_lora": {"method": "sparsegpt"},
           "efx": {"method": "efx"},
           "efx_published": {"method": "efx", "pbs": True, "pbs_variant": "paper",
                             "reconstruct": "none", "compensate_final": False},
           "efx_none": {"method": "efx", "pbs": False, "reconstruct": "none"},
           "efx_e15": {"method": "efx", "pbs": True, "pbs_variant": "gram", "reconstruct": "none"},
           "efx_e16": {"method": "efx", "pbs": False, "reconstruct": "obs"}}


def compare(domain, sparsities, methods=tuple(METHODS), base_cfg=None, out=None, log=print,
            **eval_kw):
    """Train every method on the same data and budget, evaluate each the same way.

    Uses train.run(cfg: dict) -> dict with "model" (the final, merged nn.Module) and optionally
    "tokenizer", "peak_gb", "wall_s"; cfg = {"eval": False} + base_cfg (the same budget for
    all) + {"domain", "sparsity", "out": <out>/<method>_<sparsity>, "method":
    dense|wanda|sparsegpt|efx, "pbs"}. The dense run is trained once, at sparsity 0. eval_kw go
    to evaluate() (seqlen, max_examples, mode, ppl_max_windows, ...)."""
    dom = data.default_domain(domain)
    runs = [("dense_lora", 0.0)] if "dense_lora" in methods else []
    runs += [(m, s) for s in sparsities for m in methods if m != "dense_lora"]
    root, rows = Path(out or (base_cfg or {}).get("out") or "runs/compare"), []
    for name, s in runs:                        # train's own evaluation off: done here, alike
        cfg = {"eval": False, **(base_cfg or {}), "domain": domain, "sparsity": s,
               "out": str(root / f"{name}_{s:g}"), **METHODS[name]}
        log(f"[compare] {name} sparsity {s}")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        res = train.run(cfg)
        wall, peak = res.get("wall_s", time.time() - t0), res.get("peak_gb")
        if peak is None and torch.cuda.is_available():   # CPU: unknown unless train reports it
            peak = torch.cuda.max_memory_allocated() / 2**30
        model = res["model"]
        tok = res.get("tokenizer") or files.load_tokenizer(model.path)
        e = E.evaluate(model, tok, dom["test"], dom.get("ppl_text"), log=log,
                     ppl_corpus=f"{domain}:ppl_text", **eval_kw)
        e.pop("predictions")                    # per-example records: eval.py writes them, not the table
        rows.append({"name": f"{name} @{s:.0%}", "method": name, "sparsity": s, "cfg": cfg,
                     "metrics": e["metrics"], "eval": e, "wall_s": wall, "peak_gb": peak,
                     "zeros": 100 * E.sparsity_report(model)["overall"]["sparsity"]})
        del model, res                          # free the device before the next run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    dense = next((r for r in rows if r["method"] == "dense_lora"), None)
    for r in rows if dense else []:             # rel_detail lists ratios and skipped metrics
        r["rel_detail"] = E.relative_performance(r["metrics"], dense["metrics"])
        r["rel"] = r["rel_detail"]["percent_of_dense"]
    table = E.markdown_table(rows, list(rows[0]["metrics"]) if rows else [])
    if out:
        E.write(out, {"domain": domain, "sparsities": list(sparsities), "eval": eval_kw,
                     "rows": rows}, table)
    return {"rows": rows, "table": table}



@dataclasses.dataclass
class CompareConfig:
    """One comparison; every field is a flag (--sparsity 0.4 0.5) and a --config key."""
    domain: str = "med"          # built-in domain: med | legal
    sparsity: list = dataclasses.field(default_factory=lambda: [0.4, 0.5])   # pruned fractions
    methods: list = dataclasses.field(default_factory=lambda: list(METHODS))  # rows (METHODS)
    train_config: str = ""       # JSON of train.py fields: the budget shared by every method
    model: str = ""              # HF-layout model directory ("" = the built-in SmolLM2)
    out: str = "runs/compare"    # folder: one run per row, results.json, results.md
    seqlen: int = 512            # perplexity window and prompt length
    max_examples: int = 0        # first N test examples per task (0 = all)
    ppl_max_windows: int = 0     # first N perplexity windows (0 = all)

    def __post_init__(self):
        if self.domain not in ("med", "legal"):
            raise ValueError(f"domain={self.domain!r}, expected one of ('med', 'legal')")
        if not all(0 <= s < 1 for s in self.sparsity):
            raise ValueError(f"sparsity values must be in [0, 1), got {self.sparsity}")
        if set(self.methods) - set(METHODS):
            raise ValueError(f"methods: unknown {sorted(set(self.methods) - set(METHODS))}, "
                             f"expected some of {list(METHODS)}")
        for field in ("train_config", "model"):
            if getattr(self, field) and not Path(getattr(self, field)).exists():
                raise FileNotFoundError(f"{field}: path {getattr(self, field)!r} does not exist")


def main(argv=None):
    def go():
        c = cli.parse(CompareConfig, argv, __doc__.split("\n")[0])
        base = json.loads(Path(c.train_config).read_text()) if c.train_config else {}
        if c.model:
            base.setdefault("model", c.model)
        res = compare(c.domain, c.sparsity, c.methods, base_cfg=base, out=c.out, seqlen=c.seqlen,
                      max_examples=c.max_examples or None, ppl_max_windows=c.ppl_max_windows or None)
        print(res["table"])
        return res
    return cli.main("compare.py", go)


if __name__ == "__main__":
    main()
