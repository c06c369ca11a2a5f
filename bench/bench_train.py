"""Benchmark: EfficientXpert's overhead over dense LoRA on the same data and steps.

    python -m bench.bench_train                           # the main job's sizes (train.PRESETS["default"])
    python -m bench.bench_train --max_train 32 --nsamples 4  # a quick look

Runs `train.run` in one process, one run after the other, in the order dense, efx, efx, dense
(--order): `dense` (LoRA only, merged at the end) and `efx` (ForeSight at 50 %, PBS in the
intermediate calls, method §8). Run to run, this machine's speed drifts by 5-10 %; the
ABBA order cancels a linear drift, and the ratios use the sums over the runs. All run on the
default model (assets.default_model_dir(): SmolLM2-135M-Instruct) and domain `med`, with eval
off, the same examples, seed, batch and number of optimizer steps. Prints the ratios
efx / dense of wall time and of peak memory (cli.peak_memory: peak RSS on CPU, reset after
the model is loaded; max allocated on CUDA). Targets: <= 1.10 x time, <= 1.05 x memory.

Where EfficientXpert's extra time goes is measured by wrapping efx's calibration forwards
(calibrate_block, _run_block), its scoring (foresight_score) and PBS (pbs_update) with timers.
Between the runs the last model is dropped and freed heap pages handed back (malloc_trim), so
a run's RSS does not start with the previous one's garbage. Not a test: nothing asserts.
"""
import argparse
import ctypes
import dataclasses
import gc
import json
import time
from pathlib import Path

import torch

import efx
import train


def _trim():
    """Return freed heap to the OS (glibc), so RSS measures what the next run uses."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_gb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class Timers:
    """Wall time spent inside selected efx functions (efx.prune calls them as module globals)."""
    # _run_block times every block forward: the calibration pass (inside calibrate_block, with
    # the statistics hooks) and the re-run that feeds the next block.
    NAMES = {"_run_block": "block forwards (calibration + re-run)",
             "calibrate_block": "  of which calibration pass + stats",
             "foresight_score": "ForeSight scores (E5/E6)", "pbs_update": "PBS (E12-E14)",
             "select_mask": "mask selection (E8-E10)"}

    def __init__(self):
        self.t = dict.fromkeys(self.NAMES, 0.0)
        self.real = {n: getattr(efx, n) for n in self.NAMES}

    def wrap(self, name):
        real = self.real[name]

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                self.t[name] += time.perf_counter() - t0
        return timed

    def __enter__(self):
        for n in self.NAMES:
            setattr(efx, n, self.wrap(n))
        return self

    def __exit__(self, *a):
        for n, f in self.real.items():
            setattr(efx, n, f)


def one_run(cfg):
    _trim()
    rss0 = _rss_gb()
    with Timers() as tm:
        t0 = time.time()
        res = train.run(cfg)
        wall = time.time() - t0
    times = res["times"]
    prune_s = sum(v for k, v in times.items() if k.startswith("prune_"))
    row = {"method": cfg["method"], "wall_s": wall, "train_s": times["train_s"], "data_s": times["data_s"],
           "load_s": times["load_s"], "save_s": times.get("save_s", 0.0), "prune_s": prune_s,
           "prune_calls": [c["tag"] for c in res["prune_calls"]], "steps": len(res["losses"]),
           "final_loss": res["losses"][-1], "peak_gb": res["peak_memory_gb"], "rss_before_gb": rss0,
           "peak_kind": res["peak_memory_kind"], "sparsity": res["sparsity"]["overall"]["sparsity"],
           "efx_parts_s": {k: v for k, v in tm.t.items() if v > 0}}
    # the training loop itself: train_s holds the intermediate calls, the final call follows it
    row["loop_s"] = row["train_s"] - sum(v for k, v in times.items() if k.startswith("prune_") and "final" not in k)
    row["compute_s"] = row["train_s"] + sum(v for k, v in times.items() if k.startswith("prune_") and "final" in k)
    del res
    _trim()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = {**dataclasses.asdict(train.TrainConfig()), **train.PRESETS["default"]}    # the main job
    ap.add_argument("--max_train", type=int, default=d["max_train"], help="training examples (same for both runs)")
    ap.add_argument("--epochs", type=int, default=d["epochs"])
    ap.add_argument("--nsamples", type=int, default=d["nsamples"], help="calibration windows per pruning call")
    ap.add_argument("--seqlen", type=int, default=d["seqlen"], help="tokens per calibration window")
    ap.add_argument("--max_len", type=int, default=d["max_len"], help="tokens per training example")
    ap.add_argument("--batch_size", type=int, default=d["batch_size"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--domain", default="med")
    ap.add_argument("--model", default="", help='"" = assets.default_model_dir()')
    ap.add_argument("--device", default="")
    ap.add_argument("--order", default="dense,efx,efx,dense",
                    help="run order; a method may repeat (default ABBA: a drift of the machine's speed cancels)")
    # 0 = torch's default, as the main job runs. On a machine shared with other jobs use 1:
    # there, 2 OpenMP threads made a SmolLM2 fwd+bwd of 4 x 64 tokens take 56 s, not 2.8 s.
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--out", default="runs/bench_train")
    ap.add_argument("--json", default="", help="write the measured rows here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    common = dict(model=a.model, domain=a.domain, max_train=a.max_train, epochs=a.epochs, nsamples=a.nsamples,
                  seqlen=a.seqlen, max_len=a.max_len, batch_size=a.batch_size, sparsity=a.sparsity,
                  eval=False, device=a.device, log_every=10**9, pbs=True, seed=0)
    runs = []                    # (method, row) in run order
    for method in a.order.split(","):
        print(f"[bench] {method} ...", flush=True)
        runs.append((method, one_run({**common, "method": method, "out": str(Path(a.out) / method)})))
    # Several runs of a method (e.g. the ABBA order dense,efx,efx,dense, which cancels a linear
    # drift of the machine's speed): times are summed, peaks are the largest.
    rows = {}
    for method in ("dense", "efx"):
        rs = [r for m, r in runs if m == method]
        rows[method] = {**rs[0], **{k: sum(r[k] for r in rs) for k in
                                    ("wall_s", "compute_s", "loop_s", "prune_s")},
                        "peak_gb": max(r["peak_gb"] for r in rs), "rss_before_gb": min(r["rss_before_gb"] for r in rs),
                        "efx_parts_s": {k: sum(r["efx_parts_s"].get(k, 0.0) for r in rs) for k in rs[0]["efx_parts_s"]},
                        "runs": len(rs), "wall_each_s": [round(r["wall_s"], 1) for r in rs]}
    d, e = rows["dense"], rows["efx"]

    print(f"\n=== bench_train: efx ({a.sparsity:.0%}, PBS) vs dense LoRA: {d['steps']} steps of "
          f"{a.batch_size} x <= {a.max_len} tokens, {len(e['prune_calls'])} pruning calls of "
          f"{a.nsamples} x {a.seqlen} tokens; order {a.order}; {e['peak_kind']} ===")
    print(f"wall time of each run (s): dense {d['wall_each_s']}, efx {e['wall_each_s']}; "
          f"times below are sums over the runs, peaks the largest")
    print(f"{'':<30}{'dense':>10}{'efx':>10}{'ratio':>8}")
    for key, label in [("wall_s", "wall time, whole run (s)"), ("compute_s", "train + final call (s)"),
                       ("loop_s", "training steps only (s)"), ("peak_gb", "peak memory (GB)")]:
        print(f"{label:<30}{d[key]:>10.2f}{e[key]:>10.2f}{e[key] / d[key]:>8.3f}")
    inc_d, inc_e = d["peak_gb"] - d["rss_before_gb"], e["peak_gb"] - e["rss_before_gb"]
    if d["peak_kind"] != "cuda max allocated":
        print(f"{'peak RSS above run start (GB)':<30}{inc_d:>10.2f}{inc_e:>10.2f}{inc_e / max(inc_d, 1e-9):>8.3f}")
    print(f"efx extra: {e['prune_s']:.1f}s in {e['runs']} x {len(e['prune_calls'])} pruning calls "
          f"({', '.join(e['prune_calls'])}); inside them:")
    for k, v in e["efx_parts_s"].items():
        print(f"  {Timers.NAMES[k]:<38}{v:>8.2f}s")
    rest = e["prune_s"] - sum(v for k, v in e["efx_parts_s"].items() if k != "calibrate_block")
    print(f"  {'other (W~ copies, merges, embeddings)':<38}{rest:>8.2f}s")
    print(f"final loss dense {d['final_loss']:.4f}  efx {e['final_loss']:.4f};  sparsity dense "
          f"{d['sparsity']:.3f}  efx {e['sparsity']:.3f}")
    # The steps of both runs are the same work, so the pruning calls alone are EfficientXpert's
    # extra time; this share does not carry the machine's run-to-run noise in the steps.
    print(f"pruning calls / dense wall time: {e['prune_s'] / d['wall_s']:.3f}  "
          f"(dense + calls: {1 + e['prune_s'] / d['wall_s']:.3f}x)")
    t_ok, m_ok = e["wall_s"] / d["wall_s"] <= 1.10, e["peak_gb"] / d["peak_gb"] <= 1.05
    print(f"targets: time <= 1.10x: {'met' if t_ok else 'NOT met'};  memory <= 1.05x: {'met' if m_ok else 'NOT met'}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, "runs": runs}, indent=2))
    return rows


if __name__ == "__main__":
    main()
