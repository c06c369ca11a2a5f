"""bench_model.py: speed and memory of model.py on the default model.

    python -m bench.bench_model                      # efx only (CPU: 2 threads)
    python -m bench.bench_model --hf                 # side by side with HF transformers + peft
    python -m bench.bench_model --device cuda --dtype bfloat16 --repeats 5    # as scripts/gpu_check.sh runs it
    python -m bench.bench_model --plain              # plain forms only: support/speedups.py off

transformers and peft are not project dependencies: --hf needs them importable, e.g. from a
scratch venv (`python -m venv /tmp/hfvenv --system-site-packages && /tmp/hfvenv/bin/pip
install transformers peft`, then run this script with /tmp/hfvenv/bin/python).
Work, on SmolLM2-135M-Instruct (assets.default_model_dir()) in --dtype (bf16: autocast on CUDA,
as train.py):
  forward    logits at every position of B x T tokens of domain text, no grad
  lora-all   one LoRA step on those tokens, every token supervised: seven maps, r 8, alpha 16,
             dropout 0.05 (train.py's defaults), forward + loss + backward + AdamW step
  lora-med   the same over the first --med_batches batches of the main job (train.py default
             preset: domain med, max_len 256, batch 4): real completion-only labels
  generate   greedy, batch 1, a --prompt token prompt then --new tokens (EOS never stops it)
Tokens/s count input positions, padding included (generate: new tokens); each repeat runs
every work once per side, the sides interleaved in ABBA order (a repeat's first side runs
second in the next, so neither always follows the other), and the medians are reported. With --hf the
same inputs go to both sides and the script prints the largest logit difference, both
first-step losses (adapters start with B = 0: same loss) and whether the tokens agree.
Peak memory of a LoRA step: each side in a fresh subprocess holding only its LoRA model, one
warm-up step, then the peak of the next step. CUDA: max_memory_allocated. CPU: VmHWM (peak
resident set size, reset through /proc/self/clear_refs before the step) with
MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns every freed tensor at once and the peak
is the live memory, not what the allocator kept. Not a test: nothing asserts.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import data
import model as M
import train
from support import assets, cli, files

LORA = dict(r=8, alpha=16.0)                 # dropout: --lora_dropout (train.py's default 0.05)


class Efx:
    name = "efx"

    def __init__(self, path, device, dtype, dropout, base=True):
        self.base = M.load_model(path, device, dtype) if base else None
        self.lora = M.add_lora(M.load_model(path, device, dtype), LORA["r"], LORA["alpha"],
                               dropout, generator=torch.Generator(device).manual_seed(0))

    def logits(self, ids):
        return self.base(ids)

    def loss(self, ids, labels):                # mean over the step's supervised tokens
        return self.lora(ids, labels=labels, n_tokens=int((labels[:, 1:] != data.IGNORE).sum()))

    def generate(self, ids, n):
        return self.base.generate(ids, n, eos_id=[])


class HF:
    name = "HF"

    def __init__(self, path, device, dtype, dropout, base=True, like=None):
        import peft
        import transformers
        transformers.logging.set_verbosity_error()

        def load():
            return transformers.AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
        self.base = load() if base else None
        cfg = peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=dropout,
                              target_modules=list(M.SEVEN_MAPS), task_type="CAUSAL_LM")
        self.lora = peft.get_peft_model(load(), cfg)
        with torch.no_grad():                   # efx's A (both B = 0): equal adapters
            for name, m in M.lora_modules(like.lora) if like else ():
                self.lora.base_model.model.get_submodule(name).lora_A["default"].weight.copy_(m.lora_A)

    def logits(self, ids):
        return self.base(input_ids=ids, use_cache=False).logits

    def loss(self, ids, labels):
        return self.lora(input_ids=ids, labels=labels, use_cache=False).loss

    def generate(self, ids, n):
        return self.base.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def make_step(side, device):
    params = [p for p in side.lora.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)

    def step(ids, labels):
        side.lora.train()
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            loss = side.loss(ids, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def inputs(a, device):
    """(ids, labels) B x T of domain text, all supervised; the main job's first batches; a prompt."""
    path = Path(a.model) if a.model else assets.default_model_dir()
    tok, dom = files.load_tokenizer(path), data.default_domain("med")
    text = "\n\n".join(ex["prompt"] + " " + ex["completion"] for ex in dom["train"])
    ids = torch.tensor(tok.encode(text)[:a.batch * a.seqlen]).view(a.batch, a.seqlen)
    cfg = {**train.PRESETS["default"], "seed": 0}               # train.run's selection
    ex = dom["train"]
    pick = torch.randperm(len(ex), generator=torch.Generator().manual_seed(cfg["seed"]))
    enc, _ = data.encode_all(tok, [ex[i] for i in sorted(pick[:cfg["max_train"]].tolist())],
                             cfg["max_len"])
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    med = [(x.to(device), y.to(device)) for _, (x, y) in zip(range(a.med_batches), data.batches(
        enc, 4, cfg["seed"], 0, pad, drop_last=True))]
    prompt = torch.tensor([tok.encode(dom["train"][0]["prompt"])[:a.prompt]], device=device)
    return path, (ids.to(device), ids.to(device)), med, prompt


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def measure_memory(a):
    """--memory SIDE: print {work: (peak GB, GB before the step)} of one LoRA step, as JSON."""
    device, dtype = torch.device(a.device), M.DTYPES[a.dtype]
    path, full, med, _ = inputs(a, device)
    side = (Efx if a.memory == "efx" else HF)(path, device, dtype, a.lora_dropout, base=False)
    step, out = make_step(side, device), {}
    for work, (ids, labels) in (("lora-all", full), ("lora-med", max(med, key=lambda b: b[0].numel()))):
        step(ids, labels)                       # warm-up: optimizer state, thread pools
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            before = cli.peak_memory(device)[0] * 2**30
        step(ids, labels)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
            cli.peak_memory(device)[0] * 2**30
        out[work] = (peak / 2**30, before / 2**30)
    print(json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", action="store_true", help="also transformers + peft, interleaved")
    ap.add_argument("--model", default="", help='"" = assets.default_model_dir()')
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=list(M.DTYPES))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--med_batches", type=int, default=6)
    ap.add_argument("--lora_dropout", type=float, default=0.05)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--works", default="forward,lora-all,lora-med,generate,memory")
    ap.add_argument("--plain", action="store_true",
                    help="model.SPEEDUPS = False: no support/speedups.py (their gain: run both)")
    ap.add_argument("--memory", default="", help=argparse.SUPPRESS)     # subprocess mode
    ap.add_argument("--json", default="", help="write the measurements here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    M.SPEEDUPS = not a.plain
    if a.memory:
        return measure_memory(a)
    device, dtype, works = torch.device(a.device), M.DTYPES[a.dtype], a.works.split(",")
    path, full, med, prompt = inputs(a, device)
    sides = [Efx(path, device, dtype, a.lora_dropout)]
    if a.hf:
        sides.append(HF(path, device, dtype, a.lora_dropout, like=sides[0]))
    steps = {s.name: make_step(s, device) for s in sides}
    ac = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
    jobs = {                                    # work -> (tokens, {side: fn -> result})
        "forward": (full[0].numel(), {s.name: lambda s=s: s.logits(full[0]).float() for s in sides}),
        "lora-all": (full[0].numel(), {s.name: lambda s=s: steps[s.name](*full) for s in sides}),
        "lora-med": (sum(x.numel() for x, _ in med),
                     {s.name: lambda s=s: [steps[s.name](x, y) for x, y in med] for s in sides}),
        "generate": (a.new, {s.name: lambda s=s: s.generate(prompt, a.new) for s in sides})}
    times, first = {w: {s.name: [] for s in sides} for w in jobs}, {}
    print(f"[bench_model] {path.name} {a.dtype} on {device} ({torch.get_num_threads()} threads); "
          f"{a.repeats} repeats of {', '.join(w for w in works if w in jobs)}; sides: "
          f"{', '.join(s.name for s in sides)}", flush=True)
    for rep in range(a.repeats):
        for w in (w for w in works if w in jobs):
            for name, fn in list(jobs[w][1].items())[::1 if rep % 2 == 0 else -1]:    # ABBA
                with torch.no_grad() if w in ("forward", "generate") else torch.enable_grad(), ac:
                    t, out = timed(fn, device)
                times[w][name].append(t)
                first.setdefault((w, name), out)
        print(f"\r[bench_model] repeat {rep + 1}/{a.repeats}", end="", flush=True)
    print()
    res = {"args": vars(a), "works": {}, "memory": {}}
    # efx/HF: ratio of the median speeds; paired: median over repeats of HF time / efx time
    # in the same repeat (steadier when the machine's speed drifts between repeats).
    print(f"{'work':<10}{'tokens':>8}" + "".join(f"{s.name + ' tok/s':>12}" for s in sides)
          + ("   efx/HF   paired" if a.hf else ""))
    for w, (n, _) in jobs.items():
        if not times[w]["efx"]:
            continue
        tps = {name: n / statistics.median(ts) for name, ts in times[w].items()}
        res["works"][w] = {"tokens": n, "tok_s": tps, "times_s": times[w]}
        if a.hf:
            res["works"][w]["paired"] = statistics.median(h / e for e, h in zip(*times[w].values()))
        print(f"{w:<10}{n:>8}" + "".join(f"{v:>12.1f}" for v in tps.values())
              + (f"{tps['efx'] / tps['HF']:>9.3f}{res['works'][w]['paired']:>9.3f}" if a.hf else ""))
    if a.hf:
        chk = res["checks"] = {}
        if "forward" in works:
            chk["max_abs_logit_diff"] = (first["forward", "efx"] - first["forward", "HF"]).abs().max().item()
        if "lora-all" in works:
            chk["first_step_loss"] = {name: first["lora-all", name] for name in ("efx", "HF")}
        if "generate" in works:
            chk["same_tokens"] = torch.equal(first["generate", "efx"].cpu(), first["generate", "HF"].cpu())
        print("checks:", json.dumps(chk))
    if "memory" in works:                       # a fresh process per side
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for s in sides:
            argv_s = [sys.executable, "-m", "bench.bench_model", "--memory", s.name.lower(), "--device", a.device,
                      "--dtype", a.dtype, "--threads", str(a.threads), "--batch", str(a.batch),
                      "--seqlen", str(a.seqlen), "--med_batches", str(a.med_batches), "--model", a.model,
                      "--lora_dropout", str(a.lora_dropout)] + ["--plain"] * a.plain
            out = subprocess.run(argv_s, env=env, capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout     # the repo root
            res["memory"][s.name] = json.loads(out.strip().splitlines()[-1])
        kind = "max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"
        for w in ("lora-all", "lora-med"):
            print(f"peak memory of a {w} step, {kind}: " + ", ".join(
                f"{n} {m[w][0]:.3f} GB (step adds {m[w][0] - m[w][1]:.3f})" for n, m in res["memory"].items()))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
