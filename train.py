"""Domain fine-tuning with the EfficientXpert schedule (method §8), and its baselines.

    python train.py                               # the main job: SmolLM2 on `med`, 50 % sparse
    python train.py --preset smoke                # the whole pipeline in about two minutes on CPU
    python train.py --preset paper --model DIR --train task.jsonl --sparsity 0.5
    torchrun --nproc_per_node=2 train.py ...      # DistributedDataParallel on the adapters

--method efx: LoRA with intermediate ForeSight calls (E5/E6, score average E7, compensation
E12-E16) and a final call; dense: LoRA merged at the end (the 100 % of "% of dense"); wanda,
sparsegpt, magnitude: LoRA -> merge -> prune (--baseline_order after, the paper) or prune ->
LoRA -> merge -> prune (both, the reference repo). Output in --out: the final model (HF
layout, sparse, merged), results.json (config, versions, timings, peak memory, sparsity,
losses, metrics) and checkpoint.safetensors, replaced atomically each epoch (--resume).
"""
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy
import safetensors
import tokenizers
import torch
import torch.distributed as dist

import data
import efx
import eval as E
import model as M
from support import assets, cli, files

METHODS = ("efx", "dense", "wanda", "sparsegpt", "magnitude")


@dataclasses.dataclass
class TrainConfig:
    """One run; every field is a flag (--lora_r 8) and a --config key, checked at creation."""
    # what
    preset: str = "default"         # named group of defaults: default (the main job on CPU) | smoke | study | paper
    model: str = ""                 # HF checkpoint dir; "" = the built-in SmolLM2-135M-Instruct
    domain: str = "med"             # built-in domain (med | legal): its training data when --train is empty
    train: str = ""                 # JSONL task file (method §10) to fine-tune on
    test: list = dataclasses.field(default_factory=list)   # JSONL task files to test dense start and result on
    ppl_file: str = ""              # text for the perplexity metric; "" = the domain's (none with --train)
    out: str = ""                   # output folder; "" = runs/<preset>-<data>-<method>-<sparsity>-s<seed>
    overwrite: bool = False         # replace an earlier run's output in --out
    method: str = "efx"             # efx | dense | wanda | sparsegpt | magnitude
    sparsity: float = 0.5           # fraction of each of the seven maps pruned (rho)
    nm: str = ""                    # "2:4" etc.: N:M instead of unstructured (E10)
    per: str = "row"                # mask selection: row (E8) | layer (E9)
    # EfficientXpert (method §4, 7, 8)
    foresight_variant: str = "code"     # code (E6, the authors' released code) | paper (E5)
    pbs: bool = False               # B update before each masked merge (method §7)
    pbs_variant: str = "paper"      # paper | code (E12-E14: no gain after the merge) | gram (E15)
    reconstruct: str = "obs"        # obs: OBS update of the kept weights for the mask (E16) | none
    compensate_final: bool = True   # apply pbs / reconstruct in the final call too
    sparsity_ramp: str = "none"     # none | cubic: call k of K prunes rho (1 - (1 - k/K)^3)
    mask_lr: float = 0.5            # eta of the score average (E7)
    prune_every: int = 1            # intermediate call before epoch e when e >= 1, e % k == 0
    prune_every_steps: int = 0      # > 0: every k optimizer steps instead of epochs
    baseline_order: str = "after"   # after (paper) | both (reference repo)
    # LoRA and optimisation
    lora_r: int = 8                 # LoRA rank r
    lora_alpha: float = 16.0        # LoRA alpha; scale s = alpha / r
    lora_dropout: float = 0.05      # dropout on the adapters' input
    lr: float = 2e-4                # AdamW peak learning rate
    weight_decay: float = 0.0       # AdamW weight decay
    epochs: int = 3                 # passes over the training data
    batch_size: int = 4             # examples per optimizer step, over all ranks
    grad_accum: int = 1             # micro-batches per optimizer step (on each rank)
    warmup_ratio: float = 0.03      # fraction of the steps spent warming up the lr linearly
    lr_schedule: str = "cosine"     # cosine | linear
    clip: float = 1.0               # gradient-norm clipping (0 = off)
    max_len: int = 512              # tokens per example (prompt cut from the left)
    max_train: int = 0              # use at most this many training examples (0 = all)
    # calibration (method §3)
    nsamples: int = 16              # calibration windows per pruning call
    seqlen: int = 256               # tokens per calibration window
    calib: str = ""                 # text file for calibration; "" = built-in general corpus
    offload: bool = False           # calibration hidden states on CPU
    # evaluation
    eval: bool = True               # evaluate the dense start and the result on the test tasks
    eval_max: int = 0               # at most this many examples per test task (0 = all)
    eval_seqlen: int = 512          # perplexity window length
    eval_ppl_windows: int = 0       # at most this many perplexity windows (0 = the whole corpus)
    # run
    seed: int = 0                   # data order, LoRA init, calibration windows
    device: str = ""                # "" = cuda > mps > cpu
    log_every: int = 10             # optimizer steps between log lines
    resume: bool = False            # continue from <out>/checkpoint.safetensors
    keep_checkpoint: bool = False   # keep the training checkpoint once the run has finished

    def __post_init__(self):         # every value checked here, before any heavy work
        def need(ok, msg):
            if not ok:
                raise ValueError(f"config: {msg}")
        need(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        need(self.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        try:                          # the pruning options are checked where they are defined
            prune_options(self, "foresight", self.sparsity, compensate=True)
        except ValueError as e:
            raise ValueError(f"config: {e}") from None
        for field, allowed in (("sparsity_ramp", ("none", "cubic")), ("lr_schedule", ("cosine", "linear")),
                               ("baseline_order", ("after", "both"))):
            need(getattr(self, field) in allowed, f"{field}={getattr(self, field)!r}, expected one of {allowed}")
        need(self.lora_r > 0, f"lora_r must be > 0, got {self.lora_r}")
        need(self.epochs >= 1 and self.prune_every >= 1 and self.prune_every_steps >= 0,
             f"epochs and prune_every must be >= 1 and prune_every_steps >= 0, got "
             f"{self.epochs}, {self.prune_every}, {self.prune_every_steps}")
        need(self.batch_size >= 1 and self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
             f"batch_size ({self.batch_size}) must be a positive multiple of grad_accum ({self.grad_accum})")
        need(self.nsamples >= 1 and self.seqlen >= 2 and self.max_len >= 8,
             "nsamples, seqlen and max_len must be positive")
        need(self.lr > 0 and 0 <= self.warmup_ratio < 1,
             f"lr must be > 0 and warmup_ratio in [0, 1), got {self.lr}, {self.warmup_ratio}")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        need(min(self.max_train, self.eval_max, self.eval_ppl_windows) >= 0,
             "max_train, eval_max and eval_ppl_windows must be >= 0")
        for name, p in [(n, getattr(self, n)) for n in ("model", "train", "calib", "ppl_file")] + \
                [("test", p) for p in self.test]:
            need(not p or Path(p).exists(), f"{name}: path {p!r} does not exist")
        if not self.out:      # named after what the run is, so that no run replaces another
            what = "dense" if self.method == "dense" else \
                f"{self.method}-{self.nm.replace(':', 'of') if self.nm else round(100 * self.sparsity)}"
            self.out = f"runs/{self.preset}-{Path(self.train).stem if self.train else self.domain}-{what}-s{self.seed}"

PRESETS = {
    # method §8 / the paper's reference hyper-parameters (one GPU).
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
    # compare.py's evidence study (README): one epoch of 128 examples, calls at steps 11 and
    # 22 of 32 and the final one, so that a run trains in about two minutes on 2 CPU cores.
    "study": dict(epochs=1, max_train=128, nsamples=8, seqlen=256, max_len=256, prune_every_steps=11),
    # About two minutes on CPU (105 s measured): a check that the whole pipeline runs.
    "smoke": dict(epochs=2, max_train=16, nsamples=4, seqlen=128, max_len=128, eval_max=8,
                  log_every=2, eval_seqlen=256, eval_ppl_windows=4),
}


def parse_args(argv=None) -> TrainConfig:
    """The command line: defaults < --preset < --config < flags (support/cli.py)."""
    cfg = cli.parse(TrainConfig, argv, __doc__.split("\n")[0], presets=PRESETS)
    given = [a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")]
    if cfg.method == "dense" and {"--sparsity", "--nm", "--per"} & set(given):
        raise ValueError("config: --method dense is not pruned: drop --sparsity / --nm / --per")
    return cfg


# ----------------------------------------------------------------------------- schedule

def prune_points(epochs, steps_per_epoch, prune_every=1, prune_every_steps=0):
    """Global optimizer steps before which an intermediate pruning call runs (method §8):
    the first step of epoch e for e >= 1 with e % prune_every == 0, or with prune_every_steps
    = k every k-th step. The final call (after the last step) is not in this list."""
    total = epochs * steps_per_epoch
    if prune_every_steps > 0:
        return [s for s in range(prune_every_steps, total, prune_every_steps)]
    return [e * steps_per_epoch for e in range(1, epochs) if e % prune_every == 0]


def prune_options(c, method, sparsity, *, compensate=False, average=False, seed=0):
    """The efx.PruneOptions of one call of run `c`; compensation (E12-E16) only if asked."""
    return efx.PruneOptions(
        method=method, sparsity=sparsity, nm=c.nm or None, per=c.per, foresight_variant=c.foresight_variant,
        average=average, mask_lr=c.mask_lr, pbs=compensate and c.pbs, pbs_variant=c.pbs_variant,
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


# ----------------------------------------------------------------------------- the run

def run(cfg) -> dict:
    """method §8: fine-tune with LoRA, prune per the method's schedule, save, evaluate.
    cfg: a TrainConfig, or a dict of fields over the default preset. Returns the results dict
    plus "model" and "tokenizer" (the final sparse model, in memory)."""
    job = Job(cfg)                          # every check, the data and calibration windows, the model
    cfg = job.cfg
    job.evaluate("dense_start")
    if cfg.method in BASELINES and cfg.baseline_order == "both":
        job.prune_call(cfg.method, tag="before-lora")
    job.attach_lora()                       # frozen base, float32 adapters, AdamW, --resume
    points = job.points                     # optimizer steps before which efx prunes
    for epoch in range(job.start_epoch, cfg.epochs):
        for step, batch in job.batches(epoch):
            if step in points:              # intermediate call: compensation, score average (E7)
                job.prune_call("foresight", tag=f"step{step}", compensate=True, average=True,
                               keep_scores=step < max(points))
            job.train_step(epoch, step, batch)
        job.checkpoint(epoch)
    if cfg.method == "efx":                 # final call: no E7; its masked merge is the merge (E0)
        final = job.prune_call("foresight", tag="final", compensate=cfg.compensate_final)
    else:                                   # baselines: merge, then prune once; dense: merge
        M.merge_lora(job.model)
        final = job.prune_call(cfg.method, tag="final") if cfg.method != "dense" else None
    return job.finish(final)


BASELINES = ("wanda", "sparsegpt", "magnitude")


class Job:
    """The state of one run and the steps run() calls, in the order it calls them."""

    def __init__(self, cfg):
        self.cfg = cfg = cfg if isinstance(cfg, TrainConfig) else \
            cli.make(TrainConfig, {**PRESETS["default"], **cfg})
        self.t_run, self.times = time.time(), {}
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.device = device = torch.device(cfg.device) if cfg.device else M.pick_device()
        if cfg.batch_size % (cfg.grad_accum * self.world):
            raise ValueError(f"config: batch_size {cfg.batch_size} must be divisible by grad_accum x ranks "
                             f"= {cfg.grad_accum * self.world}")
        self.out, self.ckpt = Path(cfg.out), Path(cfg.out) / CHECKPOINT
        cli.check_fresh(self.out, cfg.overwrite or (cfg.resume and self.ckpt.exists()), "results.json")
        if self.ckpt.exists() and not (cfg.resume or cfg.overwrite):
            raise ValueError(f"{self.ckpt} exists (an unfinished run): --resume continues it, "
                             "--overwrite starts over")
        torch.manual_seed(cfg.seed)
        t0 = time.time()                    # data first: bad input fails before the weights load
        model_dir = Path(cfg.model) if cfg.model else assets.default_model_dir()
        _log(f"[train] {cfg.preset} preset; model {model_dir}; output in {self.out}")
        model_cfg = M.load_config(model_dir)
        self.tok = tok = files.load_tokenizer(model_dir, model_cfg)
        if cfg.nm:
            efx.check_nm_fits(model_cfg, cfg.nm)
        dom = {} if cfg.train else data.default_domain(cfg.domain)    # own data, or a built-in domain
        examples = data.load_jsonl_tasks(cfg.train) if cfg.train else dom["train"]
        tests = {Path(f).stem: data.load_jsonl_tasks(f) for f in cfg.test} if cfg.test else dom.get("test", {})
        self.ppl_text = Path(cfg.ppl_file).read_text() if cfg.ppl_file else dom.get("ppl_text")
        if cfg.max_train and len(examples) > cfg.max_train:   # a seeded sample across the tasks
            _log(f"[train] max_train={cfg.max_train} ({_source(cfg, 'max_train')}): a seeded {cfg.max_train} of "
                 f"the {len(examples)} training examples are used (--max_train 0: all)")
            pick = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed))
            examples = [examples[i] for i in sorted(pick[:cfg.max_train].tolist())]
        self.encoded, trunc = data.encode_all(tok, examples, cfg.max_len)
        if trunc["prompt_cut"] or trunc["completion_cut"]:
            longest = max(len(tok.encode(e["prompt"])) + len(tok.encode(e["completion"])) for e in examples) + 2
            _log(f"[train] max_len={cfg.max_len} ({_source(cfg, 'max_len')}): {trunc['prompt_cut']} prompts "
                 f"({trunc['prompt_cut'] / len(examples):.0%}) and {trunc['completion_cut']} completions of "
                 f"{len(examples)} examples are cut; --max_len {longest} keeps every example whole")
        capped = [k for k, v in tests.items() if cfg.eval_max and len(v) > cfg.eval_max]
        if cfg.eval and capped:
            _log(f"[train] eval_max={cfg.eval_max} ({_source(cfg, 'eval_max')}): only the first {cfg.eval_max} "
                 f"items of {', '.join(f'{k} ({len(tests[k])})' for k in capped)} are tested (--eval_max 0: all)")
        if cfg.train and not cfg.test:
            _log(f"[train] no --test files: the result is saved but not evaluated (add --test FILE.jsonl, "
                 f"or afterwards: python eval.py --model {self.out / 'model'} --tasks FILE.jsonl)")
        self.steps_per_epoch = spe = len(self.encoded) // cfg.batch_size   # last partial batch dropped
        if spe == 0:
            raise ValueError(f"train data {cfg.train or cfg.domain}: {len(self.encoded)} examples, "
                             f"fewer than one batch of {cfg.batch_size}")
        calib_text = Path(cfg.calib).read_text() if cfg.calib else \
            data.general_corpus(max_chars=max(2_000_000, 40 * cfg.nsamples * cfg.seqlen))  # ~5x the windows
        try:
            self.calib_ids, offsets = data.calibration_windows(tok, calib_text, cfg.nsamples, cfg.seqlen, cfg.seed)
        except ValueError as e:
            raise ValueError(f"calib {cfg.calib or 'general corpus'}: {e}") from None
        self.tests = {k: v[:cfg.eval_max] if cfg.eval_max else v for k, v in tests.items()}
        self.pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
        self.probe = next(data.batches(self.encoded, cfg.batch_size, cfg.seed, 0, self.pad, drop_last=True))
        self.times["data_s"] = time.time() - t0
        t0 = time.time()
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.model = M.load_model(model_dir, device, self.dtype)
        self.times["load_s"] = time.time() - t0
        self.results = {"config": dataclasses.asdict(cfg), "model_dir": str(model_dir), "device": str(device),
                        "dtype": str(self.dtype), "world_size": self.world, "versions": _versions(),
                        "train_examples": len(self.encoded), "truncation": trunc, "steps_per_epoch": spe,
                        "calibration": {"nsamples": cfg.nsamples, "seqlen": cfg.seqlen, "offsets": offsets,
                                        "corpus": cfg.calib or "general_corpus"}}
        self.points = set(prune_points(cfg.epochs, spe, cfg.prune_every, cfg.prune_every_steps)) \
            if cfg.method == "efx" else set()
        self.n_calls = len(self.points) + 1              # efx: the intermediate calls + the final
        self.score_state, self.prune_reports, self.losses = {}, [], []
        self.start_epoch = 0
        if self.rank == 0:      # the folder says it is unfinished until finish() (and how to resume)
            self.out.mkdir(parents=True, exist_ok=True)
            resolved = {**dataclasses.asdict(cfg), "resume": False, "overwrite": False}
            files.atomic_write_text(json.dumps(resolved, indent=2), self.out / "config.json")
            files.atomic_write_text(f"This run has not finished. Resume it with:\n  {resume_command(cfg)}\n",
                                    self.out / UNFINISHED)

    def autocast(self):
        return torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda")

    def evaluate(self, key):
        """The test tasks and the domain perplexity (rank 0; not for --resume's dense start).
        The peak memory reported is that of everything after the dense start's evaluation."""
        resumed = key == "dense_start" and self.cfg.resume and self.ckpt.exists()   # restored from it
        if self.cfg.eval and (self.tests or self.ppl_text) and self.rank == 0 and not resumed:
            t0 = time.time()
            res = E.evaluate(self.model, self.tok, self.tests, self.ppl_text, seqlen=self.cfg.eval_seqlen, log=_log,
                             ppl_max_windows=self.cfg.eval_ppl_windows or None, name=self.out.name)
            self.out.mkdir(parents=True, exist_ok=True)       # per-example records: predictions_<key>.jsonl
            E.write_predictions(self.out / f"predictions_{key}.jsonl", res.pop("predictions"))
            self.results[key] = res
            self.times[f"eval_{key.split('_')[-1]}_s"] = time.time() - t0
        if key == "dense_start":
            cli.reset_peak_memory(self.device)

    @torch.no_grad()
    def probe_loss(self):
        """The loss on one fixed training batch, just before and just after a pruning call."""
        was, (x, y) = self.model.training, (t.to(self.device) for t in self.probe)
        self.model.eval()
        with self.autocast():
            loss = completion_loss(self.model, x, y, int((y[:, 1:] != data.IGNORE).sum().clamp(min=1)))
        self.model.train(was)
        return loss.item()

    def prune_call(self, method, *, tag, compensate=False, average=False, keep_scores=False):
        """One efx.prune call (method §8 PRUNE_CALL) with this run's options."""
        cfg, t = self.cfg, time.time()
        if hasattr(self, "bar"):
            self.bar.end()                  # a half-written progress line on a terminal
        k, before = len(self.prune_reports) + 1, self.probe_loss()
        rho = ramp(cfg.sparsity, k, self.n_calls, cfg.sparsity_ramp) if method == "foresight" else cfg.sparsity
        o = prune_options(cfg, method, rho, compensate=compensate, average=average, seed=cfg.seed * 1000 + k - 1)
        rep = efx.prune(self.model, self.calib_ids, options=o, score_state=self.score_state,
                        log=_log if self.rank == 0 else (lambda *a: None))
        if not keep_scores:     # no later call averages with these scores (E7): free them
            self.score_state.clear()
        rep.update(tag=tag, loss_before=before, loss_after=self.probe_loss())
        self.prune_reports.append({key: v for key, v in rep.items() if key != "maps"})
        self.times[f"prune_{k}_{tag}_s"] = time.time() - t
        _log(f"[train] prune call {k} ({tag}): {method} overall sparsity {rep['overall_sparsity']:.4f}"
             f" in {rep['time_s']:.1f}s; probe loss {before:.4f} -> {rep['loss_after']:.4f}")
        return rep

    def attach_lora(self):
        """LoRA on the seven maps (method (E0)), AdamW and the lr schedule; --resume restores them."""
        cfg = self.cfg
        M.add_lora(self.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                   generator=torch.Generator(device=self.device).manual_seed(cfg.seed))
        self.adapters = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.adapters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.total = cfg.epochs * self.steps_per_epoch
        warmup = max(1, int(cfg.warmup_ratio * self.total))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.total, warmup, cfg.lr_schedule))
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        if cfg.resume and not self.ckpt.exists():
            _log(f"[train] --resume: no checkpoint at {self.ckpt}, starting from the beginning")
        if cfg.resume and self.ckpt.exists():
            state = files.load_checkpoint(self.ckpt, M.lora_modules(self.model), self.opt, self.score_state)
            self.start_epoch, self.losses = state["epoch"] + 1, state["losses"]
            self.prune_reports = state["prune_reports"]
            if state.get("dense_start") is not None:     # the interrupted run's dense-start results
                self.results["dense_start"] = state["dense_start"]
            self.sched.load_state_dict(state["sched"])
            for g, lr in zip(self.opt.param_groups, self.sched.get_last_lr()):   # load_state_dict
                g["lr"] = lr                                 # leaves the optimizer at lr(step 0)
            _log(f"[train] resumed from {self.ckpt} after epoch {state['epoch'] + 1}/{cfg.epochs}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.t_train, self.tokens_seen = time.time(), 0
        self.bar = cli.Progress("[train] step", self.total, "step", print if self.rank == 0 else (lambda *a: None),
                                start=self.start_epoch * self.steps_per_epoch)

    def batches(self, epoch):
        """(global step, (ids, labels)) of one epoch; dropout seeded per epoch (--resume)."""
        torch.manual_seed(self.cfg.seed * 7919 + epoch)
        self.model.train()
        for i, batch in enumerate(data.batches(self.encoded, self.cfg.batch_size, self.cfg.seed, epoch,
                                               self.pad, drop_last=True)):
            yield epoch * self.steps_per_epoch + i, batch

    def train_step(self, epoch, step, batch):
        """One optimizer step: grad_accum micro-batches, this rank's share of each."""
        cfg, (ids, labels), rank, world = self.cfg, batch, self.rank, self.world
        self.model.train()
        n_tok = int((labels[:, 1:] != data.IGNORE).sum().clamp(min=1))
        loss_sum, micro = 0.0, cfg.batch_size // cfg.grad_accum
        for a in range(cfg.grad_accum):
            sl = slice(a * micro + rank * (micro // world), a * micro + (rank + 1) * (micro // world))
            x, y = ids[sl].to(self.device), labels[sl].to(self.device)
            with self.autocast():
                loss = completion_loss(self.ddp, x, y, n_tok) * world
            sync = world > 1 and a < cfg.grad_accum - 1
            with self.ddp.no_sync() if sync else contextlib.nullcontext():
                loss.backward()
            loss_sum += loss.item() / world
        if world > 1:                                          # the mean loss, for logging only
            t = torch.tensor([loss_sum], device=self.device)
            dist.all_reduce(t)
            loss_sum = t.item()
        if not math.isfinite(loss_sum):                        # before the step spoils the adapters
            raise FloatingPointError(
                f"loss is {loss_sum} at epoch {epoch + 1} step {step + 1}: stopping; the last good "
                f"checkpoint {self.ckpt if self.ckpt.exists() else '(none yet)'} is left as it was")
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.adapters, cfg.clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(round(loss_sum, 6))
        self.tokens_seen += ids.numel()
        tok_s, lr = self.tokens_seen / (time.time() - self.t_train), self.sched.get_last_lr()[0]
        self.bar.update(step + 1, f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum:.4f} lr {lr:.2e} tok/s {tok_s:.0f}",
                        keep=(step + 1) % cfg.log_every == 0)

    def checkpoint(self, epoch):
        self.times["train_s"] = time.time() - self.t_train      # after the last epoch: training
        if self.rank == 0:
            files.save_checkpoint(self.ckpt, M.lora_modules(self.model), self.opt, self.score_state,
                            {"epoch": epoch, "losses": self.losses, "prune_reports": self.prune_reports,
                             "sched": self.sched.state_dict(), "dense_start": self.results.get("dense_start")})
        if self.world > 1:
            dist.barrier()

    def finish(self, final):
        """Plain sparse model saved, evaluated, results.json written atomically."""
        model, results, times = self.model, self.results, self.times
        for _, m in M.lora_modules(model):                 # the saved model is plain and sparse
            m.set_lora(0, 0)
        results["peak_memory_gb"], results["peak_memory_kind"] = cli.peak_memory(self.device)
        results.update(losses=self.losses, prune_calls=self.prune_reports,
                       sparsity=E.sparsity_report(model, final["nm"] if final else None))
        if self.rank == 0:
            t0 = time.time()
            M.save_model(model, self.out / "model")
            times["save_s"] = time.time() - t0
            self.evaluate("final")
        times["total_s"] = time.time() - self.t_run
        results["times"] = times
        if self.rank == 0:
            files.atomic_write_text(json.dumps(results, indent=2, default=str), self.out / "results.json")
            if self.ckpt.exists() and not self.cfg.keep_checkpoint:   # only --resume needs it
                self.ckpt.unlink()
            (self.out / UNFINISHED).unlink(missing_ok=True)
            _summary(results)
        return {**results, "model": model, "tokenizer": self.tok, "wall_s": times["total_s"],
                "peak_gb": results["peak_memory_gb"]}


CHECKPOINT = "checkpoint.safetensors"   # in the output folder until the run has finished (--resume)
UNFINISHED = "UNFINISHED"      # in the output folder of a run that started and has not finished


def resume_command(cfg):
    return f"python train.py --config {Path(cfg.out) / 'config.json'} --resume"


def _source(cfg, field):
    """Where a capped value came from, for the lines that say what it leaves out."""
    return f"{cfg.preset} preset" if PRESETS[cfg.preset].get(field) == getattr(cfg, field) else f"--{field}"


def _log(*a):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*a, flush=True)


def _versions():
    return {"python": platform.python_version(), **{m.__name__: m.__version__ for m in
                                                    (torch, numpy, safetensors, tokenizers)}}


def _summary(r):
    c, s = r["config"], r["sparsity"]["overall"]
    what = "dense LoRA" if c["method"] == "dense" else f"{c['method']} at {c['sparsity']:.0%}"
    print(f"\n=== efx: {what} on {c['train'] or c['domain']} ({r['train_examples']} examples, "
          f"{c['epochs']} epochs) ===\nsparsity over the seven maps: {s['sparsity']:.4f}   peak memory "
          f"{r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']})   total {r['times']['total_s']:.0f}s")
    if "final" in r:
        start, final = r.get("dense_start") or {}, r["final"]
        head = "dense LoRA" if c["method"] == "dense" else "sparse expert"
        cells = {k: (E.metric_cell(k, start["metrics"][k], start.get("tasks")) if k in start.get("metrics", {})
                     else "-", E.metric_cell(k, v, final.get("tasks"))) for k, v in final["metrics"].items()}
        w = max([13] + [len(a) for a, _ in cells.values()]) + 2
        print(f"{'metric':<32}{'dense start':>{w}}  {head}")
        for k, (a, b) in cells.items():
            print(f"{k:<32}{a:>{w}}  {b}")
    print(f"model: {Path(c['out']) / 'model'}   results: {Path(c['out']) / 'results.json'}")


def interrupted(cfg):
    """The one line Ctrl-C ends with: what was kept, and the command that resumes."""
    ckpt = Path(cfg.out) / CHECKPOINT
    if ckpt.exists():
        kept = f"kept {ckpt} (after epoch {files.checkpoint_state(ckpt)['epoch'] + 1}/{cfg.epochs})"
    else:
        kept = "no checkpoint yet (one is written after each epoch): --resume starts over"
    return f"train.py: interrupted; {kept}; resume: {resume_command(cfg)}"


def main(argv=None):
    def go():
        cfg = parse_args(argv)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:   # launched by torchrun
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        try:
            return run(cfg)
        except KeyboardInterrupt:
            print(f"\n{interrupted(cfg)}", file=sys.stderr)    # after the ^C on the progress line
            sys.exit(130)                                       # the shell's status for Ctrl-C
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    return cli.main("train.py", go)


if __name__ == "__main__":
    main()
