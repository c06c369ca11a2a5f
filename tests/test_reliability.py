"""Issue 6, reliability: bad input, NaN / inf, interrupted runs and untrusted files.

Each case asserts the error message or the intact state, on tiny random checkpoints
(conftest: 2 layers, hidden 64, vocab 128, word-level tokenizer), CPU only.

* CLIs (`python train.py | prune.py | eval.py`): one process per case, table CLI_CASES. Paying
  the ~2 s torch import once instead of per case, a driver process imports the modules and
  forks one child per case; the child sets sys.argv, runs the module as __main__ (runpy, as `python -m`) and
  treats what reaches the top level as the interpreter does (SystemExit: message and status;
  any other exception: sys.excepthook's traceback, status 1). Argument cases point --model at
  a directory without weights ("noweights"): getting the expected message, not "no
  model.safetensors", shows that the check ran before any weight was read.
* Kill and resume: real `python train.py` subprocesses, SIGKILL at a seeded random moment.

Deliberately not covered: corruption inside tensor data that keeps the file well-formed (bit
flips: safetensors has no checksum; a NaN this creates is caught by the calibration and loss
checks), GPU-only paths (bf16 autocast), a kill of a torchrun (DDP) job.
Run: python -m pytest -q tests/test_reliability.py
"""
import ast
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from conftest import random_model, tiny_config, words, write_tokenizer  # noqa: E402
import efx  # noqa: E402
from support import files
import model as M  # noqa: E402
import train  # noqa: E402

KILL_EPOCHS = 30            # ~1 s of training after the first checkpoint: room for a random kill
KILL_DELAY_S = (0.0, 0.3)   # after the first checkpoint appears


# ----------------------------------------------------------------------------- helpers


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _checkpoint(path, tokenizer_vocab=128, weights=True):
    """A tiny random checkpoint directory (vocab 128); weights=False leaves out the weights."""
    M.save_model(random_model(tiny_config()), path)
    write_tokenizer(path, tokenizer_vocab)
    if not weights:
        (path / "model.safetensors").unlink()
    return path


class Evil:
    """Unpickling it creates the directory `marker`: the proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant_code(path, marker):
    """Make a checkpoint ask for remote code (config and tokenizer_config auto_map,
    trust_remote_code) and hold Python files that create `marker` if anything imports them."""
    _edit_json(path / "config.json", trust_remote_code=True, auto_map={
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    _edit_json(path / "tokenizer_config.json", trust_remote_code=True,
               tokenizer_class="EvilTokenizer",
               auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})
    for name in ("modeling_evil", "configuration_evil", "tokenization_evil", "__init__"):
        (path / f"{name}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return path


def _torn_save(tensors, filename, metadata=None):
    """save_file killed half way: half of the bytes reach the disk, then the write dies."""
    blob = safetensors.torch.save(tensors, metadata=metadata)
    Path(filename).write_bytes(blob[: len(blob) // 2])
    raise OSError("simulated kill in the middle of the write")


@pytest.fixture(autouse=True)
def no_pickle_loading(monkeypatch):
    """In-process tests fail if anything reaches torch's pickle loader."""
    def refuse(*a, **kw):
        raise AssertionError("torch's pickle loader was called")
    monkeypatch.setattr(torch, "load", refuse)


# ----------------------------------------------------------------------------- CLI table

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Read-only inputs of the CLI cases and the kill test."""
    d = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    w = SimpleNamespace(dir=d, pickle_marker=d / "PICKLE_LOADED", code_marker=d / "CODE_RAN")
    w.ck = _checkpoint(d / "ck")
    w.noweights = _checkpoint(d / "noweights", weights=False)
    w.bigvocab = _checkpoint(d / "bigvocab", tokenizer_vocab=160, weights=False)
    w.pickle_only = _checkpoint(d / "pickle_only", weights=False)
    (w.pickle_only / "pytorch_model.bin").write_bytes(pickle.dumps(Evil(w.pickle_marker)))
    w.truncated = Path(shutil.copytree(w.ck, d / "truncated"))
    blob = (w.truncated / "model.safetensors").read_bytes()
    (w.truncated / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    w.badconfig = _checkpoint(d / "badconfig", weights=False)
    _edit_json(w.badconfig / "config.json", hidden_act="gelu")
    w.notok = Path(shutil.copytree(w.noweights, d / "notok"))
    (w.notok / "tokenizer.json").unlink()
    w.badtok = Path(shutil.copytree(w.noweights, d / "badtok"))
    (w.badtok / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    w.badtokcfg = Path(shutil.copytree(w.noweights, d / "badtokcfg"))
    (w.badtokcfg / "tokenizer_config.json").write_text("{bos_token: <s>}")
    w.badpqa = d / "ori_pqal.json"
    w.badpqa.write_text('{"123": {"QUESTION": 5}}')
    w.evil = _plant_code(Path(shutil.copytree(w.ck, d / "evil")), w.code_marker)
    w.train = _jsonl(d / "train.jsonl", [{"prompt": words(rng, 6), "completion": words(rng, 4)}
                                         for _ in range(8)])
    w.tasks = _jsonl(d / "tasks.jsonl", [{"prompt": words(rng, 5), "completion": " w1",
                                          "choices": [" w1", " w2"], "label": 0}] * 2)
    w.badline = d / "badline.jsonl"
    w.badline.write_text(w.train.read_text().splitlines()[0] + "\n{\"prompt\": \"w1\",\n")
    w.nofield = _jsonl(d / "nofield.jsonl", [{"prompt": "w1 w2"}])
    w.empty = _jsonl(d / "empty.jsonl", [])
    w.calib = d / "calib.txt"
    w.calib.write_text(words(rng, 400))
    w.empty_calib = d / "empty_calib.txt"
    w.empty_calib.write_text("")
    w.corrupt_out = d / "corrupt_out"
    w.corrupt_out.mkdir()
    (w.corrupt_out / "checkpoint.safetensors").write_bytes(b"\x07" * 100)
    return w


TRAIN = ("--model {noweights} --train {train} --calib {calib} --eval false --device cpu "
         "--epochs 1 --batch_size 4 --max_train 0 --nsamples 2 --seqlen 16 --max_len 32 "
         "--log_every 100 --out {dir}/train_out")
PRUNE = ("--model {noweights} --calib {calib} --eval_text {calib} --nsamples 2 --seqlen 16 "
         "--eval_windows 2 --device cpu --results {dir}/prune.json")
EVAL = "--model {noweights} --tasks {tasks} --seqlen 16 --device cpu --out {dir}/eval_out"

# (id, script, arguments, exit status, regex the last output line must match after
# "<script>: error: "). Exit 1: our one-line errors; 2: argparse (usage line + error).
CLI_CASES = [
    # -- arguments, checked before any weight is read
    ("train-sparsity-1", "train", TRAIN + " --sparsity 1.0", 1,
     r"sparsity must be in \[0, 1\), got 1\.0"),
    ("train-sparsity-neg", "train", TRAIN + " --sparsity -0.1", 1,
     r"sparsity must be in \[0, 1\), got -0\.1"),
    ("train-nm-n-ge-m", "train", TRAIN + " --nm 4:4", 1, r"nm=4:4: expected 0 < N < M"),
    ("train-nm-format", "train", TRAIN + " --nm 2-4", 1, r"nm must look like '2:4'"),
    ("train-nm-width", "train", TRAIN + " --nm 2:3", 1,
     r"hidden_size\) has 64 columns, not divisible by M=3"),
    ("train-rank-0", "train", TRAIN + " --lora_r 0", 1, r"lora_r must be > 0, got 0"),
    ("train-rank-neg", "train", TRAIN + " --lora_r -8", 1, r"lora_r must be > 0, got -8"),
    ("train-method", "train", TRAIN + " --method pruneall", 1,
     r"method must be one of .*'pruneall'"),
    ("train-fs-variant", "train", TRAIN + " --foresight_variant exact", 1,
     r"foresight_variant='exact', expected one of"),
    ("train-pbs-variant", "train", TRAIN + " --pbs_variant exact", 1,
     r"pbs_variant='exact', expected one of"),
    ("train-model-missing", "train", TRAIN + " --model {dir}/nowhere", 1,
     r"model: path '.*nowhere' does not exist"),
    ("train-data-missing", "train", TRAIN + " --train {dir}/no.jsonl", 1,
     r"train: path '.*no\.jsonl' does not exist"),
    ("train-calib-missing", "train", TRAIN + " --calib {dir}/no.txt", 1,
     r"calib: path '.*no\.txt' does not exist"),
    # -- data, read before the weights
    ("train-jsonl-bad-line", "train", TRAIN + " --train {badline}", 1,
     r"badline\.jsonl:2: field '<json>': invalid JSON"),
    ("train-jsonl-no-field", "train", TRAIN + " --train {nofield}", 1,
     r"nofield\.jsonl:1: field 'completion': expected a string"),
    ("train-jsonl-empty", "train", TRAIN + " --train {empty}", 1,
     r"empty\.jsonl: 0 examples, fewer than one batch of 4"),
    ("train-calib-empty", "train", TRAIN + " --calib {empty_calib}", 1,
     r"calib .*empty_calib\.txt: .*corpus has 0 tokens"),
    ("train-vocab", "train", TRAIN + " --model {bigvocab}", 1,
     r"tokenizer\.json: 160 tokens do not fit the model's vocab_size=128"),
    # -- checkpoints
    ("train-pickle-only", "train", TRAIN + " --model {pickle_only}", 1,
     r"no model\.safetensors.*\['pytorch_model\.bin'\].*only safetensors"),
    ("train-truncated", "train", TRAIN + " --model {truncated}", 1,
     r"model\.safetensors: not a valid safetensors file"),
    ("train-config", "train", TRAIN + " --model {badconfig}", 1,
     r"config\.json: unsupported hidden_act: 'gelu'"),
    ("train-tokenizer-missing", "train", TRAIN + " --model {notok}", 1,
     r"notok/tokenizer\.json: no such file"),
    ("train-tokenizer-damaged", "train", TRAIN + " --model {badtok}", 1,
     r"badtok/tokenizer\.json: not a valid tokenizers file"),
    ("train-tokenizer-config-damaged", "train", TRAIN + " --model {badtokcfg}", 1,
     r"badtokcfg/tokenizer_config\.json: not valid JSON"),
    ("train-resume-corrupt", "train", TRAIN + " --model {ck} --resume --out {corrupt_out}", 1,
     r"checkpoint\.safetensors: not a readable checkpoint"),
    # -- prune.py
    ("prune-sparsity-1", "drivers.prune", PRUNE + " --sparsity 1.0", 1,
     r"sparsity must be in \[0, 1\), got 1\.0"),
    ("prune-sparsity-neg", "drivers.prune", PRUNE + " --sparsity -0.5", 1,
     r"sparsity must be in \[0, 1\), got -0\.5"),
    ("prune-nm-n-ge-m", "drivers.prune", PRUNE + " --nm 4:2", 1, r"nm=4:2: expected 0 < N < M"),
    ("prune-nm-width", "drivers.prune", PRUNE + " --nm 2:3", 1,
     r"hidden_size\) has 64 columns, not divisible by M=3"),
    ("prune-method", "drivers.prune", PRUNE + " --method random", 1, r"method='random', expected one of"),
    ("prune-fs-variant", "drivers.prune", PRUNE + " --method foresight --foresight_variant exact", 1,
     r"foresight_variant='exact'"),
    ("prune-per", "drivers.prune", PRUNE + " --per column", 1, r"per='column', expected one of"),
    ("prune-nsamples-0", "drivers.prune", PRUNE + " --nsamples 0", 1,
     r"nsamples, batch_size and eval_windows must be >= 1"),
    ("prune-model-missing", "drivers.prune", PRUNE + " --model {dir}/nowhere", 1,
     r"model: path '.*nowhere' does not exist"),
    ("prune-calib-missing", "drivers.prune", PRUNE + " --calib {dir}/no.txt", 1,
     r"calib: path '.*no\.txt' does not exist"),
    ("prune-vocab", "drivers.prune", PRUNE + " --model {bigvocab}", 1,
     r"160 tokens do not fit the model's vocab_size=128"),
    ("prune-pickle-only", "drivers.prune", PRUNE + " --model {pickle_only}", 1, r"only safetensors"),
    ("prune-tokenizer-damaged", "drivers.prune", PRUNE + " --model {badtok}", 1,
     r"badtok/tokenizer\.json: not a valid tokenizers file"),
    ("prune-truncated", "drivers.prune", PRUNE + " --model {truncated}", 1,
     r"model\.safetensors: not a valid safetensors file"),
    # -- eval.py, compare.py
    ("eval-model-missing", "eval", EVAL + " --model {dir}/nowhere", 1,
     r"model: path '.*nowhere' does not exist"),
    ("eval-tasks-missing", "eval", EVAL + " --tasks {dir}/no.jsonl", 1,
     r"tasks: path '.*no\.jsonl' does not exist"),
    ("eval-mode", "eval", EVAL + " --mode vote", 1, r"mode='vote', expected one of"),
    ("eval-seqlen", "eval", EVAL + " --seqlen 1", 1, r"need seqlen >= 2, .*got 1"),
    ("eval-max-examples", "eval", EVAL + " --max_examples -1", 1,
     r"max_examples and ppl_max_windows >= 0, .*got 16, -1"),
    ("eval-flag-typo", "eval", EVAL + " --max-examples 3", 2, r"unrecognized arguments: --max-examples"),
    ("compare-sparsity", "drivers.compare", "--domain med --sparsity 0.5 1.0 --out {dir}/cmp", 1,
     r"sparsity and curve values must be in \[0, 1\) and distinct, got \[0\.5, 1\.0\], \[\]"),
    ("compare-curve", "drivers.compare", "--domain med --sparsity 0.5 --curve 0.5 --out {dir}/cmp", 1,
     r"sparsity and curve values must be .* distinct, got \[0\.5\], \[0\.5\]"),
    ("eval-vocab", "eval", EVAL + " --model {bigvocab}", 1,
     r"160 tokens do not fit the model's vocab_size=128"),
    ("eval-tasks-bad-line", "eval", EVAL + " --tasks {badline}", 1,
     r"badline\.jsonl:2: field '<json>'"),
    ("eval-tasks-empty", "eval", EVAL + " --tasks {empty}", 1, r"empty\.jsonl: no examples"),
    ("eval-pickle-only", "eval", EVAL + " --model {pickle_only}", 1, r"only safetensors"),
    ("eval-truncated", "eval", EVAL + " --model {truncated}", 1,
     r"model\.safetensors: not a valid safetensors file"),
    ("eval-tokenizer-missing", "eval", EVAL + " --model {notok}", 1,
     r"notok/tokenizer\.json: no such file"),
    ("data-convert-malformed", "data", "convert --format pubmedqa --src {badpqa} "
     "--dst {dir}/pqa.jsonl", 1, r"ori_pqal\.json:1: field '123\.QUESTION': expected str, got int"),
    ("data-convert-no-format", "data", "convert --src {badpqa} --dst {dir}/pqa.jsonl", 1,
     r"convert needs --format"),
    ("data-convert-unknown-format", "data", "convert --format nosuchformat --src {badpqa} "
     "--dst {dir}/pqa.jsonl", 1, r"unknown --format 'nosuchformat'"),
    ("data-convert-missing-src", "data", "convert --format pubmedqa --src {dir}/none.json "
     "--dst {dir}/pqa.jsonl", 1, r"none\.json: no such file"),
    ("data-convert-dst-exists", "data", "convert --format pubmedqa --src {badpqa} --dst {calib}", 1,
     r"calib\.txt exists .*--overwrite"),
    ("eval-config", "eval", EVAL + " --model {badconfig}", 1,
     r"config\.json: unsupported hidden_act"),
]
# Runs that must succeed on a checkpoint asking for remote code (auto_map, modeling_*.py).
CLI_OK = [
    ("train-untrusted-dir", "train", TRAIN + " --model {evil} --method wanda"),
    ("prune-untrusted-dir", "drivers.prune", PRUNE + " --model {evil} --save {dir}/prune_saved"),
    ("eval-untrusted-dir", "eval", EVAL + " --model {evil} --ppl_file {calib}"),
]

DRIVER = """\
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
import torch, data, efx, eval, model, train       # imported once; each case forks from here
from drivers import compare, prune
with torch.device("meta"):     # load_model's first meta-device init imports torch._dynamo
    torch.nn.Embedding(2, 2)   # (~1.5 s): done once here too
codes = []
for i, (script, argv) in enumerate(json.load(open({cases!r}))):
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:     # the child is `python <script> <argv>`
        fd = os.open(os.path.join({out!r}, str(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = [script, *argv]
        try:         # `python -m <module>`: what the interpreter does with what reaches the top level
            runpy.run_module(script, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())   # the interpreter's traceback printer
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)   # skips interpreter teardown (~0.5 s with torch loaded)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def cli(world):
    """Run every CLI case (one forked process each): {case id: (exit status, output)}."""
    if not hasattr(os, "fork"):
        pytest.skip("the CLI driver forks (POSIX only)")
    paths = {k: str(v) for k, v in vars(world).items()}
    cases = [(c[0], c[1], c[2].format(**paths).split()) for c in CLI_CASES + CLI_OK]
    out = world.dir / "cli_out"
    out.mkdir()
    (world.dir / "cases.json").write_text(json.dumps([c[1:] for c in cases]))
    (world.dir / "driver.py").write_text(DRIVER.format(
        repo=str(REPO), cases=str(world.dir / "cases.json"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, str(world.dir / "driver.py")], cwd=world.dir, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    codes = json.loads(p.stdout.strip().splitlines()[-1])
    return {c[0]: (code, (out / str(i)).read_text()) for i, (c, code) in enumerate(zip(cases, codes))}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_input_cli_bad_input_one_line_error(cli, case):
    """Non-zero exit, no traceback, and the last line is `<script>: error: <what>` naming the
    argument, file, line or tensor at fault."""
    name, script, _, status, words = case
    code, out = cli[name]
    assert "Traceback" not in out, out[-3000:]
    assert code == status, f"exit status {code}, expected {status}:\n{out[-2000:]}"
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"{script.split('.')[-1]}.py: error: "), last
    assert re.search(words, last), f"{last!r} does not match {words!r}"


def test_safe_cli_runs_on_dir_asking_for_remote_code(cli, world):
    """train, efx and eval finish (status 0) on a checkpoint whose config.json and
    tokenizer_config.json carry auto_map / trust_remote_code and whose directory holds
    modeling_*.py files: none is imported, and nothing got unpickled in any CLI case."""
    for name, *_ in CLI_OK:
        code, out = cli[name]
        assert code == 0, f"{name}: exit {code}\n{out[-3000:]}"
    assert not world.code_marker.exists(), "a Python file of the checkpoint directory ran"
    assert not world.pickle_marker.exists(), "pytorch_model.bin was unpickled"
    saved = json.loads((world.dir / "prune_saved" / "config.json").read_text())
    assert "auto_map" not in saved and "trust_remote_code" not in saved


# ----------------------------------------------------------------------------- checkpoints

def _rewrite(fn):
    """Change model.safetensors with fn(state)."""
    def apply(path):
        state = load_file(path / "model.safetensors")
        fn(state)
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return apply


def _cut(keep):
    """Keep the first `keep` bytes (a fraction when < 1) of model.safetensors."""
    def apply(path):
        blob = (path / "model.safetensors").read_bytes()
        n = int(len(blob) * keep) if keep < 1 else int(keep)
        (path / "model.safetensors").write_bytes(blob[:n])
    return apply


def _config(**changes):
    return lambda path: _edit_json(path / "config.json", **changes)


def _drop_config_field(key):
    def apply(path):
        d = json.loads((path / "config.json").read_text())
        del d[key]
        (path / "config.json").write_text(json.dumps(d))
    return apply


def _write(name, data):
    return lambda path: (path / name).write_bytes(data)


def _pickle_only(path):
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(Evil(path / "PICKLE_LOADED")))


def _shard_outside(path):
    (path / "model.safetensors").rename(path.parent / "outside.safetensors")
    names = load_file(path.parent / "outside.safetensors").keys()
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "../outside.safetensors" for k in names}}))


K = "model.layers.0.mlp.down_proj.weight"
LOADER_CASES = {   # case: (damage to the checkpoint directory, exception, message regex)
    "truncated-half": (_cut(0.5), ValueError, r"model\.safetensors: not a valid safetensors file"),
    "truncated-last-byte": (_cut(0.999999), ValueError, r"model\.safetensors: not a valid safetensors"),
    "truncated-header": (_cut(20), ValueError, r"model\.safetensors: not a valid safetensors"),
    "empty-file": (_cut(0), ValueError, r"model\.safetensors: not a valid safetensors"),
    "garbage": (_write("model.safetensors", bytes(range(256)) * 8), ValueError,
                r"model\.safetensors: not a valid safetensors"),
    "tensor-missing": (_rewrite(lambda s: s.pop(K)), ValueError, rf"missing tensors \['{K}'\]"),
    "tensor-unexpected": (_rewrite(lambda s: s.update(extra=torch.zeros(2))), ValueError,
                          r"unexpected tensors \['extra'\]"),
    "tensor-shape": (_rewrite(lambda s: s.update({K: torch.zeros(64, 95)})), ValueError,
                     rf"tensor {K}: expected shape \(64, 96\), found \(64, 95\)"),
    "tensor-int": (_rewrite(lambda s: s.update({K: torch.ones(64, 96, dtype=torch.int64)})),
                   ValueError, rf"tensor {K} in .*: expected a floating-point dtype, found torch\.int64"),
    "tensor-bool": (_rewrite(lambda s: s.update({K: torch.ones(64, 96, dtype=torch.bool)})),
                    ValueError, r"expected a floating-point dtype, found torch\.bool"),
    "config-missing": (lambda p: (p / "config.json").unlink(), FileNotFoundError, r"no config\.json"),
    "config-invalid-json": (_write("config.json", b'{"vocab_size": 128,'), ValueError,
                            r"config\.json: not valid JSON \(Expecting"),
    "config-not-object": (_write("config.json", b"[1, 2]"), ValueError,
                          r"config\.json: expected a JSON object"),
    "config-field-missing": (_drop_config_field("hidden_size"), ValueError,
                             r"config\.json: missing required field\(s\) \['hidden_size'\]"),
    "config-zero": (_config(vocab_size=0), ValueError, r"vocab_size must be a positive integer, got 0"),
    "config-string": (_config(num_hidden_layers="2"), ValueError,
                      r"num_hidden_layers must be a positive integer, got '2'"),
    "config-heads": (_config(num_key_value_heads=3), ValueError,
                     r"num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    "config-model-type": (_config(model_type="gpt2"), ValueError, r"unsupported model_type: 'gpt2'"),
    "config-act": (_config(hidden_act="gelu"), ValueError, r"unsupported hidden_act: 'gelu'"),
    "config-rope-yarn": (_config(rope_scaling={"rope_type": "yarn", "factor": 4.0}), ValueError,
                         r"unsupported rope_scaling rope_type 'yarn'"),
    "config-rope-llama3-partial": (_config(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
                                   ValueError, r"rope_scaling llama3 needs"),
    "config-quantized": (_config(quantization_config={"quant_method": "gptq"}), ValueError,
                         r"unsupported quantization_config"),
    "pickle-only": (_pickle_only, FileNotFoundError,
                    r"no model\.safetensors.*\['pytorch_model\.bin'\].*only safetensors"),
    "shard-outside-dir": (_shard_outside, ValueError, r"must be a plain file name"),
}


@pytest.mark.parametrize("case", LOADER_CASES)
def test_input_loader_rejects_damaged_checkpoint(tiny_ckpt, case):
    """A clear error naming the file, field or tensor; never a pickle load (the autouse fixture
    refuses torch's pickle loader, and the pickle's marker must not appear)."""
    path, _ = tiny_ckpt
    damage, exc, words = LOADER_CASES[case]
    damage(path)
    with pytest.raises(exc, match=words):
        M.load_model(path)
    assert not (path / "PICKLE_LOADED").exists()


def test_input_float16_tensors_are_cast_on_load(tiny_ckpt):
    """Decision: a floating tensor of another float dtype is cast to the requested dtype, as HF
    casts to torch_dtype (an integer or bool tensor raises: see tensor-int above)."""
    path, model = tiny_ckpt
    _rewrite(lambda s: s.update({k: v.half() for k, v in s.items()}))(path)
    loaded = M.load_model(path, dtype=torch.float32)
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == torch.float32, k
        assert torch.equal(got, v.half().float()), k


def test_input_tokenizer_larger_than_model_vocab(tmp_path):
    """check_tokenizer (called by train, efx and eval before the weights load): a tokenizer of
    160 tokens does not fit vocab_size 128; 128 and fewer tokens do."""
    cfg = tiny_config()
    for n, fits in ((160, False), (129, False), (128, True), (100, True)):
        d = tmp_path / str(n)
        d.mkdir()
        write_tokenizer(d, n)
        tok = files.load_tokenizer(d)
        if fits:
            files.check_tokenizer(tok, cfg, d)
        else:
            with pytest.raises(ValueError, match=rf"tokenizer\.json: {n} tokens do not fit the "
                                                 r"model's vocab_size=128"):
                files.check_tokenizer(tok, cfg, d)


# ----------------------------------------------------------------------------- data

def test_input_long_examples_cut_and_counted_in_results(tmp_path, world, capsys):
    """Examples longer than max_len are cut (prompt from the left, completion at the right),
    counted in results.json["truncation"] and reported in the log."""
    rng = random.Random(1)
    rows = ([{"prompt": words(rng, 40), "completion": words(rng, 3)}] * 2         # prompt cut
            + [{"prompt": words(rng, 3), "completion": words(rng, 40)}] * 2       # completion cut
            + [{"prompt": words(rng, 6), "completion": words(rng, 4)}] * 4)
    out = tmp_path / "out"
    train.run(dict(model=str(world.ck), train=str(_jsonl(tmp_path / "long.jsonl", rows)),
                   calib=str(world.calib), method="dense", epochs=1, batch_size=4, max_train=0,
                   nsamples=2, seqlen=16, max_len=16, eval=False, device="cpu", out=str(out)))
    saved = json.loads((out / "results.json").read_text())
    assert saved["truncation"] == {"examples": 8, "prompt_cut": 2, "completion_cut": 2}
    assert ("max_len=16 (--max_len): 2 prompts (25%) and 2 completions of 8 examples are cut; "
            "--max_len 45 keeps every example whole") in capsys.readouterr().out      # 40 + 3 words, BOS, EOS


# ----------------------------------------------------------------------------- numerics

@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_numeric_nonfinite_calibration_stops_prune_before_any_change(make_model, method, bad):
    model = make_model()
    with torch.no_grad():
        model.model.embed_tokens.weight[5, 0] = bad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 9, 12, 40, 7, 3, 80, 100]] * 2)
    with pytest.raises(FloatingPointError, match=r"calibration statistic h of "
                                                 r"model\.layers\.0\.self_attn\.q_proj holds \d+ NaN.*"
                                                 r" \(the block's inputs overflow"):
        efx.prune(model, ids, method, 0.5, log=lambda *a: None)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True, msg=k)


def test_numeric_nonfinite_solve_raises():
    """NaN / inf reaching a solve raise at once (damping cannot fix them)."""
    g = torch.Generator().manual_seed(0)
    W, H = torch.randn(4, 8, generator=g), torch.eye(8)
    H[2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"sparsegpt H: the matrix holds 1 NaN and 0 inf"):
        efx.sparsegpt_prune(W, H, 0.5)
    A, d = torch.randn(2, 8, generator=g), torch.ones(8)
    d[1] = float("inf")
    mask = torch.rand(4, 8, generator=g) > 0.5
    with pytest.raises(FloatingPointError, match=r"pbs A D A\^T: the matrix holds"):
        efx.pbs_update(W, A, torch.zeros(4, 2), mask, d, 2.0)


@pytest.mark.parametrize("where", ["loss", "calibration"])
def test_numeric_nonfinite_stops_training_last_checkpoint_intact(tmp_path, world, monkeypatch, where):
    """NaN in the loss (step 3, the first of epoch 2) or inf in a calibration statistic (the
    pruning call before epoch 2): train.py stops with a one-line error; the checkpoint of epoch
    1 is byte for byte what was written and loads; no final model or results are written."""
    saved, real_save = [], files.save_checkpoint

    def save(path, *a, **kw):
        real_save(path, *a, **kw)
        saved.append(_sha(path))
    monkeypatch.setattr(files, "save_checkpoint", save)
    if where == "loss":
        real_loss, calls = train.completion_loss, []

        def loss(model, *a, **kw):      # training steps only: the probe losses run in eval mode
            calls.extend([1] * model.training)
            value = real_loss(model, *a, **kw)
            return value * float("nan") if len(calls) == 3 else value
        monkeypatch.setattr(train, "completion_loss", loss)
        words = r"train\.py: error: loss is nan at epoch 2 step 3: stopping; the last good checkpoint"
    else:
        real_calibrate = efx.calibrate_block

        def calibrate(*a, **kw):
            stats = real_calibrate(*a, **kw)
            stats["down_proj"]["h"][3] = float("inf")
            return stats
        monkeypatch.setattr(efx, "calibrate_block", calibrate)
        words = (r"train\.py: error: efx\.prune: calibration statistic h of "
                 r"model\.layers\.0\.mlp\.down_proj holds 0 NaN and 1 inf")
    out = tmp_path / "out"
    argv = (f"--model {world.ck} --train {world.train} --calib {world.calib} --eval false "
            f"--device cpu --epochs 3 --batch_size 4 --max_train 0 --nsamples 2 --seqlen 16 "
            f"--max_len 32 --log_every 100 --prune_every_steps 0 --out {out}").split()
    with pytest.raises(SystemExit, match=words):
        train.main(argv)
    ckpt = out / "checkpoint.safetensors"
    assert len(saved) == 1 and _sha(ckpt) == saved[0]
    with safe_open(ckpt, "pt") as f:
        assert json.loads(f.metadata()["state"])["epoch"] == 0
    assert "rng.cpu" in load_file(ckpt)
    assert not (out / "model").exists() and not (out / "results.json").exists()


def test_numeric_singular_sparsegpt_system_gets_more_damping():
    """H = X^T X of 4 tokens with two equal +-1 columns: the Cholesky pivot of column 1 is
    exactly 4 - 2 * 2 = 0, so without damping (percdamp 0) the factorisation fails; the damping
    is raised, `info` says so, and the result is finite with exact zeros."""
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 2, (4, 8), generator=g).float() * 2 - 1
    X[:, 1] = X[:, 0]
    H, W = X.T @ X, torch.randn(6, 8, generator=g)
    assert int(torch.linalg.cholesky_ex(H).info) != 0
    info = {}
    W_new, keep = efx.sparsegpt_prune(W, H, 0.5, percdamp=0.0, info=info)
    first = info["damping_increased"][0]
    assert first["what"] == "sparsegpt H" and first["from"] == 0.0 and first["to"] > 0
    assert bool(torch.isfinite(W_new).all()) and not W_new[~keep].any()


@pytest.mark.parametrize("kappa, what", [(1.0, "pbs A D A^T"), (0.5, "pbs per-row K")])
def test_numeric_singular_pbs_system_gets_more_damping(kappa, what):
    """A zero row of A makes A D A^T exactly singular; with lam = 0 the damping is raised
    (E14 one solve, and E13 per row), reported in `info`, and delta_B is finite."""
    g = torch.Generator().manual_seed(0)
    W, A = torch.randn(6, 16, generator=g), torch.randn(4, 16, generator=g)
    A[0] = 0
    mask = torch.rand(6, 16, generator=g) > 0.5
    info = {}
    dB = efx.pbs_update(W, A, torch.zeros(6, 4), mask, torch.rand(16, generator=g) + 0.1, 2.0,
                        kappa=kappa, lam=0.0, info=info)
    assert info["damping_increased"][0]["what"] == what
    assert bool(torch.isfinite(dB).all())


def test_numeric_prune_report_names_damping_increases(make_model):
    """Through efx.prune: 8 calibration tokens for 64 inputs make every SparseGPT H singular
    (percdamp 0), and zero rows of every LoRA A make every PBS system singular (pbs_damp 0):
    the report lists each map and the log says so."""
    ids = torch.randint(3, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    logs = []
    rep = efx.prune(make_model(), ids, "sparsegpt", 0.5, percdamp=0.0, log=logs.append)
    maps = {e["map"] for e in rep["damping_increased"] if e["what"] == "sparsegpt H"}
    assert maps == {n for n, _ in M.lora_modules(make_model())}
    assert any("sparsegpt H singular, damping 0 ->" in line for line in logs)
    model = M.add_lora(make_model(), 4, 8.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _, m in M.lora_modules(model):
            m.lora_A[0] = 0
    rep = efx.prune(model, ids, "foresight", 0.5, pbs=True, pbs_damp=0.0, log=logs.append)
    assert {e["map"] for e in rep["damping_increased"]} == maps
    assert {e["what"] for e in rep["damping_increased"]} == {"pbs A D A^T"}


# ----------------------------------------------------------------------------- interrupted runs

def test_crash_kill_during_checkpoint_write_keeps_previous(tmp_path, make_model, monkeypatch):
    """save_checkpoint dies half way through the temporary file: the previous checkpoint is
    byte for byte intact and load_checkpoint restores it."""
    def setup(seed):
        model = M.add_lora(make_model(), 4, 8.0, generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model(torch.arange(3, 11)[None]).float().square().mean().backward()
        opt.step()                                    # AdamW moments exist
        return model, opt
    model, opt = setup(0)
    ckpt = tmp_path / "checkpoint.safetensors"
    state = {"epoch": 0, "losses": [1.0], "prune_reports": [], "sched": {}}
    files.save_checkpoint(ckpt, M.lora_modules(model), opt, {}, state)
    good = _sha(ckpt)
    expected = {n: m.lora_A.detach().clone() for n, m in M.lora_modules(model)}
    later, later_opt = setup(1)
    monkeypatch.setattr(files, "save_file", _torn_save)
    with pytest.raises(OSError, match="simulated kill"):
        files.save_checkpoint(ckpt, M.lora_modules(later), later_opt, {}, {**state, "epoch": 1})
    assert _sha(ckpt) == good
    fresh, fresh_opt = setup(2)
    assert files.load_checkpoint(ckpt, M.lora_modules(fresh), fresh_opt, {})["epoch"] == 0
    for n, m in M.lora_modules(fresh):
        assert torch.equal(m.lora_A, expected[n]), n


def test_crash_resume_from_checkpoint_of_other_config_is_refused(tmp_path, make_model):
    """--resume with a checkpoint written for another LoRA rank: a clear error naming the
    checkpoint and the first mismatching tensors, before anything is copied."""
    def adamw(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ckpt = tmp_path / "checkpoint.safetensors"
    model = M.add_lora(make_model(), 4, 8.0)
    files.save_checkpoint(ckpt, M.lora_modules(model), adamw(model), {}, {"epoch": 0})
    other = M.add_lora(make_model(), 8, 16.0)
    with pytest.raises(ValueError, match=r"checkpoint\.safetensors: .*"
                                         r"\['model\.model\.layers\.0\.self_attn\.q_proj\.lora_A'"):
        files.load_checkpoint(ckpt, M.lora_modules(other), adamw(other), {})


def test_crash_kill_during_model_save_keeps_previous(tmp_path, make_model, monkeypatch):
    """save_model writes model.safetensors (and config.json) to a temporary file and renames
    it: a write that dies half way leaves the previous model loadable and unchanged."""
    first, second = make_model(seed=0), make_model(seed=1)
    out = tmp_path / "model"
    M.save_model(first, out)
    shas = {fn: _sha(out / fn) for fn in ("model.safetensors", "config.json")}
    monkeypatch.setattr(files, "save_file", _torn_save)
    with pytest.raises(OSError, match="simulated kill"):
        M.save_model(second, out)
    assert {fn: _sha(out / fn) for fn in shas} == shas
    loaded = M.load_model(out)
    for k, v in first.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_crash_sigkill_then_resume_bit_identical(tmp_path, world):
    """`python train.py` (efx, PBS, dropout on) killed with SIGKILL at a seeded random moment
    after its first checkpoint: the checkpoint on disk loads, no final output was written, and
    `--resume` ends with a saved model equal tensor for tensor (torch.equal) to an
    uninterrupted run of the same config (which runs alongside)."""
    args = [sys.executable, str(REPO / "train.py"), "--model", str(world.ck), "--train",
            str(world.train), "--calib", str(world.calib), "--eval", "false", "--device", "cpu",
            "--epochs", str(KILL_EPOCHS), "--batch_size", "4", "--max_train", "0", "--nsamples",
            "2", "--seqlen", "16", "--max_len", "32", "--lora_dropout", "0.1", "--log_every", "1000",
            "--lr", "0.05"]      # large steps: masks move, so a badly restored S-bar (E7) shows
    env = {**os.environ, "OMP_NUM_THREADS": "1"}      # the same kernels in every process
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ckpt = cut_dir / "checkpoint.safetensors"
    with open(tmp_path / "ref.log", "w") as ref_log, open(tmp_path / "cut.log", "w") as cut_log:
        ref = subprocess.Popen(args + ["--out", str(ref_dir)], env=env, stdout=ref_log,
                               stderr=subprocess.STDOUT)
        victim = subprocess.Popen(args + ["--out", str(cut_dir)], env=env, stdout=cut_log,
                                  stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not ckpt.exists():
            assert victim.poll() is None, (tmp_path / "cut.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint after 120 s"
            time.sleep(0.005)
        delay = random.Random(6).uniform(*KILL_DELAY_S)
        time.sleep(delay)
        assert victim.poll() is None, f"the run ended within {delay:.3f} s: raise KILL_EPOCHS"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    with safe_open(ckpt, "pt") as f:                  # the checkpoint on disk is whole
        epoch = json.loads(f.metadata()["state"])["epoch"]
    assert 0 <= epoch < KILL_EPOCHS and "rng.cpu" in load_file(ckpt)
    assert not (cut_dir / "results.json").exists()
    print(f"SIGKILL {delay:.3f} s after the first checkpoint; resuming after epoch {epoch + 1}")
    resumed = subprocess.run(args + ["--out", str(cut_dir), "--resume"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a = load_file(ref_dir / "model" / "model.safetensors")
    b = load_file(cut_dir / "model" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max abs diff {(a[k] - b[k]).abs().max().item():.3g}"
    losses = [json.loads((d / "results.json").read_text())["losses"] for d in (ref_dir, cut_dir)]
    assert losses[0] == losses[1]


# ----------------------------------------------------------------------------- untrusted files

def test_safe_no_unsafe_deserialisation_in_project():
    """Every call of torch's loader in the project's Python files passes weights_only=True, and
    nothing calls pickle.load / pickle.loads (parsed with ast: comments and strings are not
    calls, and a call may span lines). Today there are none; this guards future code."""
    offenders = []
    for f in sorted(REPO.glob("*.py")) + sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            owner, attr = node.func.value.id, node.func.attr
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                       and k.value.value is True for k in node.keywords)
            if (owner == "torch" and attr == "load" and not safe) or \
                    (owner == "pickle" and attr in ("load", "loads")):
                offenders.append(f"{f.name}:{node.lineno}: {owner}.{attr}")
    assert not offenders, offenders


def test_safe_code_in_checkpoint_dir_is_never_imported(tmp_path, tiny_ckpt):
    """config.json / tokenizer_config.json with auto_map and trust_remote_code, and
    modeling_*.py files beside them: loading, running and re-saving the model imports none of
    them (the marker they would create never appears), and the saved config drops auto_map."""
    path, _ = tiny_ckpt
    marker = tmp_path / "CODE_RAN"
    _plant_code(path, marker)
    model, tok = M.load_model(path), files.load_tokenizer(path)
    model(torch.tensor([tok.encode("w1 w2 w3")]))
    M.save_model(model, tmp_path / "resaved")
    assert not marker.exists()
    assert not [m for m in sys.modules if m.split(".")[0].endswith("_evil")]
    assert str(path) not in sys.path
    saved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert "auto_map" not in saved and "trust_remote_code" not in saved
