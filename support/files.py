"""files.py: the files efx reads and writes, each error naming its file.

* config.json: the two HF dialects -> the fields model.Config takes, refusing what the decoder
  cannot run (config_from_hf), and back (config_to_hf).
* Weights: safetensors only (single file or sharded index); nothing in a directory is ever
  executed or unpickled. Writes go to a temporary file and are renamed into place.
* tokenizer.json via `tokenizers`, with the special ids of tokenizer_config.json / config.json
  / generation_config.json.
* train.py's checkpoint (weights, adapters, optimizer, RNG) for --resume.
* Task files (JSONL, CSV, JSON) line by line, for data.py's loaders: DataError names the
  file, the line and the field.

No project imports: model.py builds the Transformer on top of these (load_model, save_model),
data.py the task format and its loaders.
Every bad file raises ValueError / FileNotFoundError naming the file.
"""
import csv
import json
import os
import shutil
from dataclasses import MISSING, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                   "special_tokens_map.json")


# ---------------------------------------------------------------------------- config.json
def read_json(fn) -> dict:
    """A JSON object from fn; a missing, unreadable or non-object file names itself."""
    try:
        d = json.loads(Path(fn).read_text())
    except (UnicodeDecodeError, ValueError) as e:              # JSONDecodeError is a ValueError
        raise ValueError(f"{fn}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{fn}: expected a JSON object, found {type(d).__name__}")
    return d


def config_from_hf(cls, d: dict) -> dict:
    """HF config dict (both dialects) -> keyword arguments of the dataclass cls (model.Config).
    Values the decoder cannot run raise ValueError rather than being ignored."""
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
    if missing:
        raise ValueError(f"missing required field(s) {missing}")
    mt, act, sw = d.get("model_type"), d.get("hidden_act", "silu"), d.get("sliding_window")
    unsupported = {                          # field -> why it cannot load (falsy: fine)
        "hidden_act": act != "silu" and f"{act!r} (only 'silu')",
        "mlp_bias": d.get("mlp_bias") and "true",
        "quantization_config": d.get("quantization_config") and "present",
        "partial_rotary_factor": d.get("partial_rotary_factor", 1.0) != 1.0 and "!= 1",
        # Sliding-window attention needs a banded mask: refuse rather than ignore it.
        "use_sliding_window": d.get("use_sliding_window") and f"true (sliding_window {sw})",
        "sliding_window": mt == "mistral" and sw is not None and f"{sw} (must be null)",
        "layer_types": any(t != "full_attention" for t in d.get("layer_types") or [])
        and "sliding-window layers"}
    for key, why in unsupported.items():
        if why:
            raise ValueError(f"unsupported {key}: {why}")
    # Two dialects: top-level rope_theta / rope_scaling, or rope_parameters (newer HF).
    scaling = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = scaling.pop("rope_theta", d.get("rope_theta", 10000.0))
    rtype = scaling.get("rope_type", scaling.pop("type", "default"))   # "type": old name
    if rtype not in ("default", "llama3"):
        raise ValueError(f"unsupported rope_scaling rope_type {rtype!r} "
                         "(only 'default' and 'llama3')")
    if rtype == "llama3" and any(k not in scaling for k in LLAMA3_ROPE_KEYS):
        raise ValueError(f"rope_scaling llama3 needs {LLAMA3_ROPE_KEYS}, got {sorted(scaling)}")
    scaling["rope_type"] = rtype
    kw = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
    kw.update(model_type=mt, rope_theta=float(theta),   # None: refused by Config
              rope_scaling=scaling if rtype == "llama3" else None,
              torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"))
    return kw


def config_to_hf(d: dict) -> dict:
    """model.Config as a dict -> HF config dict (top-level rope_theta / rope_scaling)."""
    d = dict(d)
    del d["qk_norm"]                         # implied by model_type qwen3
    if d["model_type"] == "qwen2":
        del d["attention_bias"]              # implied by model_type qwen2
    if d["model_type"] != "llama":
        d.update(use_sliding_window=False, sliding_window=None)
    return {**d, "architectures": [ARCHITECTURES[d["model_type"]]], "hidden_act": "silu"}


# -------------------------------------------------------------------------------- weights
def check_keys(found: set, expected, where):
    missing, unexpected = sorted(set(expected) - found), sorted(found - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: missing tensors {missing[:5]}, unexpected tensors "
                         f"{unexpected[:5]} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected)")


def check_shape(name, expected, found):
    if tuple(expected) != tuple(found):
        raise ValueError(f"tensor {name}: expected shape {tuple(expected)}, found {tuple(found)}")


def open_safetensors(fn):
    """safe_open that names the file when it is truncated, corrupt or not safetensors at all."""
    try:
        return safe_open(str(fn), framework="pt")
    except SafetensorError as e:
        raise ValueError(f"{fn}: not a valid safetensors file ({e})") from None


def atomic_save(tensors: dict, fn, metadata=None):
    """save_file to a temporary file, then rename: a kill mid-write leaves the old file."""
    tmp = Path(fn).with_name(Path(fn).name + ".tmp")
    save_file(tensors, str(tmp), metadata={**(metadata or {}), "format": "pt"})
    os.replace(tmp, fn)


def atomic_write_text(text: str, fn):
    """UTF-8 text to a temporary file, then rename (as atomic_save)."""
    tmp = Path(fn).with_name(Path(fn).name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, fn)


def weight_files(path: Path) -> dict:
    """{tensor name: safetensors file} from model.safetensors or a sharded index."""
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a 'weight_map' object")
        for fn in set(weight_map.values()):
            if Path(fn).name != fn:          # shards must sit in the checkpoint directory
                raise ValueError(f"{index}: shard {fn!r} must be a plain file name")
        return {k: path / fn for k, fn in weight_map.items()}
    if not single.exists():
        others = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in path.glob(pattern))
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json"
                                f"{f' (found {others[:3]})' if others else ''}; only safetensors"
                                " weights are read (pickle files can run code): convert them first")
    with open_safetensors(single) as f:
        return {k: single for k in f.keys()}


def copy_tokenizer_files(src, dst):
    """The tokenizer files of checkpoint src into dst (a saved model stays usable)."""
    if src is not None and Path(src).resolve() != Path(dst).resolve():
        for fn in TOKENIZER_FILES:
            if (Path(src) / fn).exists():
                shutil.copyfile(Path(src) / fn, Path(dst) / fn)


# --------------------------------------------------------------------- training checkpoint
def save_checkpoint(fn, maps, opt, score_state, state):
    """train.py's checkpoint, one safetensors file (no pickle): the weights and adapters of
    maps [(name, LoRALinear)], AdamW moments, score averages, RNG state; `state` (plain values)
    as JSON in the metadata. Written atomically: a kill at any moment leaves the previous one."""
    tensors = {f"model.{name}.{a}": getattr(m, a) for name, m in maps for a in ("weight", "lora_A", "lora_B")}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        for k, v in opt.state.get(p, {}).items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors.update({f"score.{k}": v for k, v in score_state.items()})
    tensors["rng.cpu"] = torch.get_rng_state()
    atomic_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, fn,
                {"state": json.dumps(state)})


def checkpoint_state(fn) -> dict:
    """The plain values save_checkpoint stored (epoch, losses, ...), without reading a tensor."""
    with safe_open(str(fn), "pt") as f:
        return json.loads(f.metadata()["state"])


def load_checkpoint(fn, maps, opt, score_state) -> dict:
    """Restore what save_checkpoint wrote and return its state. A truncated or foreign file, or
    one of another configuration, raises ValueError naming it (delete it to start over)."""
    try:
        with safe_open(str(fn), "pt") as f:
            t, state = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["state"])
    except (SafetensorError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{fn}: not a readable checkpoint ({type(e).__name__}: {e}); "
                         "delete it to start over") from None
    want = {f"model.{n}.{a}": getattr(m, a).shape for n, m in maps for a in ("weight", "lora_A", "lora_B")}
    bad = [k for k, shape in want.items() if k not in t or t[k].shape != shape]
    bad += [] if "rng.cpu" in t else ["rng.cpu"]
    if bad:
        raise ValueError(f"{fn}: tensors missing or of another shape {bad[:3]} ({len(bad)} in all): "
                         "a checkpoint of another configuration? delete it to start over")
    with torch.no_grad():
        for name, m in maps:
            for attr in ("weight", "lora_A", "lora_B"):
                getattr(m, attr).copy_(t[f"model.{name}.{attr}"])
    dev = maps[0][1].weight.device
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        keys = [k for k in t if k.startswith(f"optim.{i}.")]
        if keys:
            opt.state[p] = {k.split(".")[-1]: t[k].to(dev) if t[k].dim() else t[k] for k in keys}
    score_state.update({k[len("score."):]: v for k, v in t.items() if k.startswith("score.")})
    torch.set_rng_state(t["rng.cpu"])
    return state


# ----------------------------------------------------------------------- task files (data.py)
class DataError(ValueError):
    """Malformed input; the message names the file, the line (or entry) and the field."""


def fail(path, line, field, what):
    raise DataError(f"{path}:{line}: field '{field}': {what}")


def read_jsonl(path):
    """[(line number, object)] of a JSONL file; invalid JSON names the line."""
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                fail(path, i, "<json>", f"invalid JSON: {e.msg} at column {e.colno}")
    return rows


def read_csv(path):
    """[(line where the record starts, row)] of the non-empty records of a csv file."""
    with open(path, encoding="utf-8", newline="") as f:
        reader, rows, start = csv.reader(f), [], 1
        for row in reader:
            if any(row):
                rows.append((start, row))
            start = reader.line_num + 1
    return rows


def read_json_text(path):
    """(text, object) of a JSON file; invalid JSON names the line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as e:
        fail(path, e.lineno, "<json>", f"invalid JSON: {e.msg}")


def line_of(text, key):
    """Line of the first `"key"` in a JSON text, so that dict-shaped files can name a line too."""
    pos = text.find(json.dumps(key))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else "?"


# ------------------------------------------------------------------------------ tokenizer
class Tokenizer:
    """tokenizer.json via `tokenizers`. encode adds no special tokens except BOS on request;
    bos/eos/pad ids come from tokenizer_config.json, else config.json, else
    generation_config.json (first entry of a list). `.add_bos`: should prompts start with BOS."""

    def __init__(self, path):
        from tokenizers import Tokenizer as _Tokenizer
        path, fn = Path(path), Path(path) / "tokenizer.json"
        if not fn.is_file():
            raise FileNotFoundError(f"{fn}: no such file (the model directory needs its "
                                    "tokenizer.json)")
        try:
            self.tok = _Tokenizer.from_file(str(fn))
        except Exception as e:               # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{fn}: not a valid tokenizers file ({str(e)[:120]})") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        srcs = [read_json(path / fn) for fn in
                ("tokenizer_config.json", "config.json", "generation_config.json")
                if (path / fn).exists()]
        self.bos_id, self.eos_id, self.pad_id = (self._special(srcs, k)
                                                 for k in ("bos", "eos", "pad"))
        # Whether prompts start with BOS: tokenizer_config's add_bos_token, else whether
        # tokenizer.json's post-processor prepends it (Llama 3 style).
        tc = srcs[0] if (path / "tokenizer_config.json").exists() else {}
        auto = self.tok.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]
        self.add_bos = bool(tc.get("add_bos_token", auto and self.bos_id is not None))

    def _special(self, srcs, kind):
        for src in srcs:
            tok, tid = src.get(f"{kind}_token"), src.get(f"{kind}_token_id")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if isinstance(tok, str) and self.tok.token_to_id(tok) is not None:
                return self.tok.token_to_id(tok)
            tid = (tid or [None])[0] if isinstance(tid, list) else tid
            if isinstance(tid, int):
                return tid
        return None

    def encode(self, text: str, bos: bool = False) -> list:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def check_tokenizer(tok, cfg, where=""):
    """Every id the tokenizer can produce must index the embedding table (cfg.vocab_size rows);
    a larger vocabulary would fail (or index garbage) only when such a token first appears."""
    specials = {k: getattr(tok, f"{k}_id") for k in ("bos", "eos", "pad")}
    bad = {k: v for k, v in specials.items() if v is not None and not 0 <= v < cfg.vocab_size}
    if tok.vocab_size > cfg.vocab_size or bad:
        raise ValueError(f"{where}{'/' if where else ''}tokenizer.json: {tok.vocab_size} tokens"
                         f"{f' (special ids {bad})' if bad else ''} do not fit the model's "
                         f"vocab_size={cfg.vocab_size} (config.json)")


def load_tokenizer(path, cfg=None) -> Tokenizer:
    """Tokenizer of a checkpoint directory; with cfg (model.Config) checked against it."""
    tok = Tokenizer(path)
    if cfg is not None:
        check_tokenizer(tok, cfg, path)
    return tok
