"""Domain fine-tuning with the EfficientXpert schedule (SPEC section 8), and its baselines.

    python train.py                               # the main job: SmolLM2 on `med`, 50 % sparse
    python train.py --preset smoke                # the whole pipeline in about two minutes on CPU
    python train.py --preset paper --model DIR --train task.jsonl --sparsity 0.5
    torchrun --nproc_per_node=2 train.py ...      # DistributedDataParallel on the adapters

Methods (`--method`):
  efx        EfficientXpert: LoRA training with intermediate ForeSight pruning calls (E6 or E5,
             score averaging E7, compensation E12-E16) and a final call without averaging.
  dense      LoRA only, merged at the end: the reference point for "% of dense".
  wanda, sparsegpt, magnitude
             LoRA + one-shot pruning, `--baseline_order after` (paper: LoRA -> merge -> prune)
             or `both` (reference repo: prune -> LoRA -> merge -> prune again).

Output in --out: the final model (HF layout, sparse, adapters merged), results.json (resolved
config, versions, device, timings per stage, peak memory, sparsity report, losses, metrics),
and `checkpoint.safetensors`, rewritten atomically at each epoch end; `--resume` continues
from it and ends with exactly the weights an uninterrupted run gives.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import data
import efx
import model as M

METHODS = ("efx", "dense", "wanda", "sparsegpt", "magnitude")


@dataclass
class TrainConfig:
    # what
    model: str = ""                 # HF checkpoint dir; "" = the built-in SmolLM2-135M-Instruct
    domain: str = "med"             # built-in domain (med | legal), used when --train is empty
    train: str = ""                 # JSONL task file (SPEC section 10) to fine-tune on
    out: str = "runs/main"
    method: str = "efx"             # efx | dense | wanda | sparsegpt | magnitude
    sparsity: float = 0.5           # fraction of each of the seven maps pruned (rho)
    nm: str = ""                    # "2:4" etc.: N:M instead of unstructured (E10)
    per: str = "row"                # mask selection: row (E8) | layer (E9)
    # EfficientXpert (SPEC sections 4, 7, 8)
    foresight_variant: str = "code"     # code (E6, the authors' released code) | paper (E5)
    pbs: bool = False               # B update before each masked merge (SPEC section 7)
    pbs_variant: str = "paper"      # paper | code (E12-E14: no gain after the merge) | gram (E15)
    reconstruct: str = "obs"        # obs: OBS update of the kept weights for the mask (E16) | none
    compensate_final: bool = True   # apply pbs / reconstruct in the final call too
    sparsity_ramp: str = "none"     # none | cubic: call k of K prunes rho (1 - (1 - k/K)^3)
    mask_lr: float = 0.5            # eta of the score average (E7)
    prune_every: int = 1            # intermediate call before epoch e when e >= 1, e % k == 0
    prune_every_steps: int = 0      # > 0: every k optimizer steps instead of epochs
    baseline_order: str = "after"   # after (paper) | both (reference repo)
    # LoRA and optimisation
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lr: float = 2e-4
    weight_decay: float = 0.0
    epochs: int = 3
    batch_size: int = 4             # examples per optimizer step, over all ranks
    grad_accum: int = 1             # micro-batches per optimizer step (on each rank)
    warmup_ratio: float = 0.03
    lr_schedule: str = "cosine"     # cosine | linear
    clip: float = 1.0               # gradient-norm clipping (0 = off)
    max_len: int = 512              # tokens per example (prompt cut from the left)
    max_train: int = 0              # use at most this many training examples (0 = all)
    # calibration (SPEC section 3)
    nsamples: int = 16
    seqlen: int = 256
    calib: str = ""                 # text file for calibration; "" = built-in general corpus
    offload: bool = False           # calibration hidden states on CPU
    # evaluation
    eval: bool = True               # evaluate the dense start and the result on the test tasks
    eval_max: int = 0               # at most this many examples per test task (0 = all)
    eval_seqlen: int = 512
    eval_ppl_windows: int = 0       # at most this many perplexity windows (0 = the whole corpus)
    # run
    seed: int = 0
    device: str = ""                # "" = cuda > mps > cpu
    log_every: int = 10
    resume: bool = False


PRESETS = {
    # SPEC section 8 / the paper's reference hyper-parameters (one GPU).
    "paper": dict(lora_r=8, lora_alpha=16, lora_dropout=0.05, lr=2e-4, epochs=3, batch_size=4,
                  nsamples=128, seqlen=2048, mask_lr=0.5, max_len=2048, max_train=0,
                  foresight_variant="code", pbs=True, pbs_variant="paper", reconstruct="none",
                  compensate_final=False),
    # The main job on 2 CPU cores. 192 of the 320 med training examples and 8 x 256
    # calibration tokens keep it to minutes and EfficientXpert's pruning calls within ~7 % of
    # the training time (bench_train.py); 16 x 256 gave a one-shot perplexity only 1.5 % lower.
    # Two intermediate calls (steps 32 and 64 of 96), so that the score average E7 acts.
    "default": dict(epochs=2, max_train=192, nsamples=8, seqlen=256, max_len=256, eval_max=40,
                    eval_ppl_windows=16, prune_every_steps=32),
    # About two minutes on CPU (105 s measured): a check that the whole pipeline runs.
    "smoke": dict(epochs=2, max_train=16, nsamples=4, seqlen=128, max_len=128, eval_max=8,
                  log_every=2, eval_seqlen=256, eval_ppl_windows=4),
}


def parse_args(argv=None) -> TrainConfig:
    """CLI built from the dataclass fields; precedence: defaults < preset < --config < flags."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--config", help="JSON file of TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        kind = {bool: lambda s: s.lower() in ("1", "true", "yes")}.get(f.type, f.type)
        flags = sorted({f"--{f.name}", f"--{f.name.replace('_', '-')}"})   # --lora_r or --lora-r
        if f.type is bool:
            ap.add_argument(*flags, type=kind, nargs="?", const=True, default=None)
        else:
            ap.add_argument(*flags, type=kind, default=None)
    args = ap.parse_args(argv)
    values = dict(PRESETS[args.preset])
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    values.update({k: v for k, v in vars(args).items() if v is not None and k in
                   {f.name for f in dataclasses.fields(TrainConfig)}})
    return make_config(values)


def make_config(values) -> TrainConfig:
    if isinstance(values, TrainConfig):
        return check_config(values)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(values) - names
    if bad:
        raise ValueError(f"config: unknown field(s) {sorted(bad)}")
    return check_config(TrainConfig(**values))


def check_config(c: TrainConfig) -> TrainConfig:
    """Every argument is checked here, before any heavy work (issue 6)."""
    def need(ok, msg):
        if not ok:
            raise ValueError(f"config: {msg}")
    need(c.method in METHODS, f"method must be one of {METHODS}, got {c.method!r}")
    try:                                # the pruning options are checked where they are defined
        prune_options(c, "foresight", c.sparsity, compensate=True)
    except ValueError as e:
        raise ValueError(f"config: {e}") from None
    need(c.sparsity_ramp in ("none", "cubic"), f"sparsity_ramp must be none|cubic, got {c.sparsity_ramp!r}")
    need(c.baseline_order in ("after", "both"), f"baseline_order must be after|both, got {c.baseline_order!r}")
    need(c.lr_schedule in ("cosine", "linear"), f"lr_schedule must be cosine|linear, got {c.lr_schedule!r}")
    need(c.lora_r > 0, f"lora_r must be > 0, got {c.lora_r}")
    need(c.epochs >= 1 and c.prune_every >= 1 and c.prune_every_steps >= 0,
         f"epochs and prune_every must be >= 1 and prune_every_steps >= 0, got {c.epochs}, {c.prune_every}, {c.prune_every_steps}")
    need(c.batch_size >= 1 and c.grad_accum >= 1 and c.batch_size % c.grad_accum == 0,
         f"batch_size ({c.batch_size}) must be a positive multiple of grad_accum ({c.grad_accum})")
    need(c.nsamples >= 1 and c.seqlen >= 2 and c.max_len >= 8, "nsamples, seqlen and max_len must be positive")
    need(c.lr > 0 and 0 <= c.warmup_ratio < 1, f"lr must be > 0 and warmup_ratio in [0, 1), got {c.lr}, {c.warmup_ratio}")
    need(0 <= c.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {c.lora_dropout}")
    need(c.max_train >= 0 and c.eval_max >= 0 and c.eval_ppl_windows >= 0, "max_train, eval_max and eval_ppl_windows must be >= 0")
    for name in ("model", "train", "calib"):
        p = getattr(c, name)
        need(not p or Path(p).exists(), f"{name}: path {p!r} does not exist")
    return c


# ----------------------------------------------------------------------------- schedule

def prune_points(epochs, steps_per_epoch, prune_every=1, prune_every_steps=0):
    """Global optimizer steps before which an intermediate pruning call runs (SPEC section 8):
    the first step of epoch e for e >= 1 with e % prune_every == 0, or with prune_every_steps
    = k every k-th step. The final call (after the last step) is not in this list."""
    total = epochs * steps_per_epoch
    if prune_every_steps > 0:
        return [s for s in range(prune_every_steps, total, prune_every_steps)]
    return [e * steps_per_epoch for e in range(1, epochs) if e % prune_every == 0]


def prune_options(c, method, sparsity, compensate=False, average=False, seed=0):
    """The efx.PruneOptions of one call of run `c`; compensation (E12-E16) only if asked."""
    return efx.PruneOptions(
        method, sparsity, c.nm or None, c.per, c.foresight_variant, average, c.mask_lr,
        pbs=compensate and c.pbs, pbs_variant=c.pbs_variant,
        reconstruct=c.reconstruct if compensate else "none", offload=c.offload, seed=seed)


def ramp(sparsity, k, K, kind):
    """Sparsity of pruning call k of K (1-based; K = the final call): the target, or with
    "cubic" gradual magnitude pruning's schedule (Zhu & Gupta 2017) rho (1 - (1 - k/K)^3)."""
    return sparsity if kind == "none" else sparsity * (1 - (1 - k / K) ** 3)


def lr_factor(step, total, warmup, kind):
    """Linear warm-up to 1, then cosine or linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else 1.0 - t


def completion_loss(model, ids, labels, n_tokens):
    """Sum of next-token cross-entropy over completion tokens / n_tokens (the token count of
    the whole optimizer step, so micro-batches and ranks add up to the global mean). The model
    computes lm_head and the cross-entropy only at completion positions (model.py forward)."""
    return model(ids, labels=labels, n_tokens=n_tokens)


# ----------------------------------------------------------------------------- memory, checkpoints

def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):   # Linux: "5" resets the peak RSS (VmHWM)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_gb(device):
    """CUDA: max allocated; CPU: peak resident set size (VmHWM, else ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def save_checkpoint(path, model, opt, score_state, state):
    """One safetensors file (no pickle): the seven maps' weights and adapters, AdamW moments,
    score averages, RNG state; plain values in the metadata. Written to a temporary file and
    renamed, so a kill at any moment leaves the previous checkpoint intact."""
    tensors = {}
    for name, m in M.lora_modules(model):
        tensors[f"model.{name}.weight"] = m.weight.detach()
        tensors[f"model.{name}.lora_A"] = m.lora_A.detach()
        tensors[f"model.{name}.lora_B"] = m.lora_B.detach()
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors.update({f"score.{k}": v for k, v in score_state.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    tmp = Path(str(path) + ".tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp,
              metadata={"state": json.dumps(state), "format": "pt"})
    os.replace(tmp, path)


def load_checkpoint(path, model, opt, score_state):
    """Restore what save_checkpoint wrote. A truncated or foreign file, or one of another
    configuration, raises ValueError naming the checkpoint (delete it to start over)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, "pt") as f:
            state = json.loads(f.metadata()["state"])
        t = load_file(path)
    except (SafetensorError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
                         "delete it to start over") from None
    want = {f"model.{n}.{a}": getattr(m, a).shape for n, m in M.lora_modules(model)
            for a in ("weight", "lora_A", "lora_B")}
    bad = [k for k, shape in want.items() if k not in t or t[k].shape != shape]
    bad += [] if "rng.cpu" in t else ["rng.cpu"]
    if bad:
        raise ValueError(f"{path}: tensors missing or of another shape {bad[:3]} ({len(bad)} in all): "
                         "a checkpoint of another configuration? delete it to start over")
    dev = model.model.embed_tokens.weight.device
    with torch.no_grad():
        for name, m in M.lora_modules(model):
            for attr in ("weight", "lora_A", "lora_B"):
                getattr(m, attr).copy_(t[f"model.{name}.{attr}" if attr != "weight" else f"model.{name}.weight"])
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        keys = [k for k in t if k.startswith(f"optim.{i}.")]
        if keys:
            opt.state[p] = {k.split(".")[-1]: t[k].to(dev) if t[k].dim() else t[k] for k in keys}
    score_state.update({k[len("score."):]: v for k, v in t.items() if k.startswith("score.")})
    torch.set_rng_state(t["rng.cpu"])
    return state


# ----------------------------------------------------------------------------- the run

def _log(*a):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*a, flush=True)


def run(cfg) -> dict:
    """Fine-tune, prune per the method's schedule, save, evaluate. Returns the results dict
    plus "model" and "tokenizer" (the final sparse model, in memory)."""
    cfg = make_config(cfg if isinstance(cfg, TrainConfig) else
                      {**dataclasses.asdict(TrainConfig()), **PRESETS["default"], **cfg})
    t_run = time.time()
    times = {}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device(cfg.device) if cfg.device else M.pick_device()
    if cfg.batch_size % (cfg.grad_accum * world):
        raise ValueError(f"config: batch_size {cfg.batch_size} must be divisible by grad_accum x ranks "
                         f"= {cfg.grad_accum * world}")
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)

    # data first: bad input fails before the model is loaded
    t0 = time.time()
    model_dir = Path(cfg.model) if cfg.model else data.default_model_dir()
    tok = M.load_tokenizer(model_dir)
    model_cfg = M.load_config(model_dir)                # config.json only: no weights yet
    M.check_tokenizer(tok, model_cfg, model_dir)
    if cfg.nm:
        efx.check_nm_fits(model_cfg, cfg.nm)
    dom = data.default_domain(cfg.domain) if not cfg.train else None
    examples = data.load_jsonl_tasks(cfg.train) if cfg.train else dom["train"]
    if cfg.max_train:        # a seeded sample across the tasks (the domain lists them task by task)
        pick = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed))
        examples = [examples[i] for i in sorted(pick[:cfg.max_train].tolist())]
    encoded, trunc = data.encode_all(tok, examples, cfg.max_len)
    if trunc["prompt_cut"] or trunc["completion_cut"]:
        _log(f"[train] {trunc['prompt_cut']} prompts and {trunc['completion_cut']} completions of "
             f"{trunc['examples']} examples cut to max_len={cfg.max_len} tokens")
    steps_per_epoch = len(encoded) // cfg.batch_size           # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise ValueError(f"train data {cfg.train or cfg.domain}: {len(encoded)} examples, fewer than "
                         f"one batch of {cfg.batch_size}")
    calib_text = Path(cfg.calib).read_text() if cfg.calib else \
        data.general_corpus(max_chars=max(2_000_000, 40 * cfg.nsamples * cfg.seqlen))  # ~5x the windows
    try:
        calib_ids, calib_offsets = data.calibration_windows(tok, calib_text, cfg.nsamples, cfg.seqlen, cfg.seed)
    except ValueError as e:
        raise ValueError(f"calib {cfg.calib or 'general corpus'}: {e}") from None
    tests = {k: v[:cfg.eval_max] if cfg.eval_max else v for k, v in dom["test"].items()} if dom else {}
    times["data_s"] = time.time() - t0
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id

    t0 = time.time()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = M.load_model(model_dir, device, dtype)
    times["load_s"] = time.time() - t0
    results = {"config": dataclasses.asdict(cfg), "model_dir": str(model_dir), "device": str(device),
               "dtype": str(dtype), "world_size": world, "versions": _versions(),
               "train_examples": len(encoded), "truncation": trunc, "steps_per_epoch": steps_per_epoch,
               "calibration": {"nsamples": cfg.nsamples, "seqlen": cfg.seqlen, "offsets": calib_offsets,
                               "corpus": cfg.calib or "general_corpus"}}
    if cfg.eval and tests and rank == 0 and not cfg.resume:
        t0 = time.time()
        results["dense_start"] = _evaluate(model, tok, tests, dom, cfg)
        times["eval_start_s"] = time.time() - t0

    reset_peak_memory(device)
    score_state, prune_reports, losses = {}, [], []

    probe = next(data.batches(encoded, cfg.batch_size, cfg.seed, 0, pad, drop_last=True))
    autocast = lambda: torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")

    @torch.no_grad()
    def probe_loss():        # the loss just before and after a call, on one fixed training batch
        was, (x, y) = model.training, (t.to(device) for t in probe)
        model.eval()
        with autocast():
            loss = completion_loss(model, x, y, int((y[:, 1:] != data.IGNORE).sum().clamp(min=1)))
        model.train(was)
        return loss.item()

    def prune_call(method, compensate, average, tag, keep_scores=False):
        t, k, before = time.time(), len(prune_reports) + 1, probe_loss()
        rho = ramp(cfg.sparsity, k, n_calls, cfg.sparsity_ramp) if method == "foresight" else cfg.sparsity
        o = prune_options(cfg, method, rho, compensate, average, seed=cfg.seed * 1000 + k - 1)
        rep = efx.prune(model, calib_ids, options=o, score_state=score_state,
                        log=_log if rank == 0 else (lambda *a: None))
        if not keep_scores:     # no later call averages with these scores (E7): free them
            score_state.clear()
        rep.update(tag=tag, loss_before=before, loss_after=probe_loss())
        prune_reports.append({key: v for key, v in rep.items() if key != "maps"})
        times[f"prune_{len(prune_reports)}_{tag}_s"] = time.time() - t
        _log(f"[train] prune call {k} ({tag}): {method} overall sparsity {rep['overall_sparsity']:.4f}"
             f" in {rep['time_s']:.1f}s; probe loss {before:.4f} -> {rep['loss_after']:.4f}")
        return rep

    if cfg.method in ("wanda", "sparsegpt", "magnitude") and cfg.baseline_order == "both":
        prune_call(cfg.method, False, False, "before-lora")
    M.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
               generator=torch.Generator(device=device).manual_seed(cfg.seed))
    adapters = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(adapters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.lr_schedule))
    points = set(prune_points(cfg.epochs, steps_per_epoch, cfg.prune_every, cfg.prune_every_steps)) \
        if cfg.method == "efx" else set()
    n_calls = len(points) + 1                              # efx: the intermediate calls + final
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    ckpt, start_epoch = out / "checkpoint.safetensors", 0
    if cfg.resume and not ckpt.exists():
        _log(f"[train] --resume: no checkpoint at {ckpt}, starting from the beginning")
    if cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt, model, opt, score_state)
        start_epoch, losses, prune_reports = state["epoch"] + 1, state["losses"], state["prune_reports"]
        sched.load_state_dict(state["sched"])
        for g, lr in zip(opt.param_groups, sched.get_last_lr()):   # load_state_dict leaves the
            g["lr"] = lr                                            # optimizer at lr(step 0)
        _log(f"[train] resumed from {ckpt} after epoch {state['epoch']}")
    out.mkdir(parents=True, exist_ok=True)

    t_train, tokens_seen, micro = time.time(), 0, cfg.batch_size // cfg.grad_accum
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed * 7919 + epoch)            # dropout: identical after --resume
        model.train()
        for i, (ids, labels) in enumerate(data.batches(encoded, cfg.batch_size, cfg.seed, epoch, pad,
                                                        drop_last=True)):
            step = epoch * steps_per_epoch + i
            if step in points:                                 # SPEC section 8, intermediate call
                prune_call("foresight", True, True, f"step{step}", keep_scores=max(points) > step)
                model.train()
            n_tok = int((labels[:, 1:] != data.IGNORE).sum().clamp(min=1))
            loss_sum = 0.0
            for a in range(cfg.grad_accum):                   # this rank's share of each micro-batch
                sl = slice(a * micro + rank * (micro // world), a * micro + (rank + 1) * (micro // world))
                x, y = ids[sl].to(device), labels[sl].to(device)
                with autocast():
                    loss = completion_loss(ddp, x, y, n_tok) * world
                ctx = ddp.no_sync() if world > 1 and a < cfg.grad_accum - 1 else contextlib.nullcontext()
                with ctx:
                    loss.backward()
                loss_sum += loss.item() / world
            if world > 1:                                      # the mean loss, for logging only
                t = torch.tensor([loss_sum], device=device)
                dist.all_reduce(t)
                loss_sum = t.item()
            if not math.isfinite(loss_sum):                    # before the step spoils the adapters
                raise FloatingPointError(
                    f"loss is {loss_sum} at epoch {epoch + 1} step {step + 1}: stopping; the last good "
                    f"checkpoint {ckpt if ckpt.exists() else '(none yet)'} is left as it was")
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(adapters, cfg.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(loss_sum, 6))
            tokens_seen += ids.numel()
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                el = time.time() - t_train
                _log(f"[train] epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{total} loss {loss_sum:.4f} "
                     f"lr {sched.get_last_lr()[0]:.2e} tok/s {tokens_seen / el:.0f} elapsed {el:.1f}s")
        if rank == 0:
            save_checkpoint(ckpt, model, opt, score_state,
                            {"epoch": epoch, "losses": losses, "prune_reports": prune_reports,
                             "sched": sched.state_dict()})
        if world > 1:
            dist.barrier()
    times["train_s"] = time.time() - t_train

    # the final call: no averaging (SPEC section 8), compensation if compensate_final;
    # baselines merge, then prune once
    if cfg.method == "efx":
        final = prune_call("foresight", cfg.compensate_final, False, "final")
        M.merge_lora(model)
    else:
        M.merge_lora(model)
        final = prune_call(cfg.method, False, False, "final") if cfg.method != "dense" else None
    for _, m in M.lora_modules(model):                     # the saved model is plain and sparse
        m.set_lora(0, 0)
    results["peak_memory_gb"] = peak_memory_gb(device)
    results["peak_memory_kind"] = "cuda max allocated" if device.type == "cuda" else "process peak RSS"
    results.update(losses=losses, prune_calls=prune_reports,
                   sparsity=eval_sparsity(model, final["nm"] if final else None))
    if rank == 0:
        t0 = time.time()
        M.save_model(model, out / "model")
        times["save_s"] = time.time() - t0
        if cfg.eval and tests:
            t0 = time.time()
            results["final"] = _evaluate(model, tok, tests, dom, cfg)
            times["eval_final_s"] = time.time() - t0
    times["total_s"] = time.time() - t_run
    results["times"] = times
    if rank == 0:
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2, default=str))
        os.replace(tmp, out / "results.json")
        _summary(results)
    return {**results, "model": model, "tokenizer": tok, "wall_s": times["total_s"],
            "peak_gb": results["peak_memory_gb"]}


def eval_sparsity(model, nm):
    import eval as E
    return E.sparsity_report(model, nm)


def _evaluate(model, tok, tests, dom, cfg):
    import eval as E
    return E.evaluate(model, tok, tests, dom["ppl_text"] if dom else None, seqlen=cfg.eval_seqlen,
                      ppl_max_windows=cfg.eval_ppl_windows or None, log=_log)


def _versions():
    import numpy, safetensors, tokenizers
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "tokenizers": tokenizers.__version__}


def _summary(r):
    c = r["config"]
    print(f"\n=== efx: {c['method']} at {c['sparsity']:.0%} on {c['train'] or c['domain']} "
          f"({r['train_examples']} examples, {c['epochs']} epochs) ===")
    s = r["sparsity"]["overall"]
    print(f"sparsity over the seven maps: {s['sparsity']:.4f}   peak memory {r['peak_memory_gb']:.2f} GB "
          f"({r['peak_memory_kind']})   total {r['times']['total_s']:.0f}s")
    if "final" in r:
        start = r.get("dense_start", {}).get("metrics", {})
        print(f"{'metric':<32}{'dense start':>12}{'sparse expert':>15}")
        for k, v in r["final"]["metrics"].items():
            a = start.get(k)
            print(f"{k:<32}{(f'{a:.4f}' if a is not None else '-'):>12}{v:>15.4f}")
    print(f"model: {Path(c['out']) / 'model'}   results: {Path(c['out']) / 'results.json'}")


def main(argv=None):
    try:
        cfg = parse_args(argv)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as e:
        sys.exit(f"train.py: error: {e}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:   # launched by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        run(cfg)
    except (ValueError, OSError, FloatingPointError) as e:   # bad input, NaN / inf: one line
        sys.exit(f"train.py: error: {e}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
