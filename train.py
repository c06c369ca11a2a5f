"""Domain fine-tuning with the EfficientXpert schedule (method §8), and its baselines.

    python train.py                               # the main job: SmolLM2 on `med`, 50 % sparse
    python train.py --preset smoke                # the whole pipeline in about two minutes on CPU
    python train.py --preset paper --model DIR --train task.jsonl --sparsity 0.5
    torchrun --nproc_per_node=2 train.py ...      # DistributedDataParallel on the adapters

--method efx: LoRA with intermediate ForeSight calls (E5/E6, score average E7, compensation
E12-E16) and a final call; dense: LoRA merged at the end (the 100 % of "% of dense"); wanda,
sparsegpt, magnitude: LoRA -> merge -> prune (--baseline_order after, the paper), prune ->
LoRA -> masked merge (before: the mask held) or prune -> LoRA -> merge -> prune (both, the
reference repo). Output in --out: the final model (HF layout, sparse, merged), results.json
(config, versions, timings, peak memory, sparsity, losses, metrics) and
checkpoint.safetensors, replaced atomically each epoch (--resume).
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
class TrainConfig(efx.PruneOptions):
    """One run; every field is a flag (--lora_r 8) and a --config key, checked at creation.
    The pruning options (method, sparsity, nm, per, compensation, ...) are efx.PruneOptions'
    fields; five are declared again below because a run reads them differently: its default
    compensation is E16, then E15 through a fresh B (the evidence study's best, docs/study.md)."""
    method: str = "efx"             # efx | dense | wanda | sparsegpt | magnitude
    reconstruct: str = "obs"        # obs: OBS update of the kept weights for the mask (E16) | none
    pbs: bool = True                # update the LoRA B (method §7); with reconstruct obs: E15 after E16
    pbs_variant: str = "gram"       # gram (E15) | paper | code (E12-E14: with reconstruct none)
    seed: int = 0                   # data order, LoRA init, calibration windows, each call's fresh A
    # what
    preset: str = "default"         # named group of defaults: default (the main job on CPU) | smoke | study | paper
    model: str = ""                 # HF checkpoint dir; "" = the built-in SmolLM2-135M-Instruct
    domain: str = "med"             # built-in domain (med | legal | topics): its data when --train is empty
    objective: str = "task"         # task: the completions of --train or the domain's tasks | lm: every token of --train_text or the domain's text
    train: str = ""                 # JSONL task file (method §10) to fine-tune on
    train_text: str = ""            # text file to fine-tune on with --objective lm; "" = the domain's training half
    test: list = dataclasses.field(default_factory=list)   # JSONL task files to test dense start and result on
    ppl_file: str = ""              # text for the perplexity metric; "" = the domain's (none with --train)
    out: str = ""                   # output folder; "" = runs/<preset>-<data>-<method>-<sparsity>-s<seed>
    overwrite: bool = False         # replace an earlier run's output in --out
    # the EfficientXpert schedule (method §8)
    compensate_final: bool = True   # apply pbs / reconstruct in the final call too
    sparsity_ramp: str = "none"     # none | cubic: call k of K prunes rho (1 - (1 - k/K)^3)
    prune_every: int = 1            # intermediate call before epoch e when e >= 1, e % k == 0
    prune_every_steps: int = 0      # > 0: every k optimizer steps instead of epochs
    baseline_order: str = "after"   # after: LoRA, merge, prune (paper) | before: prune, LoRA, masked merge | both: prune, LoRA, merge, prune (reference repo)
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
    calib: str = ""                 # text file for calibration; "" = built-in general corpus; "train" = the training data
    # evaluation
    eval: bool = True               # evaluate the dense start and the result on the test tasks
    eval_max: int = 0               # at most this many examples per test task (0 = all)
    eval_seqlen: int = 512          # perplexity window length
    eval_ppl_windows: int = 0       # at most this many perplexity windows (0 = the whole corpus)
    # run
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
                               ("baseline_order", ("after", "before", "both")), ("objective", ("task", "lm")),
                               ("domain", data.DOMAINS)):
            need(getattr(self, field) in allowed, f"{field}={getattr(self, field)!r}, expected one of {allowed}")
        need(not (self.sparsity_ramp == "cubic" and self.nm),
             f"sparsity_ramp='cubic' has no N:M form: nm={self.nm!r} prunes N of every M at each call")
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
        need(not (self.train_text and self.objective != "lm") and not (self.train and self.objective == "lm"),
             "--train_text is the text of --objective lm; --train the task file of --objective task")
        for name, p in [(n, getattr(self, n)) for n in ("model", "train", "train_text", "calib", "ppl_file")] + \
                [("test", p) for p in self.test]:
            need(not p or Path(p).exists() or (name, p) == ("calib", "train"), f"{name}: path {p!r} does not exist")
        if not self.out:      # named after what the run is, so that no run replaces another
            what = "dense" if self.method == "dense" else \
                f"{self.method}-{self.nm.replace(':', 'of') if self.nm else round(100 * self.sparsity)}"
            own = self.train or self.train_text
            on = (Path(own).stem if own else self.domain) + ("-lm" if self.objective == "lm" else "")
            self.out = f"runs/{self.preset}-{on}-{what}-s{self.seed}"

PRESETS = {
    # method §8 / the paper's reference hyper-parameters (one GPU).
    "paper": dict(lora_r=8, lora_alpha=16, lora_dropout=0.05, lr=2e-4, epochs=3, batch_size=4,
                  nsamples=128, seqlen=2048, mask_lr=0.5, max_len=2048, max_train=0,
                  foresight_variant="code", pbs=True, pbs_variant="paper", reconstruct="none",
                  compensate_final=False),
    # The main job on 2 CPU cores: 192 of the 320 med training examples keep it to minutes.
    # 64 x 256 = 16k calibration tokens, the knee of the calibration sweep (docs/calibration.md):
    # at 2k the OBS update (E16, part of the default compensation) starves. Each call then
    # costs about as much as 32 training steps here (57 s; docs/main-job.md). Two intermediate
    # calls (steps 32 and 64 of 96), so that the score average E7 acts.
    "default": dict(epochs=2, max_train=192, nsamples=64, seqlen=256, max_len=256, eval_max=40,
                    eval_ppl_windows=16, prune_every_steps=32),
    # compare.py's evidence study (docs/study.md): one epoch of 128 examples (or windows),
    # calls at steps 11 and 22 of 32 and the final one. 64 x 256 = 16k calibration tokens: the
    # knee of the calibration sweep (docs/calibration.md); at 2k SparseGPT and E16 starve.
    "study": dict(epochs=1, max_train=128, nsamples=64, seqlen=256, max_len=256, prune_every_steps=11),
    # One to two minutes on 2 CPU cores (65 s on 2026-12-06, 105 s earlier): the whole pipeline runs.
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
    # BEGIN SOLUTION T6
    total = epochs * steps_per_epoch
    if prune_every_steps > 0:
        return [s for s in range(prune_every_steps, total, prune_every_steps)]
    return [e * steps_per_epoch for e in range(1, epochs) if e % prune_every == 0]
    # END SOLUTION T6


def prune_options(c, method, sparsity, *, compensate=False, seed=0):
    """The efx.PruneOptions of one call of run `c`: the run's pruning fields, the call's
    method, sparsity and seed; compensation (E12-E16) only if asked."""
    call = dict(method=method, sparsity=sparsity, seed=seed)
    if not compensate:
        call.update(pbs=False, reconstruct="none")
    return efx.PruneOptions.of(c, **call)


def ramp(sparsity, k, K, kind):
    """Sparsity of pruning call k of K (1-based; K = the final call): the target, or with
    "cubic" gradual magnitude pruning's schedule (Zhu & Gupta 2017) rho (1 - (1 - k/K)^3)."""
    # BEGIN SOLUTION T6
    return sparsity if kind == "none" else sparsity * (1 - (1 - k / K) ** 3)
    # END SOLUTION T6


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

BASELINES = ("wanda", "sparsegpt", "magnitude")


def run(cfg) -> dict:
    """method §8: fine-tune with LoRA, prune per the method's schedule, save, evaluate.
    cfg: a TrainConfig, or a dict of fields over the default preset. Returns the results dict
    plus "model" and "tokenizer" (the final sparse model, in memory)."""
    r = setup(cfg)                          # every check, the data, calibration windows, the model
    cfg = r.cfg
    evaluate(r, "dense_start")
    # BEGIN SOLUTION T6
    first = None
    if cfg.method in BASELINES and cfg.baseline_order in ("before", "both"):
        first = prune_call(r, cfg.method, tag="before-lora")
    attach_lora(r)                          # frozen base, float32 adapters, AdamW, --resume
    points = prune_points(cfg.epochs, r.steps_per_epoch, cfg.prune_every, cfg.prune_every_steps) \
        if cfg.method == "efx" else []      # optimizer steps before which efx prunes
    for epoch in range(r.start_epoch, cfg.epochs):
        for step, batch in batches(r, epoch):
            if step in points:              # intermediate call: compensation, score average (E7)
                prune_call(r, "foresight", tag=f"step{step}", compensate=True, average=True,
                           keep_scores=step < max(points))
            train_step(r, epoch, step, batch)
        save_checkpoint(r, epoch)
    if cfg.method == "efx":                 # final call: no E7; its masked merge is the merge (E0)
        final = prune_call(r, "foresight", tag="final", compensate=cfg.compensate_final)
    elif cfg.baseline_order == "before" and first is not None:   # the mask held: a masked merge
        M.merge_lora(r.model, {n: m.weight != 0 for n, m in M.lora_modules(r.model)})
        final = first
    else:                                   # baselines: merge, then prune once; dense: merge
        M.merge_lora(r.model)
        final = prune_call(r, cfg.method, tag="final") if cfg.method != "dense" else None
    # END SOLUTION T6
    return finish(r, final)


@dataclasses.dataclass
class Run:
    """What one run holds between its steps: set up by setup(), the optimizer by attach_lora()."""
    cfg: TrainConfig
    out: Path                       # the output folder
    rank: int                       # torch.distributed rank and world size (0, 1 without it)
    world: int
    device: torch.device
    tok: object                     # support/files.py Tokenizer
    model: M.Transformer
    encoded: list                   # training examples as (ids, labels), data.encode_all
    steps_per_epoch: int
    tests: dict                     # test task name -> examples
    ppl_text: str | None            # held-out domain text for perplexity
    calib_ids: torch.Tensor         # (nsamples, seqlen) calibration windows, the same every call
    probe: tuple                    # one fixed training batch: the loss before / after each call
    n_calls: int                    # efx: intermediate calls + the final one (the ramp's K)
    results: dict                   # becomes results.json
    times: dict
    t_run: float
    losses: list = dataclasses.field(default_factory=list)
    prune_reports: list = dataclasses.field(default_factory=list)
    score_state: dict = dataclasses.field(default_factory=dict)   # E7: map name -> S_bar (CPU)
    start_epoch: int = 0
    # set by attach_lora()
    adapters: list = None           # the trained parameters: every LoRA A and B
    opt: object = None              # AdamW over the adapters
    sched: object = None            # its learning-rate schedule
    ddp: object = None              # the model as the steps call it (DDP-wrapped with ranks)
    bar: object = None              # the step progress line
    t_train: float = 0.0
    tokens_seen: int = 0

    @property
    def ckpt(self):
        return self.out / CHECKPOINT


def setup(cfg) -> Run:
    """Everything before training, cheapest first so that bad input fails before the weights
    load: the config, the output folder, the data, the calibration windows, then the model."""
    cfg = cfg if isinstance(cfg, TrainConfig) else cli.make(TrainConfig, {**PRESETS["default"], **cfg})
    t_run, times = time.time(), {}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device(cfg.device) if cfg.device else M.pick_device()
    out = check_output(cfg, world)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    model_dir = Path(cfg.model) if cfg.model else assets.default_model_dir()
    _log(f"[train] {cfg.preset} preset; model {model_dir}; output in {out}")
    model_cfg = M.load_config(model_dir)
    tok = files.load_tokenizer(model_dir, model_cfg)
    if cfg.nm:
        efx.check_nm_fits(model_cfg, cfg.nm)
    train, tests, ppl_text = load_data(cfg, out)
    encoded, trunc = encode(cfg, tok, train)
    steps_per_epoch = len(encoded) // cfg.batch_size        # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise ValueError(f"train data {cfg.train or cfg.domain}: {len(encoded)} examples, "
                         f"fewer than one batch of {cfg.batch_size}")
    calib_ids, offsets = calibration(cfg, tok, train)
    probe = next(data.batches(encoded, cfg.batch_size, cfg.seed, 0, _pad_id(tok), drop_last=True))
    times["data_s"] = time.time() - t0
    t0 = time.time()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = M.load_model(model_dir, device, dtype)
    times["load_s"] = time.time() - t0
    results = {"config": dataclasses.asdict(cfg), "model_dir": str(model_dir), "device": str(device),
               "dtype": str(dtype), "world_size": world, "versions": _versions(),
               "train_examples": len(encoded), "truncation": trunc, "steps_per_epoch": steps_per_epoch,
               "calibration": {"nsamples": cfg.nsamples, "seqlen": cfg.seqlen, "offsets": offsets,
                               "corpus": cfg.calib or "general_corpus"}}
    n_points = len(prune_points(cfg.epochs, steps_per_epoch, cfg.prune_every, cfg.prune_every_steps))
    if rank == 0:           # the folder says it is unfinished until finish() (and how to resume)
        out.mkdir(parents=True, exist_ok=True)
        resolved = {**dataclasses.asdict(cfg), "resume": False, "overwrite": False}
        files.atomic_write_text(json.dumps(resolved, indent=2), out / "config.json")
        files.atomic_write_text(f"This run has not finished. Resume it with:\n  {resume_command(cfg)}\n",
                                out / UNFINISHED)
    return Run(cfg=cfg, out=out, rank=rank, world=world, device=device, tok=tok, model=model,
               encoded=encoded, steps_per_epoch=steps_per_epoch, tests=tests, ppl_text=ppl_text,
               calib_ids=calib_ids, probe=probe, n_calls=n_points + 1 if cfg.method == "efx" else 1,
               results=results, times=times, t_run=t_run)


def check_output(cfg, world) -> Path:
    """The output folder: never over a finished run, nor over an unfinished one unless
    --resume or --overwrite; and the batch must split over grad_accum and the ranks."""
    if cfg.batch_size % (cfg.grad_accum * world):
        raise ValueError(f"config: batch_size {cfg.batch_size} must be divisible by grad_accum x ranks "
                         f"= {cfg.grad_accum * world}")
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT
    cli.check_fresh(out, cfg.overwrite or (cfg.resume and ckpt.exists()), "results.json")
    if ckpt.exists() and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"{ckpt} exists (an unfinished run): --resume continues it, "
                         "--overwrite starts over")
    return out


def load_data(cfg, out):
    """(what to train on, {test name: examples}, perplexity text): the user's files, or the
    built-in domain's. What to train on: task examples (--objective task), or text (lm)."""
    own = cfg.train or cfg.train_text
    dom = {} if own else data.default_domain(cfg.domain)
    if cfg.objective == "lm":
        train = Path(cfg.train_text).read_text() if cfg.train_text else dom["train_text"]
    else:
        train = data.load_jsonl_tasks(cfg.train) if cfg.train else dom["train"]
    tests = {Path(f).stem: data.load_jsonl_tasks(f) for f in cfg.test} if cfg.test else dom.get("test", {})
    ppl_text = Path(cfg.ppl_file).read_text() if cfg.ppl_file else dom.get("ppl_text")
    capped = [k for k, v in tests.items() if cfg.eval_max and len(v) > cfg.eval_max]
    if cfg.eval and capped:
        _log(f"[train] eval_max={cfg.eval_max} ({_source(cfg, 'eval_max')}): only the first {cfg.eval_max} "
             f"items of {', '.join(f'{k} ({len(tests[k])})' for k in capped)} are tested (--eval_max 0: all)")
    if own and not cfg.test:
        _log(f"[train] no --test files: the result is saved but not evaluated (add --test FILE.jsonl, "
             f"or afterwards: python eval.py --model {out / 'model'} --tasks FILE.jsonl)")
    tests = {k: v[:cfg.eval_max] if cfg.eval_max else v for k, v in tests.items()}
    return train, tests, ppl_text


def encode(cfg, tok, train):
    """[(input_ids, labels)] to train on and what encoding left out: task examples through
    data.encode_all at --max_len (saying how many prompts and completions it cuts), or text in
    windows of --max_len tokens (data.encode_text); a seeded --max_train of them."""
    if cfg.objective == "lm":
        encoded = data.encode_text(tok, train, cfg.max_len)
        trunc = {"windows": len(encoded), "tokens_per_window": cfg.max_len}
        _log(f"[train] objective lm: {len(encoded)} windows of {cfg.max_len} tokens of "
             f"{cfg.train_text or cfg.domain + ' training text'}, every token supervised")
        return _sample(cfg, encoded, "windows"), trunc
    examples = _sample(cfg, train, "examples")
    encoded, trunc = data.encode_all(tok, examples, cfg.max_len)
    if trunc["prompt_cut"] or trunc["completion_cut"]:
        longest = max(len(tok.encode(e["prompt"])) + len(tok.encode(e["completion"])) for e in examples) + 2
        _log(f"[train] max_len={cfg.max_len} ({_source(cfg, 'max_len')}): {trunc['prompt_cut']} prompts "
             f"({trunc['prompt_cut'] / len(examples):.0%}) and {trunc['completion_cut']} completions of "
             f"{len(examples)} examples are cut; --max_len {longest} keeps every example whole")
    return encoded, trunc


def _sample(cfg, items, what):
    """A seeded --max_train of the training items, in their order (across the tasks)."""
    if not cfg.max_train or len(items) <= cfg.max_train:
        return items
    _log(f"[train] max_train={cfg.max_train} ({_source(cfg, 'max_train')}): a seeded {cfg.max_train} of "
         f"the {len(items)} training {what} are used (--max_train 0: all)")
    pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.seed))
    return [items[i] for i in sorted(pick[:cfg.max_train].tolist())]


def calibration(cfg, tok, train):
    """The calibration windows of every pruning call (method §3) and their offsets: --calib's
    text; with --calib train the text the run trains on (lm), or its examples' prompts and
    completions; else the general corpus (about 5x the text the windows need)."""
    if cfg.calib == "train":
        text = train if isinstance(train, str) else "\n\n".join(e["prompt"] + e["completion"] for e in train)
    elif cfg.calib:
        text = Path(cfg.calib).read_text()
    else:
        text = data.general_corpus(max_chars=max(2_000_000, 40 * cfg.nsamples * cfg.seqlen))
    try:
        return data.calibration_windows(tok, text, cfg.nsamples, cfg.seqlen, cfg.seed)
    except ValueError as e:
        raise ValueError(f"calib {cfg.calib or 'general corpus'}: {e}") from None


def autocast(r):
    return torch.autocast("cuda", torch.bfloat16, enabled=r.device.type == "cuda")


def evaluate(r, key):
    """The test tasks and the domain perplexity (rank 0; not for --resume's dense start).
    The peak memory reported is that of everything after the dense start's evaluation."""
    resumed = key == "dense_start" and r.cfg.resume and r.ckpt.exists()   # restored from it
    if r.cfg.eval and (r.tests or r.ppl_text) and r.rank == 0 and not resumed:
        t0 = time.time()
        res = E.evaluate(r.model, r.tok, r.tests, r.ppl_text, seqlen=r.cfg.eval_seqlen, log=_log,
                         ppl_max_windows=r.cfg.eval_ppl_windows or None, name=r.out.name)
        r.out.mkdir(parents=True, exist_ok=True)       # per-example records: predictions_<key>.jsonl
        E.write_predictions(r.out / f"predictions_{key}.jsonl", res.pop("predictions"))
        r.results[key] = res
        r.times[f"eval_{key.split('_')[-1]}_s"] = time.time() - t0
    if key == "dense_start":
        cli.reset_peak_memory(r.device)


@torch.no_grad()
def probe_loss(r):
    """The loss on one fixed training batch, just before and just after a pruning call."""
    was, (x, y) = r.model.training, (t.to(r.device) for t in r.probe)
    r.model.eval()
    with autocast(r):
        loss = completion_loss(r.model, x, y, int((y[:, 1:] != data.IGNORE).sum().clamp(min=1)))
    r.model.train(was)
    return loss.item()


def prune_call(r, method, *, tag, compensate=False, average=False, keep_scores=False):
    """One efx.prune call (method §8 PRUNE_CALL) with the run's options: compensation
    (E12-E16) if asked, the score average E7 if asked (the store is kept for a later call
    only with keep_scores)."""
    cfg, t = r.cfg, time.time()
    if r.bar is not None:
        r.bar.end()                         # a half-written progress line on a terminal
    k, before = len(r.prune_reports) + 1, probe_loss(r)
    rho = ramp(cfg.sparsity, k, r.n_calls, cfg.sparsity_ramp) if method == "foresight" else cfg.sparsity
    o = prune_options(cfg, method, rho, compensate=compensate, seed=cfg.seed * 1000 + k - 1)
    rep = efx.prune(r.model, r.calib_ids, options=o, score_state=r.score_state if average else None,
                    **cli.prune_reporting(_log if r.rank == 0 else (lambda *a: None)))
    if not keep_scores:     # no later call averages with these scores (E7): free them
        r.score_state.clear()
    rep.update(tag=tag, loss_before=before, loss_after=probe_loss(r))
    rep["peak_memory_gb"], rep["peak_memory_kind"] = cli.peak_memory(r.device)   # so far
    r.prune_reports.append({key: v for key, v in rep.items() if key != "maps"})
    r.times[f"prune_{k}_{tag}_s"] = time.time() - t
    _log(f"[train] prune call {k} ({tag}): {method} overall sparsity {rep['overall_sparsity']:.4f}"
         f" in {rep['time_s']:.1f}s; probe loss {before:.4f} -> {rep['loss_after']:.4f}")
    return rep


def attach_lora(r):
    """LoRA on the seven maps (method (E0)), AdamW and the lr schedule; --resume restores them."""
    cfg = r.cfg
    M.add_lora(r.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
               generator=torch.Generator(device=r.device).manual_seed(cfg.seed))
    r.adapters = [p for p in r.model.parameters() if p.requires_grad]
    r.opt = torch.optim.AdamW(r.adapters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * r.steps_per_epoch
    warmup = max(1, int(cfg.warmup_ratio * total))
    r.sched = torch.optim.lr_scheduler.LambdaLR(r.opt, lambda s: lr_factor(s, total, warmup, cfg.lr_schedule))
    r.ddp = torch.nn.parallel.DistributedDataParallel(r.model) if r.world > 1 else r.model
    if cfg.resume and not r.ckpt.exists():
        _log(f"[train] --resume: no checkpoint at {r.ckpt}, starting from the beginning")
    if cfg.resume and r.ckpt.exists():
        state = files.load_checkpoint(r.ckpt, M.lora_modules(r.model), r.opt, r.score_state)
        r.start_epoch, r.losses, r.prune_reports = state["epoch"] + 1, state["losses"], state["prune_reports"]
        if state.get("dense_start") is not None:       # the interrupted run's dense-start results
            r.results["dense_start"] = state["dense_start"]
        r.sched.load_state_dict(state["sched"])
        for g, lr in zip(r.opt.param_groups, r.sched.get_last_lr()):   # load_state_dict leaves
            g["lr"] = lr                                               # the optimizer at lr(step 0)
        _log(f"[train] resumed from {r.ckpt} after epoch {state['epoch'] + 1}/{cfg.epochs}")
    r.out.mkdir(parents=True, exist_ok=True)
    r.t_train, r.tokens_seen = time.time(), 0
    r.bar = cli.Progress("[train] step", total, "step", print if r.rank == 0 else (lambda *a: None),
                         start=r.start_epoch * r.steps_per_epoch)


def batches(r, epoch):
    """(global step, (ids, labels)) of one epoch; dropout seeded per epoch (--resume)."""
    torch.manual_seed(r.cfg.seed * 7919 + epoch)
    r.model.train()
    for i, batch in enumerate(data.batches(r.encoded, r.cfg.batch_size, r.cfg.seed, epoch, _pad_id(r.tok),
                                           drop_last=True)):
        yield epoch * r.steps_per_epoch + i, batch


def train_step(r, epoch, step, batch):
    """One optimizer step: grad_accum micro-batches, this rank's share of each."""
    cfg, (ids, labels), rank, world = r.cfg, batch, r.rank, r.world
    r.model.train()
    n_tok = int((labels[:, 1:] != data.IGNORE).sum().clamp(min=1))
    loss_sum, micro = 0.0, cfg.batch_size // cfg.grad_accum
    for a in range(cfg.grad_accum):
        sl = slice(a * micro + rank * (micro // world), a * micro + (rank + 1) * (micro // world))
        x, y = ids[sl].to(r.device), labels[sl].to(r.device)
        with autocast(r):
            loss = completion_loss(r.ddp, x, y, n_tok) * world
        sync = world > 1 and a < cfg.grad_accum - 1
        with r.ddp.no_sync() if sync else contextlib.nullcontext():
            loss.backward()
        loss_sum += loss.item() / world
    if world > 1:                                          # the mean loss, for logging only
        t = torch.tensor([loss_sum], device=r.device)
        dist.all_reduce(t)
        loss_sum = t.item()
    if not math.isfinite(loss_sum):                        # before the step spoils the adapters
        raise FloatingPointError(
            f"loss is {loss_sum} at epoch {epoch + 1} step {step + 1}: stopping; the last good "
            f"checkpoint {r.ckpt if r.ckpt.exists() else '(none yet)'} is left as it was")
    if cfg.clip > 0:
        torch.nn.utils.clip_grad_norm_(r.adapters, cfg.clip)
    r.opt.step()
    r.sched.step()
    r.opt.zero_grad(set_to_none=True)
    r.losses.append(round(loss_sum, 6))
    r.tokens_seen += ids.numel()
    tok_s, lr = r.tokens_seen / (time.time() - r.t_train), r.sched.get_last_lr()[0]
    r.bar.update(step + 1, f"epoch {epoch + 1}/{cfg.epochs} loss {loss_sum:.4f} lr {lr:.2e} tok/s {tok_s:.0f}",
                 keep=(step + 1) % cfg.log_every == 0)


def save_checkpoint(r, epoch):
    """After each epoch: adapters, optimizer, schedule, E7 scores and the run's record so far."""
    r.times["train_s"] = time.time() - r.t_train      # after the last epoch: training
    if r.rank == 0:
        files.save_checkpoint(r.ckpt, M.lora_modules(r.model), r.opt, r.score_state,
                              {"epoch": epoch, "losses": r.losses, "prune_reports": r.prune_reports,
                               "sched": r.sched.state_dict(), "dense_start": r.results.get("dense_start")})
    if r.world > 1:
        dist.barrier()


def finish(r, final):
    """Plain sparse model saved, evaluated, results.json written atomically."""
    model, results, times = r.model, r.results, r.times
    for _, m in M.lora_modules(model):                 # the saved model is plain and sparse
        m.set_lora(0, 0)
    results["peak_memory_gb"], results["peak_memory_kind"] = cli.peak_memory(r.device)
    results.update(losses=r.losses, prune_calls=r.prune_reports,
                   sparsity=E.sparsity_report(model, final["nm"] if final else None))
    if r.rank == 0:
        t0 = time.time()
        M.save_model(model, r.out / "model")
        times["save_s"] = time.time() - t0
        evaluate(r, "final")
    times["total_s"] = time.time() - r.t_run
    results["times"] = times
    if r.rank == 0:
        files.atomic_write_text(json.dumps(results, indent=2, default=str), r.out / "results.json")
        if r.ckpt.exists() and not r.cfg.keep_checkpoint:   # only --resume needs it
            r.ckpt.unlink()
        (r.out / UNFINISHED).unlink(missing_ok=True)
        _summary(results)
    return {**results, "model": model, "tokenizer": r.tok, "wall_s": times["total_s"],
            "peak_gb": results["peak_memory_gb"]}


CHECKPOINT = "checkpoint.safetensors"   # in the output folder until the run has finished (--resume)
UNFINISHED = "UNFINISHED"      # in the output folder of a run that started and has not finished


def resume_command(cfg):
    return f"python train.py --config {Path(cfg.out) / 'config.json'} --resume"


def _source(cfg, field):
    """Where a capped value came from, for the lines that say what it leaves out."""
    return f"{cfg.preset} preset" if PRESETS[cfg.preset].get(field) == getattr(cfg, field) else f"--{field}"


def _pad_id(tok):
    """The padding token of batches: the tokenizer's, else its EOS."""
    return tok.pad_id if tok.pad_id is not None else tok.eos_id


def _log(*a):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*a, flush=True)


def _versions():
    return {"python": platform.python_version(), **{m.__name__: m.__version__ for m in
                                                    (torch, numpy, safetensors, tokenizers)}}


def _summary(r):
    c, s = r["config"], r["sparsity"]["overall"]
    what = "dense LoRA" if c["method"] == "dense" else f"{c['method']} at {c['sparsity']:.0%}"
    lm = c["objective"] == "lm"
    on = c["train"] or c["train_text"] or (f"{c['domain']} text" if lm else c["domain"])
    print(f"\n=== efx: {what} on {on} ({r['train_examples']} {'windows' if lm else 'examples'}, "
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
