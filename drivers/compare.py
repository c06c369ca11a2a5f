"""compare.py: the evidence study (method §9): methods x sparsities x seeds, one test split.

Every method on the same data, budget and test items, over several seeds, with bootstrap
intervals and paired comparisons:

    python -m drivers.compare --domain med --test_frac 0.5 --test_tasks medmcqa --seeds 0 1 2 \\
        --sparsity 0.5 --curve 0.4 0.6 0.3 --seqlen 512 --ppl_max_windows 24 --out runs/study
    python -m drivers.compare --train task.jsonl --tasks test.jsonl --ppl_file corpus.txt --out runs/x

A grid of methods x sparsities x seeds (train.py's seed: data order, LoRA init, calibration
windows). Dense LoRA always runs: it is the 100 % of "% of dense", and wanda_lora /
sparsegpt_lora with baseline_order "after" (the paper: dense LoRA -> merge -> prune once)
prune that seed's saved dense model (models/dense-s<seed>/model) instead of training again,
as do the schedule's ablations foresight_after / efx_after (one ForeSight call there).
--curve adds sparsities for the figure, with --curve_methods and perplexity only.
A row whose train config equals another's (efx and efx_e16_e15 under the project's defaults)
reuses that run. Every run is evaluated here, the same way, on one test split for every seed
and method (written to data/), and cached as runs/<run>.json with a fingerprint of all that
defines it: a study run again, or interrupted, reuses what is done; a cached run made with
another configuration is refused unless --overwrite. Results in --out: results.json and
results.md (per method and sparsity: the seed mean and 95 % interval of perplexity, the
primary metric, and of every task metric; % of dense; the paired difference to the best
baseline) and, with matplotlib installed, ppl_vs_sparsity.png.
"""
import dataclasses
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import data
import eval as E
import model as M
import train
from support import cli, files

# Method -> the train.py config fields that select it. "efx" is the project's default (E16,
# then E15; study/budgets/ pin pbs false, so that there it is E16 alone, the default the
# committed runs were made with);
# "efx_published" the authors' method (E6, PBS E14 before the merge, method §7 note). The
# "_after" rows are ablations of the schedule: one ForeSight call on the dense LoRA model
# (E6 alone; E6 + E16), the baselines' "after" order, no pruning during training.
METHODS = {"dense_start": {"method": "dense"},       # the pretrained model, not fine-tuned
           "dense_lora": {"method": "dense"},
           "wanda_lora": {"method": "wanda"},
           "sparsegpt_lora": {"method": "sparsegpt"},
           "magnitude_lora": {"method": "magnitude"},     # a floor
           "wanda_before": {"method": "wanda", "baseline_order": "before"},       # prune, then LoRA
           "sparsegpt_before": {"method": "sparsegpt", "baseline_order": "before"},   # with the mask held
           "efx": {"method": "efx"},
           "efx_published": {"method": "efx", "pbs": True, "pbs_variant": "paper",
                             "reconstruct": "none", "compensate_final": False},
           "efx_none": {"method": "efx", "pbs": False, "reconstruct": "none"},
           "efx_e15": {"method": "efx", "pbs": True, "pbs_variant": "gram", "reconstruct": "none"},
           "efx_e16": {"method": "efx", "pbs": False, "reconstruct": "obs"},
           "foresight_after": {"method": "efx", "pbs": False, "reconstruct": "none"},
           "efx_after": {"method": "efx", "pbs": False, "reconstruct": "obs"},
           # variants of E16, each changing one thing:
           # train.ramp's cubic schedule (three calls: 0.70, 0.96, 1 of the target)
           "efx_e16_ramp": {"method": "efx", "pbs": False, "reconstruct": "obs", "sparsity_ramp": "cubic"},
           # then E15 through a fresh B (efx._compensate)
           "efx_e16_e15": {"method": "efx", "pbs": True, "pbs_variant": "gram", "reconstruct": "obs"},
           # no score average across calls (E7 with eta = 1: each call's own score)
           "efx_e16_eta1": {"method": "efx", "pbs": False, "reconstruct": "obs", "mask_lr": 1.0},
           # the paper's schedule: calls at epoch boundaries only (with two epochs: one, then the final)
           "efx_e16_epochs": {"method": "efx", "pbs": False, "reconstruct": "obs", "prune_every_steps": 0},
           # more calls: one every 16 steps (topics' 96 steps: five, then the final; med's 32: one, then the final)
           "efx_e16_every16": {"method": "efx", "pbs": False, "reconstruct": "obs", "prune_every_steps": 16},
           # calibration on the text the run trains on, not the general corpus
           "efx_e16_calib_train": {"method": "efx", "pbs": False, "reconstruct": "obs", "calib": "train"}}
VARIANTS = ("efx_e16_ramp", "efx_e16_e15", "efx_e16_eta1", "efx_e16_epochs", "efx_e16_every16",
            "efx_e16_calib_train")
# "best baseline": the lowest mean perplexity of these at a sparsity (magnitude is a floor)
BASELINES = ("wanda_lora", "sparsegpt_lora", "wanda_before", "sparsegpt_before")
# rows that prune the dense LoRA model of their seed instead of training
AFTER = ("wanda_lora", "sparsegpt_lora", "magnitude_lora", "foresight_after", "efx_after")
EFX_ROWS = ("efx_published", "efx_e16", "efx") + VARIANTS     # set against every baseline (per_baseline)
# What one part of the method changes: (row, the row without that part, the part), paired.
CONTRASTS = [("dense_lora", "dense_start", "fine-tuning: dense LoRA against the dense start"),
             ("efx_published", "efx_none", "PBS as published (E14, before the masked merge)"),
             ("efx_e15", "efx_none", "Gram PBS (E15)"),
             ("efx_e16", "efx_none", "OBS reconstruction (E16)"),
             ("efx_none", "foresight_after", "pruning during training (E7 average), no compensation"),
             ("efx", "efx_after", "pruning during training, with E16"),
             ("efx_e16_ramp", "efx_e16", "the cubic sparsity ramp across calls, with E16"),
             ("efx_e16_e15", "efx_e16", "Gram PBS (E15) after E16"),
             ("efx_e16_eta1", "efx_e16", "no score average across calls (E7, eta = 1), with E16"),
             ("efx_e16_epochs", "efx_e16", "calls at epoch boundaries only (the paper's schedule), with E16"),
             ("efx_e16_every16", "efx_e16", "a call every 16 steps, with E16"),
             ("efx_e16_calib_train", "efx_e16", "calibration on the training text, not the general corpus, with E16"),
             ("foresight_after", "wanda_lora", "ForeSight's mask (E6) against Wanda's, one call after training"),
             ("efx_after", "sparsegpt_lora", "ForeSight's mask against SparseGPT's, both with the OBS update")]


# ----------------------------------------------------------------------------- statistics
# A metric is a statistic of items: test items (accuracy, macro-F1, ROUGE) or perplexity
# windows. Each seed has its own items; the test items and windows are the same for every
# method, so two methods can be compared on the same resample (paired).

def mean(values):                           # accuracy (items: 1 right, 0 wrong), ROUGE
    return float(np.mean(values))


def macro_f1(pairs):                        # items: (prediction, label); None = unparsable
    return E.macro_f1(pairs[:, 0].tolist(), pairs[:, 1].tolist())


def perplexity(seqlen):
    """The statistic of window NLLs: method §9's exp(total NLL / predicted tokens)."""
    return lambda nll: math.exp(np.sum(nll) / (len(nll) * (seqlen - 1)))


def draws(sizes, n_boot, seed):
    """Hierarchical resamples: seeds with replacement, then each drawn seed's items with
    replacement; one draw is [(seed index, item indices)]."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield [(s, rng.integers(0, sizes[s], sizes[s])) for s in rng.integers(0, len(sizes), len(sizes))]


def bootstrap(per_seed_values, stat, n_boot=2000, seed=0):
    """The seed mean of stat(a seed's items) -> (estimate, 2.5 %, 97.5 % percentile of its
    n_boot hierarchical resamples). per_seed_values: one sequence of items per seed."""
    v = [np.asarray(x) for x in per_seed_values]
    boots = [np.mean([stat(v[s][i]) for s, i in d]) for d in draws([len(x) for x in v], n_boot, seed)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(np.mean([stat(x) for x in v])), float(lo), float(hi)


def paired(a_per_seed, b_per_seed, stat, n_boot=2000, seed=0):
    """Seed mean of stat(a) - stat(b), both arms on the same resamples (same seeds, same items)
    -> {"diff", "lo", "hi" (2.5 / 97.5 %), "flip": share of resamples whose difference does not
    have the sign of diff (a zero difference against a nonzero diff counts)}."""
    a, b = [np.asarray(x) for x in a_per_seed], [np.asarray(x) for x in b_per_seed]
    if [len(x) for x in a] != [len(x) for x in b]:
        raise ValueError(f"compare.paired: items per seed differ: {[len(x) for x in a]} vs {[len(x) for x in b]}")
    boots = np.array([np.mean([stat(a[s][i]) - stat(b[s][i]) for s, i in d])
                      for d in draws([len(x) for x in a], n_boot, seed)])
    diff = float(np.mean([stat(x) - stat(y) for x, y in zip(a, b)]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "flip": float(np.mean(np.sign(boots) != np.sign(diff)))}


def metric_items(run, key):
    """(items, stat) of metric `key` ("ppl" or "<task>/<metric>") in one cached run."""
    if key == "ppl":
        return run["window_nll"], perplexity(run["ppl"]["seqlen"])
    task, metric = key.rsplit("/", 1)
    items = [r for r in run["items"] if r["task"] == task]
    if metric == "macro_f1":
        return np.array([(r["prediction"], r["label"]) for r in items], dtype=object), macro_f1
    return [float(r["correct"]) if metric == "accuracy" else r["rouge"][metric] for r in items], mean


# ----------------------------------------------------------------------------- the grid
@dataclasses.dataclass
class CompareConfig:
    """One study; every field is a flag (--seeds 0 1 2) and a --config key."""
    domain: str = "med"          # built-in domain (med | legal | topics) for training and test data, unless --train
    objective: str = "task"      # task: train on the tasks' completions | lm: on every token of the domain's training half
    train: str = ""              # JSONL task file to fine-tune on instead of the domain's split
    tasks: list = dataclasses.field(default_factory=list)   # JSONL task files to test on too (name = file stem)
    test_tasks: list = dataclasses.field(default_factory=list)   # keep only these test tasks by name ([] = all)
    ppl_file: str = ""           # text for the domain perplexity ("" = the domain's; none with --train)
    test_frac: float = 0.2       # share of each built-in task held out for test (one split for every run)
    sparsity: list = dataclasses.field(default_factory=lambda: [0.5])   # pruned fractions
    methods: list = dataclasses.field(default_factory=lambda: list(METHODS))  # rows (METHODS); dense_lora always runs
    curve: list[float] = dataclasses.field(default_factory=list)   # more sparsities for the figure: perplexity only
    curve_methods: list = dataclasses.field(
        default_factory=lambda: ["wanda_lora", "sparsegpt_lora", "efx"])   # the curve's rows
    seeds: list = dataclasses.field(default_factory=lambda: [0, 1, 2])   # train.py seeds, one run each
    preset: str = "study"        # train.py preset every run starts from (train.PRESETS)
    train_config: str = ""       # JSON of train.py fields over the preset: the budget shared by every run
    model: str = ""              # HF-layout model directory ("" = the built-in SmolLM2)
    out: str = "runs/compare"    # folder: runs/ (cache), models/ (dense), results.json, results.md
    overwrite: bool = False      # replace cached runs made with another configuration
    keep_models: bool = False    # keep every run's model in work/ (~0.5 GB each for SmolLM2), not only dense
    seqlen: int = 512            # perplexity window (tokens)
    max_examples: int = 0        # first N test examples per task (0 = all)
    ppl_max_windows: int = 0     # first N perplexity windows (0 = all)
    n_boot: int = 2000           # bootstrap resamples per interval
    boot_seed: int = 0           # seed of the resampling

    def __post_init__(self):
        if not self.train and self.domain not in data.DOMAINS:
            raise ValueError(f"domain={self.domain!r}, expected one of {data.DOMAINS} or --train FILE")
        if self.objective not in ("task", "lm") or (self.objective == "lm" and self.train):
            raise ValueError(f"objective={self.objective!r}: expected task, or lm on a built-in domain's text")
        if self.train and not (self.tasks or self.ppl_file):
            raise ValueError("--train needs something to test on: --tasks FILE.jsonl and / or --ppl_file")
        if not all(0 <= s < 1 for s in self.sparsity + self.curve) or set(self.sparsity) & set(self.curve):
            raise ValueError("sparsity and curve values must be in [0, 1) and distinct, "
                             f"got {self.sparsity}, {self.curve}")
        for field in ("methods", "curve_methods"):
            if set(getattr(self, field)) - set(METHODS):
                raise ValueError(f"{field}: unknown {sorted(set(getattr(self, field)) - set(METHODS))}, "
                                 f"expected some of {list(METHODS)}")
        if self.preset not in train.PRESETS:
            raise ValueError(f"preset={self.preset!r}, expected one of {sorted(train.PRESETS)}")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds) or not 0 < self.test_frac < 1:
            raise ValueError(f"need distinct seeds and test_frac in (0, 1), got {self.seeds}, {self.test_frac}")
        if self.seqlen < 2 or min(self.max_examples, self.ppl_max_windows) < 0 or self.n_boot < 1:
            raise ValueError(f"need seqlen >= 2, max_examples and ppl_max_windows >= 0, n_boot >= 1; got "
                             f"{self.seqlen}, {self.max_examples}, {self.ppl_max_windows}, {self.n_boot}")
        for field, p in [(f, getattr(self, f)) for f in ("train_config", "model", "train", "ppl_file")] + \
                [("tasks", t) for t in self.tasks]:
            if p and not Path(p).exists():
                raise FileNotFoundError(f"{field}: path {p!r} does not exist")


# train.py fields compare.py sets per run, and those that do not change a run's numbers.
SET_HERE = ("method", "sparsity", "seed", "out", "overwrite", "resume", "eval", "domain", "train", "test", "ppl_file",
            "objective", "train_text")
NOT_RUN = ("out", "overwrite", "resume", "log_every", "eval", "eval_max", "eval_seqlen", "eval_ppl_windows",
           "test", "ppl_file")


def budget(c):
    """The train.py fields every run shares: --train_config over the preset's values."""
    tc = {"preset": c.preset, **(json.loads(Path(c.train_config).read_text()) if c.train_config else {})}
    if set(tc) & set(SET_HERE):
        raise ValueError(f"train_config {c.train_config}: {sorted(set(tc) & set(SET_HERE))} are set by "
                         "compare.py per run (--methods, --sparsity, --seeds, --domain / --train, --out)")
    if c.model:                         # a flag wins over a file (cli.py's precedence)
        tc["model"] = c.model
    return {**train.PRESETS.get(tc["preset"], {}), **tc}   # an unknown preset: TrainConfig says so


def study_data(c):
    """(training examples or text, {task: test examples}, perplexity text, corpus name): one
    split, the same for every seed and method (the built-in domains split with seed 0)."""
    dom = {} if c.train else data.default_domain(c.domain, seed=0, test_frac=c.test_frac)
    examples = data.load_jsonl_tasks(c.train) if c.train else dom["train_text" if c.objective == "lm" else "train"]
    tests = {**dom.get("test", {}), **{Path(f).stem: data.load_jsonl_tasks(f) for f in c.tasks}}
    if set(c.test_tasks) - set(tests):
        raise ValueError(f"test_tasks: unknown {sorted(set(c.test_tasks) - set(tests))}, "
                         f"expected some of {list(tests)}")
    tests = {k: v[:c.max_examples or None] for k, v in tests.items() if k in c.test_tasks or not c.test_tasks}
    ppl = Path(c.ppl_file).read_text() if c.ppl_file else dom.get("ppl_text")
    return examples, tests, ppl, c.ppl_file or f"{c.domain}:ppl_text"


def _digest(obj):
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat(d, prefix=""):
    return {f"{prefix}{k}": v for key, x in d.items()
            for k, v in (_flat(x, f"{key}.").items() if isinstance(x, dict) else [(key, x)])}


def plan(c, base, split, tasks, evaluation):
    """The runs, seed by seed, dense first (the baselines of its seed prune its model), then
    each curve sparsity's runs (perplexity only) seed by seed; each with its train.TrainConfig and the
    identity its fingerprint hashes: the config (seed, sparsity and the method's fields
    included; not where it writes), the training data, the calibration text, the evaluation
    settings, test items and perplexity text."""
    lm = c.objective == "lm"
    out, runs, train_file = Path(c.out), [], split / ("train.txt" if lm else "train.jsonl")
    fixed = {"overwrite": True, "eval": False, "objective": c.objective,   # evaluation: here, alike
             "train_text" if lm else "train": str(train_file),
             "test": [str(split / "test" / f"{t}.jsonl") for t in tasks]}
    train_digest = _digest(train_file.read_text())
    calib_digests = {"": "general_corpus", "train": "train"}   # "train": the training data above

    def sources(calib):                 # a run's --calib; each text file is read once
        if calib not in calib_digests:
            calib_digests[calib] = _digest(Path(calib).read_text())
        return {"train": train_digest, "calib": calib_digests[calib]}
    dense = [(m, 0.0, True) for m in ("dense_lora", "dense_start") if m == "dense_lora" or m in c.methods]
    grid = dense + [(m, s, True) for s in c.sparsity for m in c.methods if not m.startswith("dense_")]
    curve = [[(m, s, False) for m in c.curve_methods if m != "dense_lora"] for s in c.curve]
    for seed, (method, s, full) in [(seed, g) for part in [grid] + curve for seed in c.seeds for g in part]:
        name = f"{method}-s{seed}" if method.startswith("dense_") else f"{method}-{100 * s:g}-s{seed}"
        where = out / "models" / f"dense-s{seed}" if method == "dense_lora" else out / "work" / name
        cfg = cli.make(train.TrainConfig, {**base, **METHODS[method], **fixed, "sparsity": s, "seed": seed,
                                           "out": str(where)})
        reuse = method in AFTER and (cfg.baseline_order == "after" or method not in BASELINES)
        ident = {"run": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_RUN},
                 "data": sources(cfg.calib), "row": method, "reuse_dense": reuse,
                 "eval": evaluation if full else {**evaluation, "tests": "none"}}
        if method == "dense_start":                     # not trained: not dense_lora's twin
            ident["untrained"] = True
        ident["run"]["train_text" if lm else "train"] = "data.train"   # the file's content, not its path
        runs.append(dict(name=name, method=method, sparsity=s, seed=seed, cfg=cfg, reuse=reuse, full=full,
                         identity=ident, fingerprint=_digest(ident), path=out / "runs" / f"{name}.json",
                         dense=out / "models" / f"dense-s{seed}" / "model",
                         twin=_digest({k: v for k, v in ident.items() if k != "row"})))
    return runs


def cached_runs(runs, overwrite, log):
    """{name: cached record} of the runs whose fingerprint matches; another fingerprint is an
    error naming the file and the fields that differ, unless overwrite (then it runs again)."""
    done = {}
    for r in (r for r in runs if r["path"].exists()):
        old = json.loads(r["path"].read_text())
        if old.get("fingerprint") == r["fingerprint"]:
            done[r["name"]] = old
        elif not overwrite:
            a, b = _flat(old.get("identity", {})), _flat(r["identity"])
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise ValueError(f"{r['path']}: a cached run made with another configuration (differs in "
                             f"{', '.join(diff[:6]) or 'fingerprint'}): pass --overwrite to replace it, "
                             "or another --out")
    for r in (r for r in runs if r["reuse"] and r["name"] not in done):
        dense = f"dense_lora-s{r['seed']}"          # a baseline to run prunes this model
        if dense in done and not (r["dense"] / "model.safetensors").exists():
            log(f"[compare] {dense}: its model is missing ({r['dense']}): training it again")
            del done[dense]
    return done


def prune_dense(cfg, dense_dir):
    """wanda / sparsegpt with baseline_order "after" from the saved dense LoRA model of the same
    seed: train.run's final call (train.setup builds the same PruneOptions and the calibration
    windows of cfg.seed; prune_call seeds the call), without training again. method efx: one
    ForeSight call there instead, with the run's compensation (the "_after" rows)."""
    r = train.setup(cfg)
    r.model = M.load_model(dense_dir, r.device, next(r.model.parameters()).dtype)
    efx = cfg.method == "efx"
    report = train.prune_call(r, "foresight" if efx else cfg.method, tag="final", compensate=efx)
    report.pop("maps")
    return r.model, r.tok, {"prune_calls": [report], "config": dataclasses.asdict(cfg)}


def execute(r, tests, ppl_text, corpus, c, log):
    """Train (or prune the dense model), evaluate, and return the record cached for the run."""
    t0 = time.time()
    if r["method"] == "dense_start":        # the pretrained model as it is: what fine-tuning moves
        rs = train.setup(r["cfg"])
        model, tok, trained = rs.model, rs.tok, {"config": dataclasses.asdict(r["cfg"])}
    elif r["reuse"]:
        model, tok, trained = prune_dense(r["cfg"], r["dense"])
    else:
        trained = train.run(r["cfg"])
        model, tok = trained.pop("model"), trained.pop("tokenizer")
    t_eval = time.time()
    e = E.evaluate(model, tok, tests if r["full"] else {}, ppl_text, seqlen=c.seqlen,
                   ppl_max_windows=c.ppl_max_windows or None, ppl_corpus=corpus, log=log, name=r["name"])
    ppl = dict(e["ppl"] or {})
    keep = ("task", "index", "prediction", "label", "correct", "rouge")
    rec = {k: r[k] for k in ("name", "method", "sparsity", "seed", "fingerprint", "identity")}
    rec.update(metrics=e["metrics"], window_nll=ppl.pop("window_nll", []), ppl=ppl,
               tasks=e["tasks"], items=[{k: x[k] for k in keep if k in x} for x in e["predictions"]],
               zeros=E.sparsity_report(model)["overall"]["sparsity"], eval_s=time.time() - t_eval,
               wall_s=time.time() - t0, config=dataclasses.asdict(r["cfg"]), train=trained)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if r["method"] != "dense_lora" and not c.keep_models:   # evaluated and recorded: free ~0.5 GB
        shutil.rmtree(r["cfg"].out, ignore_errors=True)
    return rec


def study(c, log=print):
    """Run (or reuse) every run of the grid, then aggregate; returns {"rows", "table", ...}."""
    out, base = Path(c.out), budget(c)
    examples, tests, ppl_text, corpus = study_data(c)
    if not tests and not ppl_text:
        raise ValueError("nothing to evaluate: no test tasks and no perplexity text")
    split = out / "data"                                      # the split, as task files
    (split / "test").mkdir(parents=True, exist_ok=True)
    if c.objective == "lm":
        (split / "train.txt").write_text(examples)
    else:
        data.save_jsonl_tasks(examples, split / "train.jsonl")
    for task, exs in tests.items():
        data.save_jsonl_tasks(exs, split / "test" / f"{task}.jsonl")
    evaluation = {"seqlen": c.seqlen, "ppl_max_windows": c.ppl_max_windows, "corpus": corpus,
                  "tests": _digest(tests), "ppl_text": _digest(ppl_text or "")}
    runs = plan(c, base, split, list(tests), evaluation)
    done = cached_runs(runs, c.overwrite, log)
    for name, rec in done.items():
        log(f"[compare] {name}: cached ({rec['wall_s']:.0f}s when run)")
    bar, n = cli.Progress("[compare] run", len(runs), "run", log, start=len(done)), len(done)
    for r in (r for r in runs if r["name"] not in done):
        twin = next((x["name"] for x in runs if x["twin"] == r["twin"] and x["name"] in done), None)
        if twin:        # the same train config under another row name (efx and efx_e16_e15 by default)
            rec = {**done[twin], **{k: r[k] for k in ("name", "method", "fingerprint", "identity")}}
            log(f"[compare] {r['name']}: the same run as {twin} (equal train config): its record reused")
        else:
            how = f"prune {r['dense']}" if r["reuse"] else f"train.run ({r['cfg'].method})"
            log(f"[compare] {r['name']}: started ({how})")
            rec = execute(r, tests, ppl_text, corpus, c, log)
        done[r["name"]] = rec
        r["path"].parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(json.dumps(rec, default=str), r["path"])
        n += 1
        bar.update(n, f"{r['name']} finished in {rec['wall_s']:.0f}s", keep=True)
    log(f"[compare] statistics: {c.n_boot} hierarchical bootstrap resamples per interval")
    rows, best, contrasts = aggregate(c, runs, done)
    against = per_baseline(c, rows, done)
    table = markdown(rows, best, c) + contrast_table(contrasts) + per_baseline_table(against)
    if base.get("nm"):     # the budget's N:M pattern overrides --sparsity in every pruned row
        table = (f"Every pruned row is {base['nm']} semi-structured (the budget's nm); the sparsity column "
                 "is --sparsity, the zeros column what the pattern gave.\n\n") + table
    results = {"config": dataclasses.asdict(c), "budget": base, "evaluation": evaluation,
               "test_items": {k: len(v) for k, v in tests.items()}, "train_examples": len(examples) if c.objective == "task" else None,
               "train_text_chars": len(examples) if c.objective == "lm" else None,
               "best_baseline": best, "rows": rows, "contrasts": contrasts, "per_baseline": against,
               "runs": [f"runs/{r['path'].name}" for r in runs]}
    E.write(out, results, table)
    figure(rows, out / "ppl_vs_sparsity.png", log)
    return {**results, "table": table}


# ----------------------------------------------------------------------------- aggregation
def aggregate(c, runs, done):
    """One row per (method, sparsity): per metric the seed mean and its 95 % interval, % of
    dense (method §9, from the seed means), and against the best baseline at that sparsity the
    paired difference of ppl and of every accuracy; the CONTRASTS whose two rows ran.
    Returns (rows, {sparsity: best}, contrasts)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["method"], r["sparsity"]), []).append(r)
    boot = dict(n_boot=c.n_boot, seed=c.boot_seed)
    rows = []
    for (method, s), group in groups.items():
        recs = [done[r["name"]] for r in group]
        row = {"name": f"{method} @{s:.0%}", "method": method, "sparsity": s, "seeds": [x["seed"] for x in recs],
               "metrics": {}, "per_seed": {}, "zeros": 100 * np.mean([x["zeros"] for x in recs]),
               "wall_s": float(np.mean([x["wall_s"] for x in recs])),
               "time_x_dense": float(np.mean([time_ratio(r, done) for r in group]))}
        for key in recs[0]["metrics"]:
            items, stat = zip(*(metric_items(x, key) for x in recs))
            row["metrics"][key] = dict(zip(("mean", "lo", "hi"), bootstrap(items, stat[0], **boot)))
            row["per_seed"][key] = [x["metrics"][key] for x in recs]
        row["runs"] = [x["name"] for x in recs]
        rows.append(row)
    rows.sort(key=lambda r: (r["sparsity"] in c.curve, r["sparsity"]))     # stable: methods keep their order
    means = lambda row: {k: m["mean"] for k, m in row["metrics"].items()}
    dense = next(r for r in rows if r["method"] == "dense_lora")
    best = {}
    for row in rows:                        # a curve row (perplexity only) has no % of dense
        row["rel_detail"] = E.relative_performance(means(row), means(dense))
        row["rel"] = row["rel_detail"]["percent_of_dense"] if row["metrics"].keys() == dense["metrics"].keys() else None
    for s in c.sparsity + c.curve:
        bl = [r for r in rows if r["sparsity"] == s and r["method"] in BASELINES and "ppl" in r["metrics"]]
        if not bl:
            continue
        b = min(bl, key=lambda r: r["metrics"]["ppl"]["mean"])
        best[s] = b["method"]
        for row in (r for r in rows if r["sparsity"] == s and r is not b):
            row["vs_best"] = versus(row, b, done, boot)
    at = {(r["method"], r["sparsity"]): r for r in rows}
    contrasts = [{"row": a, "without": b, "part": part, "sparsity": s, "diff": versus(at[a, s], at[b, s], done, boot)}
                 for s in [0.0] + c.sparsity + c.curve for a, b, part in CONTRASTS if (a, s) in at and (b, s) in at]
    return rows, best, contrasts


def time_ratio(r, done):
    """What the run's model cost against its seed's dense LoRA run: seconds to make the model
    (training with its pruning calls, or loading and one prune call; evaluation not counted),
    plus the dense LoRA training for the rows that prune that model, over the dense training."""
    fit = lambda rec: rec["wall_s"] - rec["eval_s"]
    dense = fit(done[f"dense_lora-s{r['seed']}"])
    return (fit(done[r["name"]]) + (dense if r["reuse"] else 0.0)) / dense


def per_baseline(c, rows, done):
    """EfficientXpert's rows (EFX_ROWS) against every baseline at each sparsity: the paired
    differences and, per seed, the sign of the difference (the seed's own metric values)."""
    at, boot, out = {(r["method"], r["sparsity"]): r for r in rows}, dict(n_boot=c.n_boot, seed=c.boot_seed), []
    for s in c.sparsity:
        for a in (m for m in EFX_ROWS if (m, s) in at):
            for b in (m for m in BASELINES + ("magnitude_lora",) if (m, s) in at):
                ra, rb = at[a, s], at[b, s]
                d = versus(ra, rb, done, boot)
                signs = {k: "".join("+" if x > y else "-" if x < y else "0"
                                    for x, y in zip(ra["per_seed"][k], rb["per_seed"][k])) for k in d}
                out.append({"row": a, "baseline": b, "sparsity": s, "diff": d, "seed_signs": signs})
    return out


def per_baseline_table(items):
    """One line per (EfficientXpert row, baseline): Δ [interval] flip, and the per-seed signs."""
    if not items:
        return ""
    note = ("Per-seed signs: + where the row's seed value is higher (for ppl: worse), one character "
            "per seed in seed order. A difference is beyond the noise when its interval excludes 0.")
    return _diff_table(items, "row − baseline", lambda x: f"{x['row']} − {x['baseline']}", signs=True) \
        + "\n" + note + "\n"


def versus(row, other, done, boot):
    """Paired differences row - other of ppl and of every accuracy (the same seeds and items)."""
    return {k: paired([metric_items(done[n], k)[0] for n in row["runs"]],
                      [metric_items(done[n], k)[0] for n in other["runs"]],
                      metric_items(done[row["runs"][0]], k)[1], **boot)
            for k in row["metrics"] if (k == "ppl" or k.endswith("/accuracy")) and k in other["metrics"]}


def _ci(m, f):
    return f"{m['mean']:{f}} [{m['lo']:{f}}, {m['hi']:{f}}]"


def _delta(d, k):
    """One cell of a paired difference of metric k: estimate [interval] and flip share."""
    return f"{_ci({'mean': d[k]['diff'], **d[k]}, '+.2f' if k == 'ppl' else '+.3f')} flip {d[k]['flip']:.2f}"


def markdown(rows, best, c):
    """The table: seed mean [95 % interval] per metric, % of dense, paired differences."""
    keys = list(rows[0]["metrics"])
    keys = (["ppl"] if "ppl" in keys else []) + [k for k in keys if k != "ppl"]
    diffs = [k for k in keys if k == "ppl" or k.endswith("/accuracy")]
    head = ["method", "sparsity"] + keys + ["% of dense", "zeros %"] + [f"Δ {k} vs best baseline" for k in diffs]
    head += ["wall s", "time × dense LoRA"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vs = r.get("vs_best", {})
        cells = [r["method"], f"{r['sparsity']:.0%}"] + [_ci(r["metrics"][k], ".2f" if k == "ppl" else ".3f")
                                                         if k in r["metrics"] else "-" for k in keys]
        cells += ["-" if r["rel"] is None else f"{r['rel']:.1f}", f"{r['zeros']:.1f}"]
        cells += [_delta(vs, k) if k in vs else "-" for k in diffs]
        lines.append("| " + " | ".join(cells + [f"{r['wall_s']:.0f}", f"{r['time_x_dense']:.2f}"]) + " |")
    seeds = ", ".join(map(str, c.seeds))
    notes = [f"Seed mean over seeds {seeds}; [2.5 %, 97.5 %] of {c.n_boot} hierarchical bootstrap resamples "
             "(seeds with replacement, then test items / perplexity windows within each seed).",
             "% of dense: method §9, the mean over metrics of method / dense LoRA (perplexity inverted), "
             "from the seed means" + (f"; the curve's rows ({', '.join(f'{s:.0%}' for s in c.curve)}) measure perplexity only."
                        if c.curve else "."),
             "Δ: method − best baseline at the same sparsity (" + ", ".join(f"{s:.0%}: {m}" for s, m in best.items())
             + "), on the same resamples (paired); flip: share of resamples whose Δ lacks the sign of the estimate.",
             "wall s: per run, evaluation included; the rows that prune the dense LoRA model of their seed "
             "do not count its training.",
             "time × dense LoRA: the seconds that made the row's model (training and its pruning calls; for the "
             "rows that prune the dense LoRA model, that model's training plus the call), over the same seed's "
             "dense LoRA training; evaluation not counted; seed mean."]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def contrast_table(contrasts):
    """What each part changes: the paired differences of CONTRASTS, one line each."""
    if not contrasts:
        return ""
    return _diff_table(contrasts, "part (row − row without it)",
                       lambda x: x["part"] + f" ({x['row']} − {x['without']})")


def _diff_table(items, head, name, signs=False):
    """Markdown, one line per item: name(item), sparsity, and per metric (ppl first) the paired
    Δ [interval] flip, followed by the per-seed signs when `signs`."""
    keys = sorted(dict.fromkeys(k for x in items for k in x["diff"]), key=lambda k: k != "ppl")
    more = " (per-seed signs)" if signs else ""
    lines = ["", f"| {head} | sparsity | " + " | ".join(f"Δ {k}{more}" for k in keys) + " |",
             "|" + "---|" * (len(keys) + 2)]
    for x in items:
        cells = [name(x), f"{x['sparsity']:.0%}"]
        cells += [_delta(x["diff"], k) + (f" ({x['seed_signs'][k]})" if signs else "") if k in x["diff"] else "-"
                  for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(rows, path, log=print):
    """Domain perplexity per method, 95 % interval bars, dense LoRA as a band. At one sparsity
    a row per method, best at the top; at several, perplexity against sparsity."""
    try:
        import matplotlib                   # optional: only this figure needs it
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        log(f"[compare] matplotlib is not installed: no {path.name} (pip install matplotlib)")
        return None
    if not all("ppl" in r["metrics"] for r in rows):
        return None
    dense = next(r for r in rows if r["method"] == "dense_lora")["metrics"]["ppl"]
    rest = [r for r in rows if r["method"] != "dense_lora"]
    bar = lambda ps: [[p["mean"] - p["lo"] for p in ps], [p["hi"] - p["mean"] for p in ps]]
    if len({r["sparsity"] for r in rest if r["sparsity"] > 0}) <= 1:
        rest.sort(key=lambda r: -r["metrics"]["ppl"]["mean"])
        ps = [r["metrics"]["ppl"] for r in rest]
        fig, ax = plt.subplots(figsize=(7, 1.5 + 0.3 * len(rest)))
        ax.axvspan(dense["lo"], dense["hi"], color="0.9")
        ax.axvline(dense["mean"], color="0.4", ls="--", label="dense_lora")
        ax.errorbar([p["mean"] for p in ps], range(len(rest)), xerr=bar(ps), fmt="o", capsize=3)
        ax.set_yticks(range(len(rest)), [f"{r['method']} ({100 * r['sparsity']:g} %)" for r in rest])
        ax.set_xscale("log")
        axis = ax.xaxis
        ax.set_xlabel("domain perplexity (log scale; seed mean, 95 % interval)")
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.axhspan(dense["lo"], dense["hi"], color="0.9")
        ax.axhline(dense["mean"], color="0.4", ls="--", label="dense_lora")
        methods = list(dict.fromkeys(r["method"] for r in rest))
        for j, m in enumerate(methods):     # a small offset per method keeps the bars apart
            pts = sorted((r["sparsity"], r["metrics"]["ppl"]) for r in rest if r["method"] == m)
            x = [100 * s + 0.4 * (j - (len(methods) - 1) / 2) for s, _ in pts]
            ax.errorbar(x, [p["mean"] for _, p in pts], yerr=bar([p for _, p in pts]), capsize=3,
                        color=f"C{j % 10}", marker="os^Dv"[j // 10 % 5], label=m)   # 10 colours, then a new marker
        ax.set_xlabel("sparsity (%)")
        ax.set_yscale("log")
        axis = ax.yaxis
        ax.set_ylabel("domain perplexity (log scale; seed mean, 95 % interval)")
    axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))     # 10 20 50 100 ..., in plain numbers
    axis.set_major_formatter(ticker.ScalarFormatter())
    axis.set_minor_formatter(ticker.NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def main(argv=None):
    def go():
        res = study(cli.parse(CompareConfig, argv, __doc__.split("\n\n")[0]))
        print(res["table"])
        return res
    return cli.main("compare.py", go)


if __name__ == "__main__":
    main()
