"""LLaMA-family decoder and LoRA adapters in plain torch; HF checkpoint directories in and out.

* The decoder (method §2): RMSNorm, rotate-half RoPE (optional llama3 scaling), GQA
  attention via SDPA, SwiGLU MLP, tied or untied lm_head, Qwen2 q/k/v bias, Qwen3 per-head q/k
  RMSNorm. Module and tensor names equal HF's: HF checkpoint directories load with no name
  table, and saved directories load back into HF tools. Unsupported config values raise.
* LoRA on q, k, v, o, gate, up, down: method (E0) forward, merge, masked merge.
* Greedy KV-cache generation, load_model / save_model (the files themselves: files.py), the
  exact-zero count of a weight (method §9), a device picker. Tests: tests/test_model.py.
* Every step in its plain form. Three have a faster form in support/speedups.py (same
  results), switched in by SPEEDUPS where they pay: the adapters' dropout and the loss in
  training, the weight layout on CPU.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from support import files, speedups
from support.files import ARCHITECTURES, LLAMA3_ROPE_KEYS

IGNORE = -100             # label without loss (prompt, padding): data.IGNORE, torch's default
SEVEN_MAPS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SPEEDUPS = True           # False: the plain forms only (tests compare the two; support/speedups.py)


# --------------------------------------------------------------------------------- config
@dataclass
class Config:
    """Model hyper-parameters under HF `config.json` field names."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None   # None: = num_attention_heads (no GQA)
    head_dim: int | None = None              # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None         # None, or {"rope_type": "llama3", "factor", ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False             # bias on q, k, v (and o, except for qwen2)
    qk_norm: bool = False                    # per-head RMSNorm on q and k before RoPE (qwen3)
    model_type: str = "llama"                # llama | qwen2 | qwen3 | mistral
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "float32"             # dtype the weights are stored in

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"unsupported model_type: {self.model_type!r} "
                             f"(supported: {', '.join(ARCHITECTURES)})")
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim"):
            v = getattr(self, k)
            if v is not None and (type(v) is not int or v <= 0):
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a "
                             f"multiple of num_key_value_heads={self.num_key_value_heads}")
        self.attention_bias |= self.model_type == "qwen2"   # Qwen2: always q/k/v bias
        self.qk_norm |= self.model_type == "qwen3"

    @classmethod
    def from_hf(cls, d: dict) -> "Config":
        """Parse an HF config dict (both dialects); unsupported values raise ValueError."""
        return cls(**files.config_from_hf(cls, d))

    def to_hf(self) -> dict:
        """HF config dict (top-level rope_theta / rope_scaling dialect, torch_dtype)."""
        return files.config_to_hf(asdict(self))


# ------------------------------------------------------------------------ building blocks
class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), statistics in float32, cast back (as HF)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # BEGIN SOLUTION T1
        # F.rms_norm: x * rsqrt(mean(x^2) + eps), fused
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)
        # END SOLUTION T1


def rope_inv_freq(cfg: Config) -> torch.Tensor:
    """theta^(-2i/D) for i < D/2 (float32), with llama3 scaling when configured."""
    # BEGIN SOLUTION T1
    D = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    if cfg.rope_scaling is None:
        return inv
    # llama3: wavelengths above old_ctx/lo are divided by `factor`, those below old_ctx/hi
    # kept, and a linear blend in between (Llama 3.1 reference code).
    factor, lo, hi, old_ctx = (cfg.rope_scaling[k] for k in LLAMA3_ROPE_KEYS)
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old_ctx / lo, inv / factor, inv)
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    return torch.where((wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo), blended, scaled)
    # END SOLUTION T1


def apply_rope(x, cos, sin):
    """x (..., T, D), cos/sin (T, D): the pair (x_i, x_{i+D/2}) rotates by pos * inv_freq[i]."""
    # BEGIN SOLUTION T1
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
    # END SOLUTION T1


class KVCache:
    """Keys and values of every block, in (B, H_kv, capacity, D) buffers written in place (no
    copy of the past per token); capacity: prompt + new tokens when known, else grown."""

    def __init__(self, num_layers: int, capacity: int = 0):
        self.capacity, self.kv, self.lens = capacity, [None] * num_layers, [0] * num_layers

    @property
    def seq_len(self) -> int:                # positions held
        return self.lens[0]

    def update(self, i, k, v):
        """Append block i's k, v (B, H_kv, T, D); return its keys and values so far, views
        (B, H_kv, n, D). A one-row cache widens to B rows: one prompt, B continuations (eval)."""
        p, n, old = self.lens[i], self.lens[i] + k.shape[2], self.kv[i]
        if old is None or n > old[0].shape[2] or k.shape[0] != old[0].shape[0]:
            self.capacity = max(n, self.capacity, 2 * p)
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.kv[i] = (k.new_empty(shape), v.new_empty(shape))
            for new, past in zip(self.kv[i], old if p else ()):    # a one-row past broadcasts
                new[:, :, :p] = past[:, :, :p]
        for buf, x in zip(self.kv[i], (k, v)):
            buf[:, :, p:n] = x
        self.lens[i] = n
        return self.kv[i][0][:, :, :n], self.kv[i][1][:, :, :n]


class LoRALinear(nn.Module):
    """Frozen base linear W (m x n) plus an optional low-rank adapter, method (E0):
    y = W x + s B (A drop(x)), s = alpha / r, A (r x n) Kaiming-uniform, B (m x r) zero
    (LoRA, Hu et al. 2021, section 4.1). Adapters are float32 whatever W's dtype; r = 0 is a
    plain linear with HF state-dict keys."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.set_lora(0, 0.0)                # no adapter: a plain linear

    def set_lora(self, r: int, alpha: float, dropout: float = 0.0, generator=None):
        """Attach a fresh adapter (A Kaiming-uniform, B = 0); r = 0 removes it."""
        self.r, self.alpha, self.scaling = int(r), float(alpha), alpha / r if r > 0 else 0.0
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if SPEEDUPS and dropout > 0:         # the same distribution from fewer random numbers
            self.lora_dropout = speedups.GapDropout(dropout)
        dev = self.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev)) if r else None
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev)) if r else None
        self.reset_lora(generator)

    @torch.no_grad()
    def reset_lora(self, generator=None):
        """A ~ Kaiming-uniform(a=sqrt 5), i.e. U(-1/sqrt(n), 1/sqrt(n)) as nn.Linear; B = 0."""
        if self.r:
            # BEGIN SOLUTION T2
            bound, dev = 1 / math.sqrt(self.in_features), getattr(generator, "device", None)
            a = torch.empty(self.lora_A.shape, device=dev or self.lora_A.device)
            self.lora_A.copy_(a.uniform_(-bound, bound, generator=generator))
            self.lora_B.zero_()
            # END SOLUTION T2

    def augmented_weight(self, scale=None):
        """W~ = W + s B A in float32 (method (E5)); scale replaces s (1: the E6 code form). With no
        adapter or B = 0 (just after a merge) this is W itself (float32): callers only read it."""
        w = self.weight.float()
        if self.r == 0 or not self.lora_B.any():
            return w
        # BEGIN SOLUTION T2
        return w + (self.scaling if scale is None else scale) * (self.lora_B @ self.lora_A)
        # END SOLUTION T2

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.r == 0:
            return y
        # BEGIN SOLUTION T2
        # Two thin matmuls, never the m x n update; s scales the (..., r) middle, not (..., m).
        u = F.linear(self.lora_dropout(x).float(), self.lora_A) * self.scaling
        return y + F.linear(u, self.lora_B).to(y.dtype)
        # END SOLUTION T2

    @torch.no_grad()
    def merge(self, mask=None):
        """W <- W + s B A, or W <- M * (W + s B A) (method (E0)); then B = 0. Idempotent."""
        # BEGIN SOLUTION T2
        w = self.augmented_weight()                 # a new tensor when r > 0
        self.weight.copy_((w if mask is None else w.mul_(mask.to(w.device))).to(self.weight.dtype))
        if self.r:
            self.lora_B.zero_()
        # END SOLUTION T2

    def extra_repr(self):
        return f"{self.in_features}->{self.out_features}, bias={self.bias is not None}, r={self.r}"


class Attention(nn.Module):
    def __init__(self, cfg: Config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx           # its place in a KVCache
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias, H = cfg.attention_bias, cfg.hidden_size
        self.q_proj = LoRALinear(H, self.nh * self.hd, bias)
        self.k_proj = LoRALinear(H, self.nkv * self.hd, bias)
        self.v_proj = LoRALinear(H, self.nkv * self.hd, bias)
        self.o_proj = LoRALinear(self.nh * self.hd, H, bias and cfg.model_type != "qwen2")
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        # BEGIN SOLUTION T1
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)  # (B, Hkv, T, D)
        if hasattr(self, "q_norm"):          # Qwen3: RMSNorm over each head's D features
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        q = apply_rope(q.transpose(1, 2), cos, sin)                         # (B, H, T, D)
        k = apply_rope(k.transpose(1, 2), cos, sin)                         # (B, Hkv, T, D)
        past = 0 if cache is None else cache.lens[self.layer_idx]
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                       # (B, Hkv, past+T, D)
        mask = None                          # past == 0: causal; T == 1: sees every key
        if past and T > 1:                   # query i sits at position past + i: keys <= it
            pos = torch.arange(past + T, device=x.device)
            mask = pos <= pos[past:, None]                                  # (T, past + T)
        # GQA: query head h reads kv head floor(h / g); enable_gqa does it without copying
        # k and v to every query head (repeat_interleave: ~84 ms per SmolLM2 train step).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0 and T > 1,
                                           enable_gqa=self.nh != self.nkv)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))
        # END SOLUTION T1


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.gate_proj = LoRALinear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = LoRALinear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = LoRALinear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):                    # SwiGLU
        # BEGIN SOLUTION T1
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # END SOLUTION T1


class Block(nn.Module):
    def __init__(self, cfg: Config, layer_idx: int = 0):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        """x (B, T, hidden); cos, sin (T, head_dim) from Transformer.rope."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


# ---------------------------------------------------------------------------------- model
class Transformer(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config, self.path = config, None          # path: set by load_model
        self.model = nn.ModuleDict(dict(                # HF's `model.model`
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers)),
            norm=RMSNorm(config.hidden_size, config.rms_norm_eps)))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        for m in self.modules():             # HF init (initializer_range 0.02); free on meta
            if isinstance(m, (nn.Linear, LoRALinear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rope(self, T: int, device, start_pos: int = 0):
        """(cos, sin), each (T, head_dim) float32, for positions start_pos .. start_pos+T-1."""
        pos = torch.arange(start_pos, start_pos + T, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, rope_inv_freq(self.config).to(device))    # (T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)                             # rotate-half layout
        return emb.cos(), emb.sin()

    def hidden(self, input_ids, cache: KVCache | None = None):
        """input_ids (B, T) -> final-norm hidden states (B, T, hidden), before lm_head.
        A KVCache is filled in place; positions continue after what it holds."""
        x = self.model.embed_tokens(input_ids)                             # (B, T, hidden)
        start_pos = 0 if cache is None else cache.seq_len
        cos, sin = self.rope(input_ids.shape[1], x.device, start_pos)
        for block in self.model.layers:
            x = block(x, cos, sin, cache)
        return self.model.norm(x)

    def forward(self, input_ids, cache: KVCache | None = None, labels=None, n_tokens=1):
        """input_ids (B, T) -> logits (B, T, vocab), every position, in the model's dtype.
        With labels (B, T) (data.py: aligned with input_ids, IGNORE = no loss): the training
        loss instead, sum of next-token CE over labelled tokens / n_tokens (method §8),
        with lm_head only where a label is. Keyword, so DDP can wrap it."""
        h = self.hidden(input_ids, cache)
        if labels is None:
            return self.lm_head(h)
        # Position t predicts token t+1: shift the labels, not the (B, T, vocab) logits.
        target = F.pad(labels[:, 1:], (0, 1), value=IGNORE).flatten()     # (B*T,)
        keep = target != IGNORE
        h, target = h.flatten(0, 1)[keep], target[keep]                     # (N, hidden), (N,)
        if SPEEDUPS and not self.lm_head.weight.requires_grad:             # LoRA: head frozen
            return speedups.completion_ce(h, self.lm_head.weight, target) / n_tokens
        return F.cross_entropy(self.lm_head(h).float(), target, reduction="sum") / n_tokens

    @torch.no_grad()
    def generate(self, ids, max_new_tokens: int, eos_id=None):
        """ids (B, T) -> (B, T + n), n <= max_new_tokens: greedy decoding with a KV cache. Stops
        once every row has produced eos_id (default config.eos_token_id; int, list or [] for
        never); a finished row repeats its EOS. Runs in eval mode (no LoRA dropout)."""
        eos = self.config.eos_token_id if eos_id is None else eos_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []),
                           dtype=torch.long, device=ids.device)
        cache, out = KVCache(len(self.model.layers), ids.shape[1] + max_new_tokens), ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):      # feed the positions the cache does not hold yet
            h = self.hidden(out[:, cache.seq_len:], cache)[:, -1]           # (B, hidden)
            nxt = torch.where(done, out[:, -1], self.lm_head(h).argmax(-1))  # last position only
            done |= torch.isin(nxt, eos)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if done.all():
                break
        self.train(was_training)
        return out


def lora_modules(model) -> list:
    """[(name, LoRALinear)], per block in registration order q, k, v, o, gate, up, down."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def add_lora(model, r: int, alpha: float, dropout: float = 0.0, targets=SEVEN_MAPS,
             generator=None):
    """Attach fresh adapters to the target maps and freeze every other parameter (as PEFT)."""
    if set(targets) - set(SEVEN_MAPS):
        raise ValueError(f"add_lora: targets {sorted(set(targets) - set(SEVEN_MAPS))} are "
                         f"not among {SEVEN_MAPS}")
    model.requires_grad_(False)
    for name, m in lora_modules(model):
        if name.rsplit(".", 1)[1] in targets:
            m.set_lora(r, alpha, dropout, generator)
    return model


def merge_lora(model, masks: dict | None = None):
    """Merge every adapter (method (E0)); masks {name: bool (m, n)} makes it a masked merge."""
    for name, m in lora_modules(model):
        m.merge((masks or {}).get(name))
    return model


# ------------------------------------------------------------------------- checkpoint I/O
def load_config(path) -> Config:
    """config.json of a checkpoint directory -> Config (unsupported values raise ValueError
    naming the file). Only fields Config knows are read: `auto_map`, `trust_remote_code` and
    other references to code in the directory are ignored; nothing there is ever imported."""
    fn = Path(path) / "config.json"
    if not fn.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected an HF checkpoint directory)")
    d = files.read_json(fn)
    try:
        return Config.from_hf(d)
    except ValueError as e:
        raise ValueError(f"{fn}: {e}") from None


def load_model(path, device="cpu", dtype=torch.float32) -> Transformer:
    """HF checkpoint directory -> Transformer (eval mode) on `device`, tensors cast to `dtype`
    (a torch dtype or its name; None: config torch_dtype), as HF casts to its torch_dtype.
    Built on the meta device, so no memory or time goes into a throwaway random init."""
    path = Path(path)
    cfg = load_config(path)
    dtype = DTYPES.get(cfg.torch_dtype, torch.float32) if dtype is None else dtype
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        model = Transformer(cfg)
    # HF stores a tied head once, as embed_tokens (some checkpoints store it anyway), and old
    # checkpoints carry rotary_emb.inv_freq buffers: neither is read.
    skip = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in skip}
    where = {k: fn for k, fn in files.weight_files(path).items()
             if k not in skip and not k.endswith("rotary_emb.inv_freq")}
    files.check_keys(set(where), expected, path)
    state = {}
    for fn in sorted(set(where.values())):
        with files.open_safetensors(fn) as f:
            for k in (k for k in f.keys() if k in expected):
                t = f.get_tensor(k)          # one tensor at a time: no second model copy
                files.check_shape(k, expected[k], t.shape)
                if not t.is_floating_point():
                    raise ValueError(f"tensor {k} in {fn}: expected a floating-point dtype, "
                                     f"found {t.dtype}")
                # A copy: own memory, not the file's mapping (one tensor left in it keeps
                # all its pages).
                state[k] = t.to(device, dtype, copy=True)
    model.load_state_dict(state, strict=False, assign=True)   # keys checked above
    model.tie_weights()
    if SPEEDUPS and torch.device(device).type == "cpu":
        speedups.column_major([model.lm_head.weight] + [m.weight for _, m in lora_modules(model)])
    model.path = path
    return model.eval()


def save_model(model: Transformer, path):
    """Write an HF checkpoint directory: model.safetensors (metadata {"format": "pt"}; a tied
    head stored once), config.json, tokenizer files copied from model.path."""
    for name, m in lora_modules(model):
        if m.r > 0 and bool(m.lora_B.detach().any()):
            raise ValueError(f"save_model: {name} has an unmerged LoRA adapter; call "
                             "merge_lora(model) first")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if ".lora_" not in k
             and not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    files.atomic_save(state, path / "model.safetensors")
    (path / "model.safetensors.index.json").unlink(missing_ok=True)   # would shadow it
    dtype = str(model.model.embed_tokens.weight.dtype).removeprefix("torch.")
    config = {**model.config.to_hf(), "torch_dtype": dtype}
    files.atomic_write_text(json.dumps(config, indent=2), path / "config.json")
    files.copy_tokenizer_files(model.path, path)


def sparsity_of(W, nm=None) -> dict:
    """Exact zeros of a weight (method §9); with nm = (N, M), "nm_valid": every group of M
    consecutive columns holds >= N zeros in every row (a ragged last group fails)."""
    zeros = int((W == 0).sum())
    ok = None if nm is None else W.shape[1] % nm[1] == 0 and bool(
        ((W.reshape(W.shape[0], -1, nm[1]) == 0).sum(-1) >= nm[0]).all())
    return {"zeros": zeros, "numel": W.numel(), "sparsity": zeros / max(W.numel(), 1),
            "nm_valid": ok}


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
