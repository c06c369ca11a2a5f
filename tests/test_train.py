"""Tests for train.py (method §8): the pruning schedule (compensation, sparsity ramp, probe
losses), exact final sparsity, the completion-only loss, bit-identical resume, 2-process gloo DDP, and the CLI.

Every run is a real `train.run` on a tiny random checkpoint (conftest: 2 layers, hidden 64,
vocab 128, word-level tokenizer), 8 JSONL examples of the method §10 schema (batch 4:
2 optimizer steps per epoch), a calibration text file of tiny windows (2 x 16 tokens), eval
off, on CPU. The DDP test launches `torchrun --nproc_per_node=2 train.py`-style workers in a
subprocess (gloo). Run: python -m pytest -q tests/test_train.py
"""
import json
import math
import os
import random
import re
import socket
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data  # noqa: E402
import efx  # noqa: E402
from support import files  # noqa: E402
import model as M  # noqa: E402
import train  # noqa: E402
from conftest import words  # noqa: E402

STEPS_PER_EPOCH = 2           # 8 examples / batch 4
DDP_ATOL = 1e-5               # float32: 2-rank all-reduce vs one batch of 4 (summation order)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def base(tmp_path, tiny_ckpt):
    """Factory: base(**overrides) -> config dict for train.run on the tiny checkpoint."""
    ckpt, _ = tiny_ckpt
    rng = random.Random(0)
    train_file = tmp_path / "train.jsonl"
    rows = [{"prompt": words(rng, 6), "completion": words(rng, 4)} for _ in range(8)]
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calib = tmp_path / "calib.txt"
    calib.write_text(words(rng, 400))
    common = dict(model=str(ckpt), train=str(train_file), calib=str(calib), epochs=2, batch_size=4,
                  max_train=0, nsamples=2, seqlen=16, max_len=32, eval=False, device="cpu",
                  log_every=100, sparsity=0.5, prune_every_steps=0)

    def make(name="out", **kw):
        return {**common, "out": str(tmp_path / name), **kw}
    return make


def record_calls(monkeypatch):
    """Count optimizer steps (one completion_loss call in training mode each: grad_accum 1, one
    rank; the probe losses run in eval mode) and record every efx.prune call with the number of
    steps done before it: (steps, method, compensated, averaged, sparsity)."""
    log = {"steps": 0, "calls": []}
    real_loss, real_prune = train.completion_loss, efx.prune

    def loss(model, *a, **kw):
        log["steps"] += model.training
        return real_loss(model, *a, **kw)

    def prune(model, calib_ids, options, **kw):
        o = options
        log["calls"].append((log["steps"], o.method, o.pbs or o.reconstruct != "none",
                             kw.get("score_state") is not None,
                             round(o.sparsity, 6)))
        return real_prune(model, calib_ids, options=o, **kw)
    monkeypatch.setattr(train, "completion_loss", loss)
    monkeypatch.setattr(efx, "prune", prune)
    return log


def saved_maps(out):
    """{name: weight} of the seven maps in the saved final model (plain, adapters merged)."""
    model = M.load_model(Path(out) / "model")
    assert all(m.r == 0 for _, m in M.lora_modules(model)), "saved model still has adapters"
    return {name: m.weight for name, m in M.lora_modules(model)}


# ----------------------------------------------------------------------------- schedule

@pytest.mark.t6
@pytest.mark.parametrize("epochs, spe, every, every_steps, expected", [
    (3, 4, 1, 0, [4, 8]),          # before epochs 1 and 2; the final call is separate
    (4, 4, 2, 0, [8]),             # only e = 2 (e = 4 would be past the end)
    (5, 3, 2, 0, [6, 12]),
    (1, 4, 1, 0, []),              # one epoch: only the final call
    (2, 4, 1, 3, [3, 6]),          # prune_every_steps replaces epochs
    (2, 4, 1, 4, [4]),             # no intermediate call at step 8 = the end
    (2, 4, 3, 1, [1, 2, 3, 4, 5, 6, 7]),
])
def test_s8_prune_points(epochs, spe, every, every_steps, expected):
    assert train.prune_points(epochs, spe, every, every_steps) == expected


FINAL = ("foresight", True, False, 0.5)    # final efx call: compensated (compensate_final), no E7
INTER = ("foresight", True, True, 0.5)     # an intermediate call: compensated, averaging
BASE = (False, False, 0.5)                 # a baseline call: no compensation, no averaging


@pytest.mark.parametrize("over, tags, calls", [
    (dict(epochs=3), ["step2", "step4", "final"], [(2, *INTER), (4, *INTER), (6, *FINAL)]),
    (dict(epochs=3, prune_every=2), ["step4", "final"], [(4, *INTER), (6, *FINAL)]),
    (dict(epochs=2, prune_every_steps=1), ["step1", "step2", "step3", "final"],
     [(1, *INTER), (2, *INTER), (3, *INTER), (4, *FINAL)]),
    (dict(epochs=2, prune_every_steps=3), ["step3", "final"], [(3, *INTER), (4, *FINAL)]),
    (dict(epochs=1), ["final"], [(2, *FINAL)]),
    (dict(epochs=1, compensate_final=False), ["final"], [(2, "foresight", False, False, 0.5)]),
    (dict(epochs=3, sparsity_ramp="cubic"), ["step2", "step4", "final"],   # 0.5 (1 - (1 - k/3)^3)
     [(2, *INTER[:3], round(0.5 * 19 / 27, 6)), (4, *INTER[:3], round(0.5 * 26 / 27, 6)), (6, *FINAL)]),
    (dict(method="dense"), [], []),
    (dict(method="wanda"), ["final"], [(4, "wanda", *BASE)]),
    (dict(method="sparsegpt", baseline_order="both"), ["before-lora", "final"],
     [(0, "sparsegpt", *BASE), (4, "sparsegpt", *BASE)]),
])
def test_s8_prune_calls_in_run(base, monkeypatch, over, tags, calls):
    """Number, timing (optimizer steps done before each call) and kind of every pruning call
    of a real run, and the tags train.run reports for them."""
    log = record_calls(monkeypatch)
    res = train.run(base(**over))
    assert [c["tag"] for c in res["prune_calls"]] == tags
    assert log["calls"] == calls
    assert log["steps"] == over.get("epochs", 2) * STEPS_PER_EPOCH
    assert len(res["losses"]) == log["steps"]
    for c in res["prune_calls"]:          # the probe loss just before and after every call
        assert math.isfinite(c["loss_before"]) and math.isfinite(c["loss_after"]), c["tag"]
        assert c["loss_before"] != c["loss_after"], c["tag"]


@pytest.mark.parametrize("over, held", [
    (dict(epochs=3), [0, 14, 0]),                  # step2 keeps its scores for step4's average
    (dict(epochs=2), [0, 0]),                      # nothing averages with step2's scores
    (dict(epochs=2, prune_every_steps=1), [0, 14, 14, 0]),
])
def test_e7_score_store_held_only_for_a_later_average(base, monkeypatch, over, held):
    """method (E7): the score averages (one per pruned weight, float32 on CPU) are kept after a
    call only when a later intermediate call averages with them; the final call never does.
    held: stored scores (2 layers x 7 maps) each efx.prune call finds when it starts, and the
    checkpoint after the last epoch holds none."""
    seen, real = [], efx.prune

    def prune(model, calib_ids, **kw):
        seen.append(len(kw["score_state"] or {}))
        return real(model, calib_ids, **kw)
    monkeypatch.setattr(efx, "prune", prune)
    train.run(base(keep_checkpoint=True, **over))
    assert seen == held
    ckpt = load_file(Path(base()["out"]) / "checkpoint.safetensors")
    assert not [k for k in ckpt if k.startswith("score.")]


# ----------------------------------------------------------------------------- final sparsity

@pytest.mark.parametrize("over, zeros_per_row", [
    (dict(method="efx"), lambda n: math.floor(0.5 * n)),
    (dict(method="wanda"), lambda n: math.floor(0.5 * n)),
    (dict(method="efx", sparsity=0.3), lambda n: math.floor(0.3 * n)),
    (dict(method="dense"), lambda n: 0),
])
def test_e8_exact_final_sparsity_per_row(base, tiny_ckpt, over, zeros_per_row):
    """Every row of every one of the seven maps of the saved model has exactly floor(rho n)
    zeros (method (E8)); every other tensor is the starting checkpoint's, untouched."""
    res = train.run(base(**over))
    maps = saved_maps(res["config"]["out"])
    assert len(maps) == 7 * 2
    for name, W in maps.items():
        z = (W == 0).sum(1)
        assert torch.equal(z, torch.full_like(z, zeros_per_row(W.shape[1]))), \
            f"{name}: zeros per row {z.unique().tolist()}, expected {zeros_per_row(W.shape[1])}"
    start = load_file(Path(base()["model"]) / "model.safetensors")
    final = load_file(Path(res["config"]["out"]) / "model" / "model.safetensors")
    assert set(start) == set(final)
    for k in start:
        if k.rsplit(".", 2)[-2] not in M.SEVEN_MAPS:
            assert torch.equal(start[k], final[k]), f"{k} changed (frozen)"


@pytest.mark.parametrize("method", ["efx", "magnitude"])
def test_e10_nm_2_4_final_model(base, method):
    """nm "2:4": every group of 4 consecutive columns of every row holds exactly 2 zeros."""
    res = train.run(base(method=method, nm="2:4"))
    assert res["sparsity"]["nm_valid"] is True
    assert all(c["nm_valid"] for c in res["prune_calls"])
    for name, W in saved_maps(res["config"]["out"]).items():
        z = (W.reshape(W.shape[0], -1, 4) == 0).sum(-1)
        assert bool((z == 2).all()), f"{name}: zeros per group of 4 {z.unique().tolist()}"


# ----------------------------------------------------------------------------- loss

def test_s8_completion_loss_ignores_prompt(tiny_ckpt):
    """Next-token CE summed over completion tokens / n_tokens, against a hand computation from
    the full logits: position t - 1 predicts label t, prompt tokens (IGNORE) carry no loss,
    a row without completion tokens adds nothing, and the gradient reaches the adapters."""
    ig = data.IGNORE
    model = M.load_model(tiny_ckpt[0])
    M.add_lora(model, 4, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(3, 128, (3, 7), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = ig                    # prompts; row 1 has one completion token, row 2 none
    labels[1, 5:], labels[2] = ig, ig
    logp = model(ids).float().log_softmax(-1)
    picked = [logp[b, t - 1, labels[b, t]] for b in range(3) for t in range(1, 7) if labels[b, t] != ig]
    n = len(picked)                       # 3 + 1 + 0
    loss = train.completion_loss(model, ids, labels, n_tokens=n)
    assert n == 4 and loss.item() == pytest.approx(-sum(picked).item() / n, rel=1e-5)
    other = ids.clone()
    other[:, 6] = (ids[:, 6] + 1) % 128   # the last input token predicts nothing
    assert torch.allclose(train.completion_loss(model, other, labels, n), loss, atol=1e-6)
    loss.backward()
    assert any(m.lora_B.grad.abs().sum() > 0 for _, m in M.lora_modules(model))


def test_s8_grad_accum_matches_one_batch(base):
    """grad_accum 2 x 2 examples == one batch of 4: the loss is divided by the token count of
    the whole optimizer step, not of each micro-batch (dropout off, float tolerance).
    8 x 16 calibration tokens: with fewer tokens than a map's 96 inputs, H is singular and
    E16 (the default) turns float-rounding differences into different masks."""
    a = train.run(base("one", lora_dropout=0.0, lr=1e-2, nsamples=8))
    b = train.run(base("acc", lora_dropout=0.0, lr=1e-2, grad_accum=2, nsamples=8))
    worst = max((p - q).abs().max().item() for (_, p), (_, q) in
                zip(a["model"].state_dict().items(), b["model"].state_dict().items()))
    assert worst <= DDP_ATOL, f"max abs diff {worst:.3g}"
    assert a["losses"] == pytest.approx(b["losses"], abs=1e-5)


# ----------------------------------------------------------------------------- resume

class _Stop(Exception):
    pass


def crash_after_first_checkpoint(monkeypatch, cfg):
    """train.run(cfg), stopped by an exception right after its first checkpoint is written."""
    real = files.save_checkpoint

    def crash_after_first(*a, **kw):
        real(*a, **kw)
        raise _Stop
    monkeypatch.setattr(files, "save_checkpoint", crash_after_first)
    with pytest.raises(_Stop):
        train.run(cfg)
    monkeypatch.setattr(files, "save_checkpoint", real)


@pytest.mark.parametrize("comp", [dict(), dict(pbs=True, pbs_variant="gram", reconstruct="none",
                                               sparsity_ramp="cubic")])
def test_s8_resume_bit_identical(base, monkeypatch, comp):
    """3 epochs uninterrupted == 1 epoch, a crash right after the first checkpoint, then
    --resume: every tensor of the saved model torch.equal, and the same losses. Dropout on,
    so the RNG state must be restored too."""
    over = dict(epochs=3, lora_dropout=0.1, **comp)
    full = train.run(base("full", **over))
    crash_after_first_checkpoint(monkeypatch, base("cut", **over))
    ckpt = Path(base("cut")["out"]) / "checkpoint.safetensors"
    assert ckpt.exists() and not Path(str(ckpt) + ".tmp").exists()
    assert not (Path(base("cut")["out"]) / "model").exists()
    resumed = train.run(base("cut", resume=True, **over))
    assert resumed["losses"] == full["losses"]
    assert [c["tag"] for c in resumed["prune_calls"]] == ["step2", "step4", "final"]
    a = load_file(Path(base("full")["out"]) / "model" / "model.safetensors")
    b = load_file(Path(base("cut")["out"]) / "model" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max abs diff {(a[k] - b[k]).abs().max().item():.3g}"


# ----------------------------------------------------------------------------- DDP (gloo)

WORKER = """\
import os, sys
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
import train
real_run = train.run

def run(cfg):  # the final weights of this rank, for the per-rank comparison
    r = real_run(cfg)
    sd = {{k: v.detach().clone().contiguous() for k, v in r["model"].state_dict().items()}}
    save_file(sd, os.path.join(cfg.out, "rank%s.safetensors" % os.environ["RANK"]))
    return r

train.run = run
train.main(sys.argv[1:])
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s8_ddp_gloo_two_ranks_match_single_process(base, tmp_path):
    """torchrun --nproc_per_node=2 (gloo, CPU): both ranks end with the same weights, equal to
    a single-process run with the same global batch (4 = 2 ranks x 2) to float tolerance.
    Dropout off: each rank draws its own dropout masks, so only then are the runs comparable."""
    cfg = base("single", lora_dropout=0.0, epochs=2, lr=1e-2,    # large steps: a real test
               nsamples=8)                  # H of full rank for E16 (grad_accum test above)
    argv = [x for k, v in cfg.items() if k != "out" for x in (f"--{k}", str(v))]
    single = train.run(train.parse_args(argv + ["--out", cfg["out"]]))
    ddp_out = tmp_path / "ddp"
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(worker),
           *argv, "--out", str(ddp_out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, f"torchrun failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    r0, r1 = (load_file(ddp_out / f"rank{i}.safetensors") for i in (0, 1))
    assert set(r0) == set(r1)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k}: ranks differ by {(r0[k] - r1[k]).abs().max().item():.3g}"
    saved = load_file(ddp_out / "model" / "model.safetensors")     # written by rank 0 only
    res = json.loads((ddp_out / "results.json").read_text())
    assert res["world_size"] == 2
    assert res["losses"] == pytest.approx(single["losses"], abs=1e-5)   # the global mean loss
    ref = {k: v for k, v in single["model"].state_dict().items()}
    worst = 0.0
    for k, v in saved.items():
        assert torch.equal(v, r0[k]), k
        diff = (v - ref[k]).abs().max().item()
        assert torch.equal(v == 0, ref[k] == 0), f"{k}: a different mask than the single run"
        worst = max(worst, diff)
    print(f"DDP (2 ranks) vs single process: max abs weight diff {worst:.3g}")
    assert worst <= DDP_ATOL, f"max abs diff {worst:.3g} > {DDP_ATOL}"


# ----------------------------------------------------------------------------- CLI

def test_s8_cli_precedence_defaults_preset_config_flags(tmp_path):
    """defaults < --preset < --config < flags."""
    conf = tmp_path / "run.json"
    conf.write_text(json.dumps({"epochs": 5, "lora_r": 4, "pbs": False}))
    c = train.parse_args(["--preset", "smoke", "--config", str(conf), "--lora_r", "2", "--eval", "false"])
    assert c.lora_r == 2                       # flag beats --config
    assert c.epochs == 5 and c.pbs is False    # --config beats preset (smoke: epochs 2)
    assert c.max_train == 16 and c.seqlen == 128   # preset beats the dataclass defaults
    assert c.lr == train.TrainConfig.lr and c.method == "efx"    # dataclass defaults
    assert c.eval is False
    assert train.parse_args(["--preset", "smoke", "--eval"]).eval is True
    assert train.parse_args([]).max_train == train.PRESETS["default"]["max_train"]


@pytest.mark.parametrize("field, value, words", [
    ("sparsity", 1.0, "sparsity"),
    ("nm", "4:4", "nm"),
    ("nm", "2-4", "nm"),
    ("lora_r", 0, "lora_r"),
    ("method", "pruneall", "method"),
    ("model", "/no/such/dir", "model"),
    ("train", "/no/such/file.jsonl", "train"),
    ("calib", "/no/such/file.txt", "calib"),
    ("reconstruct", "soft", "reconstruct"),
    ("pbs_variant", "soft", "pbs_variant"),
    ("sparsity_ramp", "soft", "sparsity_ramp"),
    ("batch_size", 3, "batch_size"),            # grad_accum 2 does not divide it
    ("typo_field", 1, "typo_field"),
])
def test_s8_cli_check_config_errors_name_the_field(field, value, words):
    values = {field: value, **({"grad_accum": 2} if field == "batch_size" else {})}
    with pytest.raises(ValueError, match=words):
        train.cli.make(train.TrainConfig, values)
    with pytest.raises(SystemExit, match=words) if field != "typo_field" else _no_check():
        train.main([f"--{field}", str(value)] + (["--grad_accum", "2"] if field == "batch_size" else []))


def test_s8_ramp_with_nm_refused():
    """N:M prunes N of every M at every call, so a sparsity ramp would be silently ignored
    (select_mask drops the sparsity under nm, E10): the config refuses the pair instead."""
    with pytest.raises(ValueError, match=r"sparsity_ramp='cubic' has no N:M form: nm='2:4'"):
        train.cli.make(train.TrainConfig, {"sparsity_ramp": "cubic", "nm": "2:4"})
    assert train.cli.make(train.TrainConfig, {"sparsity_ramp": "cubic"}).sparsity_ramp == "cubic"


class _no_check:
    """An unknown flag is argparse's error (exit status 2, message on stderr)."""
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        assert kind is SystemExit and exc.code == 2
        return True


# ----------------------------------------------------------------------------- the user's path

def test_s8_out_named_after_the_run_and_never_replaced(base, tmp_path):
    """--out "" names the folder after preset, data, method, sparsity and seed; a folder that
    holds a finished run (results.json) or an unfinished one (checkpoint) is refused unless
    --overwrite (or --resume for the checkpoint); the refused run writes nothing."""
    names = {train.parse_args(a).out for a in (
        [], ["--preset", "smoke"], ["--method", "dense"], ["--nm", "2:4", "--seed", "3"],
        ["--sparsity", "0.4", "--method", "wanda"])}
    assert names == {"runs/default-med-efx-50-s0", "runs/smoke-med-efx-50-s0", "runs/default-med-dense-s0",
                     "runs/default-med-efx-2of4-s3", "runs/default-med-wanda-40-s0"}
    assert train.parse_args(["--train", base()["train"]]).out == "runs/default-train-efx-50-s0"
    first = train.run(base("x", epochs=1, method="wanda"))
    sha = (Path(first["config"]["out"]) / "results.json").read_bytes()
    with pytest.raises(ValueError, match=r"x/results\.json exists .*--overwrite"):
        train.run(base("x", epochs=1))
    assert (Path(first["config"]["out"]) / "results.json").read_bytes() == sha
    again = train.run(base("x", epochs=1, overwrite=True))
    assert again["config"]["method"] == "efx"
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "checkpoint.safetensors").write_bytes(b"unfinished")
    with pytest.raises(ValueError, match=r"checkpoint\.safetensors exists .*--resume continues it"):
        train.run(base("y", epochs=1))


def test_s8_own_train_and_test_files_print_the_table(base, tmp_path, capsys):
    """--train + --test: the dense start and the result are tested on the test file and the
    main job's table is printed; the caps that cut the user's data are stated, with the option
    that avoids each, and that option does avoid it."""
    rng = random.Random(1)
    test_file = tmp_path / "mytask.jsonl"
    test_file.write_text("".join(json.dumps({"prompt": words(rng, 5), "completion": [" w1", " w2"][i % 2],
                                             "choices": [" w1", " w2"], "label": i % 2}) + "\n" for i in range(6)))
    res = train.run(base("own", epochs=1, max_train=4, max_len=8, eval=True, eval_max=4, test=[str(test_file)]))
    out = capsys.readouterr().out
    assert "max_train=4 (--max_train): a seeded 4 of the 8 training examples are used" in out
    assert "eval_max=4 (--eval_max): only the first 4 items of mytask (6) are tested" in out
    cut = re.search(r"max_len=8 \(--max_len\): (\d+) prompts \((\d+)%\).* --max_len (\d+) keeps", out)
    assert cut and int(cut[1]) == res["truncation"]["prompt_cut"] > 0
    table = out[out.index("metric"):]
    assert re.search(r"mytask/accuracy\s+\d\.\d{4}\s+\d\.\d{4}", table)
    for key in ("dense_start", "final"):     # eval_max: 4 of the 6 items, one record each
        lines = (Path(res["config"]["out"]) / f"predictions_{key}.jsonl").read_text().splitlines()
        recs = [json.loads(line) for line in lines]
        assert [(r["name"], r["task"], r["index"]) for r in recs] == [("own", "mytask", i) for i in range(4)]
        assert res[key]["metrics"]["mytask/accuracy"] == sum(r["correct"] for r in recs) / 4
    whole = train.run(base("own2", epochs=1, max_train=4, max_len=int(cut[3])))
    assert whole["truncation"]["prompt_cut"] == whole["truncation"]["completion_cut"] == 0
    assert "no --test files" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["train", "drivers.prune"])
def test_s8_help_lists_every_field_with_meaning_and_default(script, capsys):
    """--help: every config field as a flag, with its comment and its default (the default
    preset's value where one is set); a '%' in a comment does not break argparse."""
    mod = importlib.import_module(script)
    cls = train.TrainConfig if script == "train" else mod.PruneConfig
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())               # argparse wraps lines
    helps = train.cli.field_help(cls)
    for f in train.dataclasses.fields(cls):
        assert f"--{f.name}" in text, f.name
        assert " ".join(helps[f.name].split()) in text, f.name      # the meaning ...
        if script == "train" and f.name in train.PRESETS["default"]:
            assert f"(default: {train.PRESETS['default'][f.name]} in the default preset" in text, f.name
        elif f.name != "preset":
            assert re.search(rf"--{f.name} .*?\(default: ", text), f.name   # ... and the default


def test_s8_lr_factor_hand_values():
    """The convention pinned: warm-up (step + 1) / warmup, so that the first step already
    learns (HF's linear warm-up uses step / warmup: 0 at step 0), then cosine or linear decay
    over (step - warmup) / (total - warmup), as HF. total 100, warmup 10:"""
    f = train.lr_factor
    assert [f(s, 100, 10, "cosine") for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert f(10, 100, 10, "cosine") == 1.0 and f(10, 100, 10, "linear") == 1.0
    assert f(55, 100, 10, "cosine") == pytest.approx(0.5) and f(55, 100, 10, "linear") == pytest.approx(0.5)
    assert f(40, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))   # t = 30/90
    assert f(99, 100, 10, "linear") == pytest.approx(1 / 90) and f(100, 100, 10, "cosine") == pytest.approx(0)
    assert f(11, 11, 10, "linear") == 0.0          # one decay step: t = 1 / (total - warmup)
    assert train.prune_points(3, 5) == [5, 10]     # defaults: every epoch boundary, no step rule


def test_s8_lm_objective_trains_every_token_of_the_text(base, monkeypatch):
    """--objective lm: the training items are windows of --train_text, each token supervised
    (the loss counts max_len - 1 targets a row); --train and --train_text each need their own
    objective."""
    seen = []
    real = train.completion_loss

    def loss(model, ids, labels, n_tokens):
        if model.training:
            seen.append((ids.shape, int((labels[:, 1:] != data.IGNORE).sum()), n_tokens))
        return real(model, ids, labels, n_tokens)
    monkeypatch.setattr(train, "completion_loss", loss)
    cfg = base("lm", train="", objective="lm", max_len=16, epochs=1)
    text_windows = len(data.encode_text(files.load_tokenizer(cfg["model"]),
                                        Path(cfg["calib"]).read_text(), 16))
    res = train.run({**cfg, "train_text": cfg["calib"]})
    assert res["train_examples"] == text_windows and len(seen) == text_windows // 4
    assert all(shape == (4, 16) and n == 4 * 15 == n_tok for shape, n, n_tok in seen)
    with pytest.raises(ValueError, match="--train_text is the text of --objective lm"):
        train.TrainConfig(train_text=cfg["calib"])
    with pytest.raises(ValueError, match="--train_text is the text of --objective lm"):
        train.TrainConfig(train=base()["train"], objective="lm")


def test_s8_baseline_before_holds_the_first_mask_through_lora(base, monkeypatch):
    """--baseline_order before: one pruning call before LoRA, then the masked merge keeps
    exactly that mask while the adapters' update reaches the kept weights."""
    log = record_calls(monkeypatch)
    masks = {}
    real = efx.prune

    def prune(model, calib_ids, **kw):
        rep = real(model, calib_ids, **kw)
        masks.update({n: m.weight.detach() != 0 for n, m in M.lora_modules(model)})
        masks["W"] = {n: m.weight.detach().clone() for n, m in M.lora_modules(model)}
        return rep
    monkeypatch.setattr(efx, "prune", prune)
    res = train.run(base(method="wanda", baseline_order="before", lr=1e-2))
    assert [c[:2] for c in log["calls"]] == [(0, "wanda")]
    moved = 0
    for n, m in M.lora_modules(res["model"]):
        assert torch.equal(m.weight != 0, masks[n]), n                  # the mask held
        moved += int((m.weight - masks["W"][n]).abs().max() > 0)        # LoRA merged into it
    assert moved == len(masks["W"]) and res["sparsity"]["overall"]["sparsity"] == 0.5


def test_s3_calib_train_calibrates_on_the_training_text(base, monkeypatch):
    """--calib train: the calibration windows are cut from the text the run trains on."""
    seen = []
    real = data.calibration_windows
    monkeypatch.setattr(data, "calibration_windows", lambda tok, text, *a: seen.append(text) or real(tok, text, *a))
    cfg = base("ct", train="", objective="lm", calib="train", epochs=1)
    train.run({**cfg, "train_text": base()["calib"]})
    assert seen == [Path(base()["calib"]).read_text()]
    train.run(base("ct2", calib="train", epochs=1))
    rows = [json.loads(x) for x in Path(base()["train"]).read_text().splitlines()]
    assert seen[1] == "\n\n".join(r["prompt"] + r["completion"] for r in rows)


def test_s8_prune_options_carry_the_run_config():
    """prune_options: compensation (PBS, E16) only when asked, the run's mask_lr, nm, per,
    variant and offload, the call's seed."""
    c = train.TrainConfig(pbs=True, pbs_variant="gram", reconstruct="obs", mask_lr=0.25, nm="2:4",
                          per="layer", foresight_variant="paper", offload=True, pbs_damp=1e-4)
    o = train.prune_options(c, "foresight", 0.4, compensate=True, seed=7)
    assert (o.pbs, o.pbs_variant, o.reconstruct, o.mask_lr, o.nm, o.per, o.foresight_variant,
            o.offload, o.pbs_damp, o.seed, o.sparsity) == (True, "gram", "obs", 0.25, (2, 4), "layer",
                                                            "paper", True, 1e-4, 7, 0.4)
    o = train.prune_options(c, "wanda", 0.5)
    assert (o.pbs, o.reconstruct, o.seed) == (False, "none", 0)
    assert c.nm == "2:4" and c.method == "efx"          # the run's own fields are left as given


# ----------------------------------------------------------------------------- the run's own truth (issue 20)

def test_s8_resume_with_averaged_scores_bit_identical(base, monkeypatch):
    """The checkpoint after epoch 1 holds the E7 score of the call at step 1; --resume must
    restore it, so the call at step 2 averages with it exactly as the uninterrupted run does."""
    over = dict(epochs=3, prune_every_steps=1, lora_dropout=0.1, mask_lr=0.3)
    full = train.run(base("full", **over))
    crash_after_first_checkpoint(monkeypatch, base("cut", **over))
    ckpt = Path(base("cut")["out"]) / "checkpoint.safetensors"
    with safe_open(str(ckpt), "pt") as f:
        assert any(k.startswith("score.") for k in f.keys()), "the checkpoint must hold E7 scores"
    resumed = train.run(base("cut", resume=True, **over))
    assert resumed["losses"] == full["losses"]
    a = load_file(Path(base("full")["out"]) / "model" / "model.safetensors")
    b = load_file(Path(base("cut")["out"]) / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max abs diff {(a[k] - b[k]).abs().max().item():.3g}"


def _test_file(tmp_path):
    rng = random.Random(1)
    rows = [{"prompt": words(rng, 5), "completion": " w1" if i % 2 == 0 else " w2", "choices": [" w1", " w2"],
             "label": i % 2} for i in range(4)]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_s8_interrupted_run_marks_its_folder_and_resume_keeps_dense_start(base, tmp_path, monkeypatch):
    """An interrupted run keeps its checkpoint, config.json and an UNFINISHED file; --resume
    brings back the dense-start results; the finished run deletes checkpoint and marker."""
    over = dict(eval=True, test=[_test_file(tmp_path)], epochs=2)
    crash_after_first_checkpoint(monkeypatch, base("cut", **over))
    out = Path(base("cut")["out"])
    assert (out / "checkpoint.safetensors").exists() and (out / train.UNFINISHED).exists()
    assert "--resume" in (out / train.UNFINISHED).read_text()
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 2 and saved["resume"] is False
    first = json.loads((out / "predictions_dense_start.jsonl").read_text().splitlines()[0])
    res = train.run(base("cut", resume=True, **over))
    assert res["dense_start"] is not None
    assert res["dense_start"]["metrics"]["test/accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert first["label_text"] in (" w1", " w2")
    assert not (out / "checkpoint.safetensors").exists() and not (out / train.UNFINISHED).exists()
    kept = train.run(base("kept", keep_checkpoint=True, **over))
    assert (Path(kept["config"]["out"]) / "checkpoint.safetensors").exists()


def test_s8_ctrl_c_ends_with_one_line_saying_what_was_kept(base, monkeypatch, capsys):
    """KeyboardInterrupt in the second epoch: exit status 130 and one line naming the kept
    checkpoint and the command that resumes; no traceback."""
    cfg = base("cc", epochs=2)
    calls = {"n": 0}
    real = train.train_step

    def step(*a):
        calls["n"] += 1
        if calls["n"] == 3:                 # the first step of epoch 2 (2 steps per epoch)
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(train, "train_step", step)
    argv = [x for k, v in cfg.items() for x in (f"--{k}", str(v))]
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err and "after epoch 1/2" in err
    assert f"python train.py --config {Path(cfg['out']) / 'config.json'} --resume" in err


def test_s8_dense_refuses_a_sparsity_it_would_ignore():
    with pytest.raises(ValueError, match="dense is not pruned"):
        train.parse_args(["--method", "dense", "--sparsity", "0.5"])
    assert train.parse_args(["--method", "dense"]).method == "dense"
