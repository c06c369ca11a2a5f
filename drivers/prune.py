"""prune.py: one-shot pruning of a checkpoint with efx, and its perplexity before and after.

No fine-tuning: calibrate (method §3), score (E2, E3, E5/E6 or E11), select the mask
(E8-E10), optionally reconstruct the kept weights (E16), on held-out text of the general
corpus (or --eval_text). Every field of PruneConfig is a flag; `--help` lists them.

  python -m drivers.prune --model DIR --method wanda --sparsity 0.5 [--nm 2:4] --save OUT
  python -m drivers.prune --method foresight --reconstruct obs          # the built-in SmolLM2
"""
import dataclasses
import json
from pathlib import Path

import torch

import data
import efx
import eval as ev
import model as M
from support import assets, cli, files


@dataclasses.dataclass
class PruneConfig(efx.PruneOptions):
    """The one-shot run; every field is also a flag (--method wanda) and a --config key. The
    pruning options (method, sparsity, nm, per, reconstruct, ...) are efx.PruneOptions' fields."""
    seed: int = 0                # calibration window offsets
    model: str = ""              # HF-layout model directory; "" -> assets.default_model_dir()
    nsamples: int = 32           # calibration windows (Wanda/SparseGPT use 128)
    seqlen: int = 512            # tokens per calibration window (and perplexity window unless eval_seqlen)
    calib: str = ""              # calibration text file; "" -> general corpus minus held-out tail
    eval_text: str = ""          # perplexity text file; "" -> the held-out tail of the general corpus
    heldout_frac: float = 0.1    # tail of the general corpus kept out of calibration
    eval_windows: int = 32       # at most this many perplexity windows
    eval_seqlen: int = 0         # tokens per perplexity window; 0 = seqlen
    batch_size: int = 8          # perplexity windows per forward
    device: str = ""             # "" -> model.pick_device() (cuda > mps > cpu)
    dtype: str = "float32"       # float32 | bfloat16 | float16 (weights and hidden states)
    save: str = ""               # directory: pruned model (HF layout) + results.json
    results: str = ""            # results JSON; "" = <save>/results.json or runs/prune-<method>-<sparsity>-s<seed>.json
    overwrite: bool = False      # replace an earlier run's --save folder / results file

    def __post_init__(self):     # every value; the paths and outputs: check_config
        efx.PruneOptions.of(self)    # the pruning options, checked where they are declared
        if self.pbs:
            raise ValueError("pbs updates a LoRA adapter, which one-shot pruning has none of: "
                             "use train.py for pbs")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r}, expected one of ('float32', 'bfloat16', 'float16')")
        if min(self.nsamples, self.batch_size, self.eval_windows) < 1 or self.seqlen < 2:
            raise ValueError("nsamples, batch_size and eval_windows must be >= 1 and seqlen >= 2, got "
                             f"{self.nsamples}, {self.batch_size}, {self.eval_windows}, {self.seqlen}")
        if self.eval_seqlen != 0 and self.eval_seqlen < 2:
            raise ValueError(f"eval_seqlen must be 0 (= seqlen) or >= 2, got {self.eval_seqlen}")
        if not 0 <= self.heldout_frac < 1:
            raise ValueError(f"heldout_frac must be in [0, 1), got {self.heldout_frac}")


def check_config(c: PruneConfig) -> PruneConfig:
    """The paths and outputs, before the model is loaded (the values are checked when the
    PruneConfig is made): ValueError with a one-line message. --nm is checked against the
    model by check_nm_fits in run(), as soon as config.json is read."""
    for field in ("model", "calib", "eval_text"):
        if getattr(c, field) and not Path(getattr(c, field)).exists():
            raise FileNotFoundError(f"{field}: path {getattr(c, field)!r} does not exist")
    if not c.results:
        what = c.nm.replace(":", "of") if c.nm else round(100 * c.sparsity)
        c.results = str(Path(c.save) / "results.json" if c.save else f"runs/prune-{c.method}-{what}-s{c.seed}.json")
    cli.check_fresh(c.results, c.overwrite)
    if c.save:
        cli.check_fresh(c.save, c.overwrite, "model.safetensors", "results.json")
    return c


def main(argv=None):
    return cli.main("prune.py", lambda: run(check_config(cli.parse(PruneConfig, argv, __doc__.split("\n")[0]))))


def run(cfg: PruneConfig) -> dict:
    model_dir = Path(cfg.model) if cfg.model else assets.default_model_dir()
    mcfg = M.load_config(model_dir)                # cheap checks before the weights are read
    if cfg.nm:
        efx.check_nm_fits(mcfg, cfg.nm)
    tok = files.load_tokenizer(model_dir, mcfg)
    dev = torch.device(cfg.device) if cfg.device else M.pick_device()
    model = M.load_model(model_dir, device=dev, dtype=getattr(torch, cfg.dtype))
    general = [] if cfg.calib and cfg.eval_text else tok.encode(data.general_corpus(), bos=False)
    cut = int(len(general) * (1 - cfg.heldout_frac))
    calib_src = tok.encode(Path(cfg.calib).read_text(), bos=False) if cfg.calib else general[:cut]
    heldout = tok.encode(Path(cfg.eval_text).read_text(), bos=False) if cfg.eval_text else general[cut:]
    L = cfg.eval_seqlen or cfg.seqlen                  # perplexity window
    heldout = heldout[: cfg.eval_windows * L]
    corpus = cfg.eval_text or f"general_corpus tail {cfg.heldout_frac:.0%}"
    calib_ids, offsets = data.calibration_windows(tok, calib_src, cfg.nsamples, cfg.seqlen, cfg.seed)
    dense = ev.perplexity_record(model, heldout, L, corpus, cfg.batch_size)
    print(f"dense perplexity {dense['ppl']:.3f} ({dense['windows']} windows x {L})")
    rep = efx.prune(model, calib_ids, options=efx.PruneOptions.of(cfg), **cli.prune_reporting())
    rep["peak_memory_gb"], rep["peak_memory_kind"] = cli.peak_memory(dev)
    pruned = ev.perplexity_record(model, heldout, L, corpus, cfg.batch_size)
    print(f"pruned perplexity {pruned['ppl']:.3f} at sparsity {rep['overall_sparsity']:.4f} "
          f"({cfg.method}, prune call {rep['time_s']:.1f}s)")
    results = {"config": dataclasses.asdict(cfg), "model_dir": str(model_dir), "dense": dense,
               "pruned": pruned, "report": rep, "calib_offsets": offsets,
               "note": "weights are stored dense: the saved files do not shrink"}
    out = Path(cfg.results)
    if cfg.save:
        M.save_model(model, cfg.save)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"results -> {out}")
    return {**results, "model": model, "tokenizer": tok}   # the pruned model, in memory


if __name__ == "__main__":
    main()
