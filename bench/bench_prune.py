"""bench_prune.py: time and memory of one efx.prune call per method on the default model.

Issue 3's benchmark (a script, not a test): SmolLM2-135M (assets.default_model_dir()),
calibration windows of the general corpus (default 32 x 512 tokens). Reports, per method, the
wall time of one prune call and its peak memory, and checks three targets:
  * a ForeSight call takes at most 1.25 x a Wanda call (same calibration, only the score differs);
  * PBS in its kappa = 1 form (method (E14), one r x r solve) is at least 10 x faster than E13
    solved row by row (a Python loop of r x r solves, as a direct reading of E13 would do);
  * the calibration memory printed by efx.prune (hidden states + statistics + one batch of
    activations + per-map work) against the measured peak increase (CUDA: max allocated,
    exact; CPU: peak RSS sampled every 2 ms by a thread, rough: glibc keeps and reuses freed
    memory, so the figure depends on what ran before; a warm-up call runs first).
Run:  python -m bench.bench_prune [--nsamples 32 --seqlen 512 --methods wanda foresight ...]
      By default only the first 6 of 30 blocks are pruned and the time is extrapolated
      (~3 minutes on one CPU thread). Whole model and one-shot perplexity (~12 minutes on CPU):
      python -m bench.bench_prune --layers 0 --eval-windows 16
"""
import argparse
import json
import threading
import time
from pathlib import Path

import torch

import data
import efx
import eval as ev
import model as M
from support import assets, files


class PeakMemory:
    """Peak memory above the level at entry: CUDA max allocated, or sampled process RSS."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.device = device

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.base


def pbs_rows_one_by_one(W, A, B, keep, d, scale, lam, kappa=1.0):
    """method (E13) solved one row at a time, as a direct reading of it would: per row a,
    K_a = kappa A D A^T + (1 - kappa) A_P D_P A_P^T + lam I, then one r x r solve."""
    U = W + scale * B @ A
    G = (A * d) @ A.T
    eye = torch.eye(A.shape[0])
    out = torch.empty_like(B)
    for a in range(W.shape[0]):
        P = ~keep[a]
        AP = A[:, P] * d[P]                                # A_P D_P
        K = kappa * G + (1 - kappa) * AP @ A[:, P].T + lam * eye
        out[a] = -torch.linalg.solve(K, AP @ U[a, P]) / scale
    return out


def bench_pbs(m=1536, n=576, r=8, repeats=5):
    """E14 vs E13 row by row vs E13 batched, on a gate_proj-sized map of SmolLM2-135M; the best
    of `repeats` runs each."""
    g = torch.Generator().manual_seed(0)
    W, A, B = (torch.randn(*s, generator=g) for s in ((m, n), (r, n), (m, r)))
    keep = torch.rand(m, n, generator=g) > 0.5
    d = torch.rand(n, generator=g) + 0.1
    lam = 1e-6 * float(((A * d) @ A.T).diagonal().mean())
    times = {}
    for name, fn in (("E14 one r x r solve", lambda: efx.pbs_update(W, A, B, keep, d, 2.0, lam=lam)),
                     ("E13 batched per row", lambda: efx.pbs_update(W, A, B, keep, d, 2.0, lam=lam, per_row=True)),
                     ("E13 row by row", lambda: pbs_rows_one_by_one(W, A, B, keep, d, 2.0, lam))):
        best = float("inf")
        for _ in range(repeats):                     # best of `repeats`: shared CPUs are noisy
            t0 = time.perf_counter()
            res = fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = (best, res)
    ref = times["E14 one r x r solve"][1]
    err = max(float((v[1] - ref).abs().max()) for v in times.values())
    return {k: v[0] for k, v in times.items()}, err


def main():
    ap = argparse.ArgumentParser(description="Benchmark efx.prune on the default model.")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "foresight", "sparsegpt"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--eval-windows", type=int, default=0, help="also report perplexity on this "
                    "many held-out windows of the general corpus (0: skip)")
    ap.add_argument("--device", default="")
    ap.add_argument("--out", default="runs/bench_prune.json")
    ap.add_argument("--layers", type=int, default=6, help="prune only the first N blocks (0: all 30) "
                    "and extrapolate the call time to all blocks; per-block work is identical")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); on "
                    "a shared 2-core machine 1 thread is both faster and far steadier")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device) if args.device else M.pick_device()
    model_dir = assets.default_model_dir()
    tok = files.load_tokenizer(model_dir)
    ids = tok.encode(data.general_corpus(), bos=False)
    cut = int(0.9 * len(ids))                                   # efx.py CLI's held-out split
    calib, _ = data.calibration_windows(tok, ids[:cut], args.nsamples, args.seqlen, seed=0)
    heldout = ids[cut:][: args.eval_windows * args.seqlen]
    print(f"device {dev}, threads {torch.get_num_threads()}, calibration {tuple(calib.shape)}")
    # Warm-up on one block: first-call costs (allocator arenas, lazy inits) out of the numbers.
    warm = M.load_model(model_dir, device=dev)
    warm.model.layers = warm.model.layers[:1]
    efx.prune(warm, calib[:8], "wanda", args.sparsity, log=lambda *a: None)
    del warm
    rows, dense_ppl = [], None
    for method in args.methods:
        model = M.load_model(model_dir, device=dev)
        n_blocks = len(model.model.layers)
        if args.layers:
            model.model.layers = model.model.layers[: args.layers]
        if args.eval_windows and not args.layers and dense_ppl is None:
            dense_ppl = ev.perplexity(model, heldout, args.seqlen)
            print(f"dense perplexity {dense_ppl:.3f}")
        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            rep = efx.prune(model, calib, method, args.sparsity, log=lambda *a: None)
            wall = time.perf_counter() - t0
        est = sum(rep["est_calib_bytes"].values())
        row = {"method": method, "time_s": wall, "blocks": len(model.model.layers),
               "time_all_blocks_s": wall * n_blocks / len(model.model.layers),
               "per_block_s": [round(b["time_s"], 2) for b in rep["blocks"]],
               "peak_extra_MiB": mem.extra / 2**20,
               "est_calib_MiB": est / 2**20, "sparsity": rep["overall_sparsity"],
               "damping_increased": len(rep["damping_increased"])}
        if args.eval_windows and not args.layers:
            row["ppl"] = ev.perplexity(model, heldout, args.seqlen)
        rows.append(row)
        print(json.dumps(row))
        del model
    pbs_times, pbs_err = bench_pbs()
    t = {r["method"]: r["time_s"] for r in rows}
    summary = {"rows": rows, "dense_ppl": dense_ppl, "pbs_s": pbs_times, "pbs_max_abs_diff": pbs_err,
               "config": vars(args), "device": str(dev)}
    ppl = bool(args.eval_windows and not args.layers)
    print(f"\n| method | blocks | prune call s | all {n_blocks} blocks s | peak extra MiB | est. calib MiB "
          "| sparsity |" + (" ppl |" if ppl else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if ppl else ""))
    for r in rows:
        print(f"| {r['method']} | {r['blocks']} | {r['time_s']:.1f} | {r['time_all_blocks_s']:.0f} | "
              f"{r['peak_extra_MiB']:.0f} | {r['est_calib_MiB']:.0f} | {r['sparsity']:.4f} |"
              + (f" {r['ppl']:.2f} |" if ppl else ""))
    if "wanda" in t and "foresight" in t:
        summary["foresight_over_wanda"] = t["foresight"] / t["wanda"]
        print(f"\nForeSight / Wanda time: {summary['foresight_over_wanda']:.2f} (target <= 1.25)")
    speed = pbs_times["E13 row by row"] / pbs_times["E14 one r x r solve"]
    summary["pbs_speedup"] = speed
    print("PBS on a 1536 x 576 map, r = 8: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in pbs_times.items())
          + f"; E14 speed-up over row by row {speed:.0f}x (target >= 10), max |diff| {pbs_err:.1e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
