"""Tests for train.py (SPEC section 8): the pruning schedule, exact final sparsity, masked
adapters, the completion-only loss, bit-identical resume, 2-process gloo DDP, and the CLI.

Every run is a real `train.run` on a tiny random checkpoint (conftest: 2 layers, hidden 64,
vocab 128, word-level tokenizer), 8 JSONL examples of the SPEC section 10 schema (batch 4:
2 optimizer steps per epoch), a calibration text file of tiny windows (2 x 16 tokens), eval
off, on CPU. The DDP test launches `torchrun --nproc_per_node=2 train.py`-style workers in a
subprocess (gloo). Run: python -m pytest -q tests/test_train.py
"""
import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data  # noqa: E402
import efx  # noqa: E402
import model as M  # noqa: E402
import train  # noqa: E402

STEPS_PER_EPOCH = 2           # 8 examples / batch 4
DDP_ATOL = 1e-5               # float32: 2-rank all-reduce vs one batch of 4 (summation order)


# ----------------------------------------------------------------------------- fixtures

def _words(rng, k):
    """k words of the conftest tokenizer (w0..w124 -> ids 3..127)."""
    return " ".join(f"w{rng.randrange(125)}" for _ in range(k))


@pytest.fixture
def base(tmp_path, tiny_ckpt):
    """Factory: base(**overrides) -> config dict for train.run on the tiny checkpoint."""
    ckpt, _ = tiny_ckpt
    rng = random.Random(0)
    train_file = tmp_path / "train.jsonl"
    rows = [{"prompt": _words(rng, 6), "completion": _words(rng, 4)} for _ in range(8)]
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calib = tmp_path / "calib.txt"
    calib.write_text(_words(rng, 400))
    common = dict(model=str(ckpt), train=str(train_file), calib=str(calib), epochs=2, batch_size=4,
                  max_train=0, nsamples=2, seqlen=16, max_len=32, eval=False, device="cpu",
                  log_every=100, sparsity=0.5)

    def make(name="out", **kw):
        return {**common, "out": str(tmp_path / name), **kw}
    return make


def record_calls(monkeypatch):
    """Count optimizer steps (one completion_loss call each: grad_accum 1, one rank) and record
    every efx.prune call with the number of steps done before it."""
    log = {"steps": 0, "calls": []}
    real_loss, real_prune = train.completion_loss, efx.prune

    def loss(*a, **kw):
        log["steps"] += 1
        return real_loss(*a, **kw)

    def prune(model, calib_ids, method, sparsity, **kw):
        log["calls"].append((log["steps"], method, kw["pbs"], kw["average"]))
        return real_prune(model, calib_ids, method, sparsity, **kw)
    monkeypatch.setattr(train, "completion_loss", loss)
    monkeypatch.setattr(efx, "prune", prune)
    return log


def saved_maps(out):
    """{name: weight} of the seven maps in the saved final model (plain, adapters merged)."""
    model = M.load_model(Path(out) / "model")
    assert all(m.r == 0 for _, m in M.lora_modules(model)), "saved model still has adapters"
    return {name: m.weight for name, m in M.lora_modules(model)}


# ----------------------------------------------------------------------------- schedule

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


FINAL = ("foresight", False, False)    # the final efx call: no PBS, no averaging (SPEC section 8)
INTER = ("foresight", True, True)      # an intermediate call: PBS and averaging


@pytest.mark.parametrize("over, tags, calls", [
    (dict(epochs=3), ["step2", "step4", "final"], [(2, *INTER), (4, *INTER), (6, *FINAL)]),
    (dict(epochs=3, prune_every=2), ["step4", "final"], [(4, *INTER), (6, *FINAL)]),
    (dict(epochs=2, prune_every_steps=1), ["step1", "step2", "step3", "final"],
     [(1, *INTER), (2, *INTER), (3, *INTER), (4, *FINAL)]),
    (dict(epochs=2, prune_every_steps=3), ["step3", "final"], [(3, *INTER), (4, *FINAL)]),
    (dict(epochs=1), ["final"], [(2, *FINAL)]),
    (dict(method="dense"), [], []),
    (dict(method="wanda"), ["final"], [(4, "wanda", False, False)]),
    (dict(method="sparsegpt", baseline_order="both"), ["before-lora", "final"],
     [(0, "sparsegpt", False, False), (4, "sparsegpt", False, False)]),
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


@pytest.mark.parametrize("over, held", [
    (dict(epochs=3), [0, 14, 0]),                  # step2 keeps its scores for step4's average
    (dict(epochs=2), [0, 0]),                      # nothing averages with step2's scores
    (dict(epochs=2, prune_every_steps=1), [0, 14, 14, 0]),
])
def test_e7_score_store_held_only_for_a_later_average(base, monkeypatch, over, held):
    """SPEC (E7): the score averages (one per pruned weight, float32 on CPU) are kept after a
    call only when a later intermediate call averages with them; the final call never does.
    held: stored scores (2 layers x 7 maps) each efx.prune call finds when it starts, and the
    checkpoint after the last epoch holds none."""
    seen, real = [], efx.prune

    def prune(model, calib_ids, method, sparsity, **kw):
        seen.append(len(kw["score_state"]))
        return real(model, calib_ids, method, sparsity, **kw)
    monkeypatch.setattr(efx, "prune", prune)
    train.run(base(**over))
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
    zeros (SPEC (E8)); every other tensor is the starting checkpoint's, untouched."""
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


def test_s8_masked_adapters_keep_zeros(base, monkeypatch):
    """adapter_mode "masked": after every intermediate call, and through the training steps
    that follow it, the forward weight M * (W + s B A) keeps exactly floor(n/2) zeros per row;
    the adapters are kept (B != 0 after training), not merged; the final model is sparse."""
    real_prune, checked = efx.prune, []

    def forward_weight(mod):
        """The weight the map actually applies: its output on the identity, minus the bias."""
        was = mod.training
        mod.eval()
        with torch.no_grad():
            y = mod(torch.eye(mod.in_features))
            y = y - mod.bias if mod.bias is not None else y
        mod.train(was)
        return y.T                                                      # (m, n)

    def check(model, when):
        for name, mod in M.lora_modules(model):
            assert mod.mask is not None, f"{when}: {name} has no mask"
            Wf = forward_weight(mod)
            assert not Wf[~mod.mask].any(), f"{when}: {name} nonzero outside its mask"
            assert torch.equal((Wf == 0).sum(1), torch.full((Wf.shape[0],), Wf.shape[1] // 2)), when
            assert not mod.weight[~mod.mask].any(), f"{when}: {name}: W not pruned"
        checked.append(when)

    def prune(model, calib_ids, method, sparsity, **kw):
        if checked:                      # before call 2, 3: after an epoch of masked training
            check(model, f"before call {len(checked) + 1}")
            assert any(m.lora_B.abs().sum() > 0 for _, m in M.lora_modules(model)), "B was reset"
        rep = real_prune(model, calib_ids, method, sparsity, **kw)
        check(model, f"after call {len(checked) + 1}")
        return rep
    monkeypatch.setattr(efx, "prune", prune)
    res = train.run(base(epochs=3, adapter_mode="masked"))
    assert len(checked) == 5 and [c["adapter_mode"] for c in res["prune_calls"]] == ["masked"] * 3
    for name, W in saved_maps(res["config"]["out"]).items():
        assert torch.equal((W == 0).sum(1), torch.full((W.shape[0],), W.shape[1] // 2)), name


# ----------------------------------------------------------------------------- loss

def test_s8_completion_loss_ignores_prompt():
    """Next-token CE summed over completion tokens / n_tokens: hand value, and logits that
    predict prompt tokens (or nothing: the last position) do not matter."""
    ig = data.IGNORE
    logits = torch.zeros(1, 4, 3)
    logits[0, 2] = torch.tensor([1.0, 0.0, 0.0])
    labels = torch.tensor([[ig, ig, 2, 1]])           # tokens 0, 1: prompt; 2, 3: completion
    # position 1 predicts label 2 from uniform logits: log 3; position 2 predicts label 1
    # from (1, 0, 0): log(e + 2) - 0
    expected = (math.log(3) + math.log(math.e + 2)) / 2
    loss = train.completion_loss(logits, labels, n_tokens=2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    for pos in (0, 3):                     # predicts prompt token 1 / past the end
        other = logits.clone()
        other[0, pos] = torch.tensor([5.0, -3.0, 7.0])
        assert torch.equal(train.completion_loss(other, labels, 2), loss)
    other = logits.clone()
    other[0, 1, 2] = 4.0                   # a completion prediction does matter
    assert train.completion_loss(other, labels, 2) < loss


def test_s8_grad_accum_matches_one_batch(base):
    """grad_accum 2 x 2 examples == one batch of 4: the loss is divided by the token count of
    the whole optimizer step, not of each micro-batch (dropout off, float tolerance)."""
    a = train.run(base("one", lora_dropout=0.0, lr=1e-2))
    b = train.run(base("acc", lora_dropout=0.0, lr=1e-2, grad_accum=2))
    worst = max((p - q).abs().max().item() for (_, p), (_, q) in
                zip(a["model"].state_dict().items(), b["model"].state_dict().items()))
    assert worst <= DDP_ATOL, f"max abs diff {worst:.3g}"
    assert a["losses"] == pytest.approx(b["losses"], abs=1e-5)


# ----------------------------------------------------------------------------- resume

class _Stop(Exception):
    pass


@pytest.mark.parametrize("adapter_mode", ["merge", "masked"])
def test_s8_resume_bit_identical(base, monkeypatch, adapter_mode):
    """3 epochs uninterrupted == 1 epoch, a crash right after the first checkpoint, then
    --resume: every tensor of the saved model torch.equal, and the same losses. Dropout on,
    so the RNG state must be restored too."""
    over = dict(epochs=3, adapter_mode=adapter_mode, lora_dropout=0.1)
    full = train.run(base("full", **over))
    real = train.save_checkpoint

    def crash_after_first(*a, **kw):
        real(*a, **kw)
        raise _Stop
    monkeypatch.setattr(train, "save_checkpoint", crash_after_first)
    with pytest.raises(_Stop):
        train.run(base("cut", **over))
    monkeypatch.setattr(train, "save_checkpoint", real)
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
    cfg = base("single", lora_dropout=0.0, epochs=2, lr=1e-2)    # large steps: a real test
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

def test_cli_precedence_defaults_preset_config_flags(tmp_path):
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
    ("adapter_mode", "soft", "adapter_mode"),
    ("batch_size", 3, "batch_size"),            # grad_accum 2 does not divide it
    ("typo_field", 1, "typo_field"),
])
def test_cli_check_config_errors_name_the_field(field, value, words):
    values = {field: value, **({"grad_accum": 2} if field == "batch_size" else {})}
    with pytest.raises(ValueError, match=words):
        train.make_config(values)
    with pytest.raises(SystemExit, match=words) if field != "typo_field" else _no_check():
        train.main([f"--{field}", str(value)] + (["--grad_accum", "2"] if field == "batch_size" else []))


class _no_check:
    """An unknown flag is argparse's error (exit status 2, message on stderr)."""
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        assert kind is SystemExit and exc.code == 2
        return True
