"""bench_compensation.py: what each compensation does in one pruning call, and the loss jump.

Issue 15's measurement (a script, not a test), on the default model (SmolLM2-135M-Instruct):
  1. "calls": LoRA (r 8) fine-tuned for a few real steps on the `med` domain (so B != 0), then
     one ForeSight call (E6, 50 %, 8 x 256 calibration tokens of the general corpus, as the
     default preset; --nsamples / --seqlen) per compensation, each on a fresh copy of the
     same fine-tuned model:
       none, E14 paper, E14 code (PBS as published; method §7 note: no gain after the merge),
       E15 (Gram PBS), E16 (OBS reconstruction), E15 + E16.
     Per row: relative logit error against the pre-call model ||z - z0|| / ||z0|| on
     held-out `med` text, the perplexity there right after the call, and the call time.
  2. "jump": short real train.run's (2 epochs of 64 examples, calls at steps 8, 16, 24 and the
     final one) for none / E16 / the cubic ramp / both; the probe loss just before and after
     each call (one fixed training batch, as train.py logs it).
Run:  python -m bench.bench_compensation [--part calls|jump|all] [--threads 2]   (~12 minutes on CPU)
Writes runs/bench_compensation.json and prints Markdown tables.
"""
import argparse
import copy
import json
import time
from pathlib import Path

import torch

import data
import efx
import eval as ev
import model as M
import train
from support import assets, files

VARIANTS = {
    "none": {},
    "E14 paper": dict(pbs=True, pbs_variant="paper"),
    "E14 code": dict(pbs=True, pbs_variant="code"),
    "E15 gram": dict(pbs=True, pbs_variant="gram"),
    "E16 obs": dict(reconstruct="obs"),
    "E15 + E16": dict(pbs=True, pbs_variant="gram", reconstruct="obs"),
}
JUMPS = {"none": dict(reconstruct="none"), "E16 obs": dict(reconstruct="obs"),
         "cubic ramp": dict(reconstruct="none", sparsity_ramp="cubic"),
         "E16 + ramp": dict(reconstruct="obs", sparsity_ramp="cubic")}


def fine_tune(model, tok, steps, seed=0):
    """LoRA r 8 on the seven maps, `steps` AdamW steps of 4 med examples (as train.py)."""
    examples = data.default_domain("med")["train"]
    encoded, _ = data.encode_all(tok, examples, 256)
    M.add_lora(model, 8, 16.0, 0.0, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    for i, (ids, labels) in enumerate(data.batches(encoded, 4, seed, 0, pad, drop_last=True)):
        if i == steps:
            break
        n = int((labels[:, 1:] != data.IGNORE).sum().clamp(min=1))
        loss = train.completion_loss(model, ids, labels, n)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


@torch.no_grad()
def logits_of(model, windows, batch=4):
    return [model(windows[i:i + batch]) for i in range(0, len(windows), batch)]


def part_calls(args, model_dir, tok):
    base = M.load_model(model_dir)
    loss = fine_tune(base, tok, args.steps)
    print(f"fine-tuned {args.steps} steps, last loss {loss:.3f}")
    calib, _ = data.calibration_windows(tok, data.general_corpus(max_chars=2_000_000),
                                        args.nsamples, args.seqlen, 0)
    held = tok.encode(data.default_domain("med")["ppl_text"], bos=False)[: args.windows * 256]
    windows = torch.tensor(held).view(-1, 256)
    z0 = logits_of(base, windows)
    z0_norm = sum(z.square().sum() for z in z0).sqrt()
    rows = {"dense (fine-tuned)": {"ppl": ev.perplexity(base, held, 256)}}
    for name in args.variants:
        kw, model = VARIANTS[name], copy.deepcopy(base)
        t0 = time.perf_counter()
        rep = efx.prune(model, calib, "foresight", 0.5, foresight_variant="code",
                        log=lambda *a: None, **kw)
        wall = time.perf_counter() - t0
        z = logits_of(model, windows)
        err = float(sum((a - b).square().sum() for a, b in zip(z, z0)).sqrt() / z0_norm)
        rows[name] = {"logit_err": err, "ppl": ev.perplexity(model, held, 256), "call_s": wall,
                      "sparsity": rep["overall_sparsity"]}
        print(name, json.dumps(rows[name]))
        del model, z
    none = rows["none"]
    print("\n| compensation | rel. logit error | perplexity | call s | vs none (err / ppl / time) |")
    print("|---|---|---|---|---|")
    print(f"| dense (fine-tuned, before the call) | 0 | {rows['dense (fine-tuned)']['ppl']:.2f} | - | - |")
    for name in args.variants:
        r = rows[name]
        print(f"| {name} | {r['logit_err']:.4f} | {r['ppl']:.2f} | {r['call_s']:.1f} | "
              f"{r['logit_err'] / none['logit_err']:.3f} / {r['ppl'] / none['ppl']:.3f} / "
              f"{r['call_s'] / none['call_s']:.2f} |")
    return rows


def part_jump(args, out):
    rows = {}
    for name in args.jumps:
        kw = JUMPS[name]
        cfg = dict(max_train=64, epochs=2, prune_every_steps=8, eval=False, log_every=8,
                   out=str(out / f"jump_{name.replace(' ', '_')}"), **kw)
        res = train.run(cfg)
        rows[name] = [{k: c[k] for k in ("tag", "sparsity_target", "loss_before", "loss_after",
                                         "time_s")} for c in res["prune_calls"]]
        print(name, json.dumps(rows[name]))
    first = next(iter(rows.values()))
    print("\n| run | " + " | ".join(c["tag"] for c in first) + " |")
    print("|---|" + "---|" * len(first))
    for name, calls in rows.items():
        print(f"| {name} | " + " | ".join(f"{c['loss_before']:.2f} -> {c['loss_after']:.2f} "
                                          f"(rho {c['sparsity_target']:.2f})" for c in calls) + " |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("calls", "jump", "all"), default="all")
    ap.add_argument("--steps", type=int, default=24, help="fine-tuning steps before the call")
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of 256 tokens")
    ap.add_argument("--nsamples", type=int, default=8, help="calibration windows (default preset)")
    ap.add_argument("--seqlen", type=int, default=256, help="calibration window length")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--jumps", nargs="+", default=list(JUMPS), choices=list(JUMPS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_compensation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = assets.default_model_dir()
    tok = files.load_tokenizer(model_dir)
    results = {"config": vars(args)}
    if args.part in ("calls", "all"):
        results["calls"] = part_calls(args, model_dir, tok)
    if args.part in ("jump", "all"):
        results["jump"] = part_jump(args, out)
    fn = out / f"results_{args.part}.json"
    fn.write_text(json.dumps(results, indent=2))
    print(f"-> {fn}")


if __name__ == "__main__":
    main()
