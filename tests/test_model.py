"""Tests of model.py: components against naive references, checkpoint I/O, generation, LoRA
(method §2 and (E0)), loader errors. Tiny configs from conftest.py, CPU, a few seconds."""
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from support import files, speedups
import model as M
from conftest import FAMILIES

ATOL32 = 1e-5          # float32 agreement of two orderings of the same arithmetic
ATOL_BF16 = 5e-2       # bf16 logits vs float32 logits on the tiny random model


def _max_diff(a, b):
    d = (a.float() - b.float()).abs()
    return f"max diff {d.max().item():.3g}, mean diff {d.mean().item():.3g}"


# ------------------------------------------------------------------------ components
@pytest.mark.t1
def test_s2_rmsnorm_matches_formula():
    """method §2: y = w * x / sqrt(mean(x^2) + eps), statistics in float32, result cast back."""
    norm = M.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
    x = torch.randn(3, 5, 64)
    ref = norm.weight * x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(norm(x), ref, atol=ATOL32), _max_diff(norm(x), ref)
    xb = x.bfloat16()
    yb = M.RMSNorm(64, 1e-6).bfloat16()(xb)            # a bf16 model has bf16 norm weights
    refb = (xb.float() / torch.sqrt((xb.float() ** 2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert yb.dtype == torch.bfloat16 and torch.equal(yb, refb)


@pytest.mark.t1
def test_s2_rmsnorm_eps_inside_the_root_at_small_scale():
    """At a scale where eps matters (mean x^2 = 1e-6 = eps), a hand value: x = (1e-3, -1e-3)
    gives y = x / sqrt(1e-6 + 1e-6) = (1/sqrt 2, -1/sqrt 2); eps outside the root would give
    x / (1e-3 + 1e-6) ~ (0.999, -0.999)."""
    norm = M.RMSNorm(2, eps=1e-6)
    y = norm(torch.tensor([[1e-3, -1e-3]]))
    assert torch.allclose(y, torch.tensor([[2 ** -0.5, -(2 ** -0.5)]]), rtol=1e-5), y


@pytest.mark.t1
def test_s2_rope_matches_2x2_rotation_per_frequency(tiny):
    """method §2 rotate-half RoPE: the pair (x_i, x_{i+D/2}) rotates by pos * theta^(-2i/D)."""
    cfg = tiny()
    model = M.Transformer(cfg)
    D, T, start = cfg.head_dim, 6, 3
    x = torch.randn(1, 1, T, D)
    cos, sin = model.rope(T, "cpu", start_pos=start)
    y = M.apply_rope(x, cos, sin)
    ref = torch.empty_like(x)
    for p in range(T):
        for i in range(D // 2):
            ang = (start + p) * cfg.rope_theta ** (-2 * i / D)
            rot = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
            ref[0, 0, p, [i, i + D // 2]] = rot @ x[0, 0, p, [i, i + D // 2]]
    assert torch.allclose(y, ref, atol=ATOL32), _max_diff(y, ref)


@pytest.mark.t1
def test_s2_llama3_rope_scaling_matches_formula(tiny):
    """method §2 llama3 scaling: short wavelengths kept, long ones / factor, smooth blend between."""
    s = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
             original_max_position_embeddings=64)
    cfg = tiny(hidden_size=256, num_attention_heads=4, rope_theta=500000.0, rope_scaling=s)
    got = M.rope_inv_freq(cfg)
    D, old = cfg.head_dim, 64
    regions = set()
    for i in range(D // 2):
        f = 500000.0 ** (-2 * i / D)
        wl = 2 * math.pi / f
        if wl < old / 4.0:
            want, region = f, "high"
        elif wl > old / 1.0:
            want, region = f / 8.0, "low"
        else:
            smooth = (old / wl - 1.0) / (4.0 - 1.0)
            want, region = (1 - smooth) * f / 8.0 + smooth * f, "mid"
        regions.add(region)
        assert math.isclose(got[i].item(), want, rel_tol=1e-5), (i, got[i].item(), want)
    assert regions == {"high", "mid", "low"}


def _attention_reference(attn, x, cos, sin):
    """Naive attention: a Python loop over query heads, explicit causal masked softmax."""
    B, T, _ = x.shape
    nh, nkv, D = attn.nh, attn.nkv, attn.hd
    q = attn.q_proj(x).view(B, T, nh, D)
    k = attn.k_proj(x).view(B, T, nkv, D)
    v = attn.v_proj(x).view(B, T, nkv, D)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    heads = []
    for h in range(nh):
        kv = h // (nh // nkv)                                       # gamma(h)
        qh = M.apply_rope(q[:, :, h], cos, sin)                     # (B, T, D)
        kh = M.apply_rope(k[:, :, kv], cos, sin)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(D)           # (B, T, T)
        scores = scores.masked_fill(~causal, float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, :, kv])
    return attn.o_proj(torch.cat(heads, dim=-1))


@pytest.mark.t1
@pytest.mark.parametrize("family", FAMILIES)
def test_s2_gqa_sdpa_matches_per_head_masked_softmax(make_model, family):
    """method §1/2: query head h reads kv head floor(h/g); SDPA(is_causal) == masked softmax."""
    model = make_model(**FAMILIES[family])
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 7, model.config.hidden_size)
    cos, sin = model.rope(7, "cpu")
    with torch.no_grad():
        got, ref = attn(x, cos, sin), _attention_reference(attn, x, cos, sin)
    assert torch.allclose(got, ref, atol=ATOL32), _max_diff(got, ref)


@pytest.mark.t1
def test_s2_sdpa_with_cache_offset_matches_masked_softmax(make_model):
    """A chunk of 3 queries after 4 cached positions sees keys 0 .. 4+i (the offset mask)."""
    model = make_model()
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 7, model.config.hidden_size)
    cos, sin = model.rope(7, "cpu")
    cache = M.KVCache(1)                     # layer 0's slot: what the block writes into
    with torch.no_grad():
        attn(x[:, :4], cos[:4], sin[:4], cache)
        got = attn(x[:, 4:], cos[4:], sin[4:], cache)
        ref = _attention_reference(attn, x, cos, sin)[:, 4:]
    assert torch.allclose(got, ref, atol=ATOL32), _max_diff(got, ref)


# -------------------------------------------------------------------- checkpoint I/O
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_s2_save_load_identical_logits(make_ckpt, family, tied):
    """method §2: save_model -> load_model reproduces the logits exactly; a tied head is stored
    once (no lm_head.weight, HF convention) and comes back tied."""
    path, model = make_ckpt(**{**FAMILIES[family], "tie_word_embeddings": tied})
    loaded = M.load_model(path)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    keys = set(load_file(path / "model.safetensors"))
    assert ("lm_head.weight" in keys) == (not tied)
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        assert (path / fn).exists()
    assert not any(p.is_meta for p in loaded.parameters())
    assert loaded.path == path


def test_s2_sharded_load_equals_single_file(tiny_ckpt):
    """method §2: shards + model.safetensors.index.json load like one model.safetensors."""
    single, model = tiny_ckpt
    sharded = single.parent / "sharded"
    shutil.copytree(single, sharded)
    state = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names, weight_map = sorted(state), {}
    for i, part in enumerate((names[:7], names[7:20], names[20:])):   # three shards
        fn = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: state[k] for k in part}, str(sharded / fn), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fn))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": weight_map}))
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert torch.equal(M.load_model(single)(ids), M.load_model(sharded)(ids))


def test_s2_bf16_load_works(tiny_ckpt):
    path, model = tiny_ckpt
    m16 = M.load_model(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m16.parameters())
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        l16, l32 = m16(ids), model(ids)
    assert l16.dtype == torch.bfloat16 and torch.isfinite(l16.float()).all()
    assert torch.allclose(l16.float(), l32, atol=ATOL_BF16), _max_diff(l16, l32)


@pytest.mark.parametrize("tied", [False, True])
def test_s2_column_major_load_equals_plain_load(make_ckpt, tied, monkeypatch):
    """speedups.column_major (CPU load): lm_head and the seven maps stored column-major, every
    tensor equal to the plain (row-major) load's, a tied head still tied; equal logits, equal
    greedy tokens."""
    path, _ = make_ckpt(tie_word_embeddings=tied)
    fast = M.load_model(path)
    monkeypatch.setattr(M, "SPEEDUPS", False)
    plain = M.load_model(path)
    mats = [fast.lm_head] + [m for _, m in M.lora_modules(fast)]
    assert all(m.weight.T.is_contiguous() and not m.weight.is_contiguous() for m in mats)
    assert all(p.is_contiguous() for p in plain.parameters())
    assert (fast.lm_head.weight is fast.model.embed_tokens.weight) == tied
    sf, sp = fast.state_dict(), plain.state_dict()
    assert sf.keys() == sp.keys() and all(torch.equal(sf[k], sp[k]) for k in sf)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        assert torch.allclose(fast(ids), plain(ids), atol=ATOL32), _max_diff(fast(ids), plain(ids))
    assert torch.equal(fast.generate(ids, 8, eos_id=[]), plain.generate(ids, 8, eos_id=[]))


def test_s2_both_config_dialects_load_alike(tiny):
    """method §2: top-level rope_theta/rope_scaling/torch_dtype == rope_parameters/dtype."""
    s = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
             original_max_position_embeddings=64)
    old = {**tiny().to_hf(), "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **s},
           "torch_dtype": "bfloat16"}
    new = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    new.update(rope_parameters={"rope_theta": 5e5, "rope_type": "llama3", **s}, dtype="bfloat16")
    assert M.Config.from_hf(old) == M.Config.from_hf(new)
    assert M.Config.from_hf(new).rope_scaling["factor"] == 8.0


_BAD_CONFIGS = {                    # field -> (config.json change, words the error must name)
    "model_type": ({"model_type": "gpt2"}, "model_type"),
    "hidden_act": ({"hidden_act": "gelu"}, "hidden_act"),
    "rope_type": ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    "rope_parameters": ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4}},
                        "dynamic"),
    "sliding_window": ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window"),
    "use_sliding_window": ({"model_type": "qwen2", "use_sliding_window": True}, "sliding_window"),
}


@pytest.mark.parametrize("case", _BAD_CONFIGS)
def test_s2_loader_rejects_unsupported_config(tiny_ckpt, case):
    path, _ = tiny_ckpt
    change, words = _BAD_CONFIGS[case]
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=words):
        M.load_model(path)


def _rewrite_weights(path, fn):
    state = load_file(path / "model.safetensors")
    fn(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_s2_loader_names_missing_tensor(tiny_ckpt):
    path, _ = tiny_ckpt
    _rewrite_weights(path, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'"):
        M.load_model(path)


def test_s2_loader_names_unexpected_tensor(tiny_ckpt):
    path, _ = tiny_ckpt
    _rewrite_weights(path, lambda s: s.update({"model.layers.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected tensors \['model.layers.0.extra.weight'"):
        M.load_model(path)


def test_s2_loader_names_wrong_shape(tiny_ckpt):
    path, _ = tiny_ckpt
    name = "model.layers.0.self_attn.k_proj.weight"
    _rewrite_weights(path, lambda s: s.update({name: torch.zeros(64, 64)}))
    with pytest.raises(ValueError, match=rf"{name}: expected shape \(32, 64\), found \(64, 64\)"):
        M.load_model(path)


def test_s2_tokenizer_ids_from_config_files(tiny_ckpt):
    path, _ = tiny_ckpt
    tok = files.load_tokenizer(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 0, 128)
    assert tok.add_bos is False                  # no add_bos_token, no BOS post-processor
    ids = tok.encode("w5 w7 w5", bos=True)
    assert ids == [1, 8, 10, 8] and tok.decode(ids[1:]) == "w5 w7 w5"
    # Without tokenizer_config.json the ids come from config.json.
    (path / "tokenizer_config.json").unlink()
    tok = files.load_tokenizer(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)


@pytest.mark.t1
def test_s2_swiglu_matches_formula(make_model):
    """method §2 SwiGLU: down(silu(gate x) * up x), silu(z) = z / (1 + exp(-z))."""
    mlp = make_model().model.layers[0].mlp
    x = torch.randn(3, 5, 64)
    G, U, D = (getattr(mlp, n).weight for n in ("gate_proj", "up_proj", "down_proj"))
    g = x @ G.T
    ref = ((g / (1 + torch.exp(-g))) * (x @ U.T)) @ D.T
    with torch.no_grad():
        assert torch.allclose(mlp(x), ref, atol=ATOL32), _max_diff(mlp(x), ref)


# ------------------------------------------------------------------------ generation
@pytest.mark.t1
@pytest.mark.parametrize("family", FAMILIES)
def test_s2_kv_cache_greedy_equals_no_cache_argmax_loop(make_model, family):
    model = make_model(**FAMILIES[family])
    prompt = torch.randint(3, 128, (2, 5))
    got = model.generate(prompt, max_new_tokens=8, eos_id=[])
    ref = prompt
    with torch.no_grad():
        for _ in range(8):
            ref = torch.cat([ref, model(ref)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, ref)


@pytest.mark.t1
def test_s2_kv_cache_preallocated_written_in_place(make_model):
    """Generation allocates each layer's buffers once (prompt + new tokens) and writes in
    place; feeding a prompt in pieces, or past the capacity (growth), gives the full forward's
    logits; a one-row prompt cache widens to C rows (eval.py's shared prompt)."""
    model = make_model()
    ids = torch.randint(3, 128, (2, 9))
    cache, ptrs = M.KVCache(2, capacity=9), []
    with torch.no_grad():
        full = model(ids)
        parts = []
        for a, b in ((0, 4), (4, 5), (5, 9)):
            parts.append(model(ids[:, a:b], cache))
            ptrs.append([k.data_ptr() for k, _ in cache.kv])
        assert ptrs[0] == ptrs[1] == ptrs[2] and cache.seq_len == 9
        assert torch.allclose(torch.cat(parts, 1), full, atol=ATOL32), _max_diff(torch.cat(parts, 1), full)
        grown = M.KVCache(2)                  # no capacity: grows
        got = torch.cat([model(ids[:, i:i + 1], grown) for i in range(9)], 1)
        assert torch.allclose(got, full, atol=ATOL32), _max_diff(got, full)
        shared = M.KVCache(2, capacity=9)
        model(ids[:1, :5], shared)            # one prompt, then two continuations
        cont = torch.randint(3, 128, (2, 4))
        got = model(cont, shared)
        ref = model(torch.cat([ids[:1, :5].expand(2, -1), cont], 1))[:, 5:]
        assert torch.allclose(got, ref, atol=ATOL32), _max_diff(got, ref)


def test_s2_generation_stops_at_eos(make_model):
    model = make_model()
    prompt = torch.randint(3, 128, (1, 4))
    free = model.generate(prompt, 6, eos_id=[])
    eos = int(free[0, 6])                    # the third generated token becomes "EOS"
    stopped = model.generate(prompt, 6, eos_id=eos)
    assert torch.equal(stopped, free[:, :7])


# ------------------------------------------------------------------------------ LoRA
def _lora_model(make_model, r=4, alpha=8.0, **kw):
    model = make_model(**kw)
    M.add_lora(model, r, alpha, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():                    # B = 0 at init; make it non-zero to test
        for _, m in M.lora_modules(model):
            m.lora_B.normal_(0, 0.1)
    return model


@pytest.mark.t2
def test_e0_lora_forward_equals_wx_plus_sbax(make_model):
    model = _lora_model(make_model, model_type="qwen2")     # qwen2: q/k/v carry a bias
    m = model.model.layers[0].self_attn.q_proj
    assert m.lora_A.dtype == torch.float32 and m.scaling == 2.0
    assert not m.weight.requires_grad and m.lora_A.requires_grad
    x = torch.randn(3, 64)
    ref = x @ m.weight.T + m.bias + 2.0 * (x @ m.lora_A.T) @ m.lora_B.T
    assert torch.allclose(m(x), ref, atol=ATOL32), _max_diff(m(x), ref)
    # Kaiming-uniform(a=sqrt 5) bound 1/sqrt(n); B starts at zero after reset.
    m.reset_lora()
    assert m.lora_A.abs().max() <= 1 / math.sqrt(64) and not m.lora_B.any()


@pytest.mark.t2
def test_e0_merge_equals_w_plus_sba_and_is_idempotent(make_model):
    """The merged map computes what the adapted one did (checked on the map alone, not through
    the model: graded as course task T2 without T1)."""
    model = _lora_model(make_model)
    m = model.model.layers[1].mlp.down_proj
    x = torch.randn(5, m.in_features)
    with torch.no_grad():
        before = m(x)
    want = m.weight + m.scaling * m.lora_B @ m.lora_A
    M.merge_lora(model)
    assert torch.allclose(m.weight, want, atol=ATOL32) and not m.lora_B.any()
    w1 = m.weight.clone()
    M.merge_lora(model)
    assert torch.equal(m.weight, w1)
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=ATOL32), _max_diff(m(x), before)


@pytest.mark.t2
def test_e0_dropout_acts_on_the_adapters_input_only():
    """method (E0): y = W x + b + s B A drop(x); a stand-in dropout that zeroes the first half
    of the features shows where it acts (not on W x, not after A)."""
    lin = M.LoRALinear(6, 4, bias=True)
    lin.weight.data, lin.bias.data = torch.randn(4, 6), torch.randn(4)
    lin.set_lora(2, 4.0, dropout=0.5)
    lin.lora_B.data = torch.randn(4, 2)

    class HalfDrop(torch.nn.Module):
        def forward(self, x):
            return torch.cat([torch.zeros_like(x[..., :3]), x[..., 3:]], -1)
    lin.lora_dropout = HalfDrop()
    x = torch.randn(5, 6)
    want = x @ lin.weight.T + lin.bias + 2.0 * (HalfDrop()(x) @ lin.lora_A.T) @ lin.lora_B.T
    with torch.no_grad():
        assert torch.allclose(lin(x), want, atol=ATOL32), _max_diff(lin(x), want)


@pytest.mark.t2
def test_e0_masked_merge_keeps_every_masked_zero(make_model):
    model = _lora_model(make_model)
    masks = {n: torch.rand(m.weight.shape) > 0.5 for n, m in M.lora_modules(model)}
    wants = {n: masks[n] * m.augmented_weight() for n, m in M.lora_modules(model)}
    M.merge_lora(model, masks)
    for n, m in M.lora_modules(model):
        assert not m.weight[~masks[n]].any(), n
        assert torch.allclose(m.weight, wants[n], atol=ATOL32), n


def _full_logits_loss(model, ids, labels, n):
    """The obvious form: every position's logits, shifted, IGNORE skipped by cross_entropy."""
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=M.IGNORE, reduction="sum") / n


def _labelled_loss(model, ids, labels, n):
    return model(ids, labels=labels, n_tokens=n)


@pytest.mark.parametrize("chunk", [None, 1, 3, 5])
@pytest.mark.parametrize("frozen_head", [True, False])
def test_s8_loss_at_supervised_positions_equals_full_logits(make_model, chunk, frozen_head,
                                                           monkeypatch):
    """method §8 completion-only loss: model(ids, labels=, n_tokens=) (labels shifted, lm_head and
    CE only where a label is) equals CE over all shifted logits / n, value and gradient, in its
    plain form (F.cross_entropy) and with speedups.completion_ce (in chunks) against the plain
    form; prompt rows, padding, a row with no label at all and chunk edges included."""
    ig = M.IGNORE
    ids = torch.randint(3, 128, (3, 8))
    labels = ids.clone()
    labels[0, :3] = ig                       # prompt
    labels[1] = ig                           # no supervised token at all
    labels[2, :2], labels[2, 6:] = ig, ig    # prompt, then padding
    n = int((labels[:, 1:] != ig).sum())
    if chunk:                                # 7 positions: chunks of 3 and 5 leave a remainder
        real = speedups.completion_ce
        monkeypatch.setattr(speedups, "completion_ce", lambda *a: real(*a, chunk=chunk))
    grads = []
    forms = ((False, _full_logits_loss), (False, _labelled_loss), (True, _labelled_loss))
    for fast, loss_fn in forms:              # full logits, plain, fast (SPEEDUPS)
        monkeypatch.setattr(M, "SPEEDUPS", fast)
        model = _lora_model(make_model, seed=0)          # same weights, frozen base
        model.lm_head.weight.requires_grad_(not frozen_head)
        model.train()                        # dropout off (add_lora default): deterministic
        loss = loss_fn(model, ids, labels, n)
        loss.backward()
        grads.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()
                                      if p.requires_grad}))
    for (ref, gref), (got, ggot) in zip(grads, grads[1:]):   # plain vs full, fast vs plain
        assert torch.allclose(got, ref, atol=ATOL32), (got.item(), ref.item())
        assert len(gref) == len(ggot) == 2 * 7 * 2 + (not frozen_head)
        for k in gref:
            assert torch.allclose(ggot[k], gref[k], atol=ATOL32), (k, _max_diff(ggot[k], gref[k]))
    for fast in (False, True):               # nothing supervised: 0, no NaN
        monkeypatch.setattr(M, "SPEEDUPS", fast)
        assert model(ids[1:2], labels=labels[1:2], n_tokens=1).item() == 0.0
        with torch.no_grad():                # n_tokens defaults to 1: the sum over labelled tokens
            assert torch.allclose(model(ids, labels=labels), n * model(ids, labels=labels, n_tokens=n))


def test_s8_completion_ce_refuses_a_trained_head():
    """speedups.completion_ce computes no gradient for W: a trainable W is refused, not
    silently left without one (model.py takes the plain form then)."""
    w = torch.randn(10, 4, requires_grad=True)
    with pytest.raises(ValueError, match="frozen"):
        speedups.completion_ce(torch.randn(3, 4), w, torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_s8_completion_ce_equals_cross_entropy_per_row(dtype):
    """speedups.completion_ce against F.cross_entropy(reduction="sum"), value and d/dh, on rows
    whose logits differ in scale by far more than exp can span (each row needs its own max),
    in float32 and in bfloat16 (the softmax is float32, d/dh comes back in h's dtype)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 8, generator=g).to(dtype)
    h0 = torch.randn(6, 8, generator=g) * torch.tensor([1.0, 300.0, 1.0, 80.0, 1.0, 1.0])[:, None]
    t = torch.randint(0, 50, (6,), generator=g)
    h = h0.to(dtype).requires_grad_()
    loss = speedups.completion_ce(h, w, t, chunk=4)      # one chunk holds rows of every scale
    loss.backward()
    ref_h = h0.to(dtype).float().requires_grad_()
    ref = F.cross_entropy(ref_h @ w.float().T, t, reduction="sum")
    ref.backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) <= tol * abs(ref.item()), (loss, ref)
    assert h.grad.dtype == dtype
    assert torch.allclose(h.grad.float(), ref_h.grad, rtol=tol, atol=tol * ref_h.grad.abs().max().item())


DROPOUTS = {"plain": torch.nn.Dropout, "gap": speedups.GapDropout}   # model.py's, the fast form


@pytest.mark.parametrize("form", DROPOUTS)
def test_e0_gap_dropout_is_bernoulli_scaled(form):
    """method (E0) drop(x): each entry zero with probability p, else x / (1 - p), independently;
    the gradient takes the same mask; eval mode is the identity; same seed, same mask. The
    plain nn.Dropout passes the same checks as speedups.GapDropout (same distribution)."""
    Dropout = DROPOUTS[form]
    p, x = 0.1, torch.randn(400, 500, requires_grad=True)
    drop = Dropout(p).train()
    y = drop(x)
    zero = y == 0
    assert abs(zero.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / x.numel())
    assert torch.allclose(y[~zero], x[~zero] / (1 - p))
    rows = zero.float().mean(1)              # no structure along rows or columns
    assert abs(rows.std().item() - math.sqrt(p * (1 - p) / 500)) < 0.004
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, torch.where(zero, 0.0, g / (1 - p)))
    assert torch.equal(drop.eval()(x), x)
    seeded = [(torch.manual_seed(3), Dropout(p).train()(torch.ones(50, 60)))[1] for _ in "ab"]
    assert torch.equal(*seeded)


@pytest.mark.parametrize("n", [64, 6])
def test_e0_gap_dropout_rate_is_p_at_every_position(n):
    """GapDropout draws gaps between zeros; each position must be zero with probability p
    (not only on average): over 4000 draws every column's rate lies within 5 sigma of p, and
    the first and last positions (where gap drawing starts and stops) are not special; the
    plain nn.Dropout's rates, drawn alike, lie within 5 sigma of GapDropout's at every position.
    n = 6: fewer zeros expected (1.2) than the draw's safety margin."""
    p, draws = 0.2, 4000
    torch.manual_seed(0)
    rates = {form: torch.stack([Dropout(p).train()(torch.ones(n)) == 0 for _ in range(draws)])
             .float().mean(0) for form, Dropout in DROPOUTS.items()}                   # (n,)
    tol = 5 * math.sqrt(p * (1 - p) / draws)
    zeros = rates["gap"]
    assert (zeros - p).abs().max().item() < tol, zeros
    assert abs(zeros[0].item() - p) < tol and abs(zeros[-1].item() - p) < tol
    assert (zeros - rates["plain"]).abs().max().item() < tol * math.sqrt(2), rates


def test_e0_gap_dropout_draws_gaps_on_cpu():
    """On CPU GapDropout places the zeros by its own gap draw, not by nn.Dropout's stream:
    the same seed gives another mask (the speed-up is in effect where it is switched in)."""
    x = torch.ones(20, 30)
    masks = [(torch.manual_seed(5), Dropout(0.3).train()(x) == 0)[1] for Dropout in DROPOUTS.values()]
    assert not torch.equal(*masks)


def test_s2_save_model_refuses_unmerged_adapters(make_model, tmp_path):
    model = _lora_model(make_model)
    with pytest.raises(ValueError, match="unmerged LoRA adapter"):
        M.save_model(model, tmp_path / "x")
    M.merge_lora(model)
    M.save_model(model, tmp_path / "x")
    assert not any(".lora_" in k for k in load_file(tmp_path / "x/model.safetensors"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_s2_cuda_load_and_generate_match_cpu(tiny_ckpt):
    """Same checkpoint on CUDA: logits and greedy tokens agree with CPU."""
    path, model = tiny_ckpt
    gpu = M.load_model(path, device="cuda")
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        lg = gpu(ids.cuda()).cpu()
    assert torch.allclose(lg, model(ids), atol=1e-4), _max_diff(lg, model(ids))
    greedy = gpu.generate(ids.cuda(), 8, eos_id=[]).cpu()
    assert torch.equal(greedy, model.generate(ids, 8, eos_id=[]))


@pytest.mark.t2
def test_e0_lora_linear_defaults_frozen_base_scale_and_dropout(monkeypatch):
    """A new LoRALinear is a frozen plain linear (weight and bias without gradients, r 0,
    scale 0); set_lora(r, alpha) gives s = alpha / r for every r >= 1 and no dropout module
    unless dropout > 0: then GapDropout, or nn.Dropout itself with SPEEDUPS off."""
    lin = M.LoRALinear(4, 3, bias=True)
    assert not lin.weight.requires_grad and not lin.bias.requires_grad
    assert lin.r == 0 and lin.scaling == 0.0 and lin.lora_A is None
    lin.set_lora(1, 2.0)
    assert lin.scaling == 2.0 and isinstance(lin.lora_dropout, torch.nn.Identity)
    lin.set_lora(4, 8.0, 0.1)
    assert lin.scaling == 2.0 and type(lin.lora_dropout) is speedups.GapDropout
    assert lin.lora_dropout.p == 0.1
    monkeypatch.setattr(M, "SPEEDUPS", False)
    lin.set_lora(4, 8.0, 0.1)
    assert type(lin.lora_dropout) is torch.nn.Dropout and lin.lora_dropout.p == 0.1
    assert lin.lora_A.requires_grad and lin.lora_B.requires_grad and not lin.weight.requires_grad
    lin.weight.data, lin.bias.data = lin.weight.data.bfloat16(), lin.bias.data.bfloat16()
    with torch.no_grad():
        lin.lora_B.fill_(0.5)                          # float32 adapters on a bf16 base
    assert lin.eval()(torch.randn(2, 4).bfloat16()).dtype == torch.bfloat16


@pytest.mark.t1
def test_s2_rope_starts_at_position_0_by_default(tiny):
    model = M.Transformer(tiny())
    cos, sin = model.rope(3, "cpu")
    assert torch.equal(cos[0], torch.ones_like(cos[0])) and torch.equal(sin[0], torch.zeros_like(sin[0]))
    assert torch.equal(model.rope(3, "cpu", 0)[0], cos)


@pytest.mark.t1
def test_s2_llama3_rope_scaling_matches_the_reference_loop(tiny):
    """llama3 scaling against the Llama 3.1 reference loop, with low_freq_factor 2 (Llama 3.1
    has 1, where old_ctx / lo and old_ctx * lo coincide) and boundaries inside the band."""
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
    cfg = tiny(rope_scaling=sc)
    base = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    want = []
    for f in base.tolist():
        wavelen, old = 2 * math.pi / f, 64
        if wavelen < old / 4:
            want.append(f)
        elif wavelen > old / 2:
            want.append(f / 8)
        else:
            smooth = (old / wavelen - 2) / (4 - 2)
            want.append((1 - smooth) * f / 8 + smooth * f)
    got = M.rope_inv_freq(cfg)
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6)
    kinds = [(w == f, w == f / 8) for w, f in zip(want, base.tolist())]
    assert (True, False) in kinds and (False, True) in kinds and (False, False) in kinds   # all 3 bands
