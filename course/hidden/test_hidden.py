"""The instructor's hidden tests: other seeds, shapes and dtypes, and the edge cases (dead
columns, ties, no GQA, one kv head, fully kept rows, rank 1, resumes) that the visible tests do
not show. `course.py make` leaves this folder out; `python course.py grade --hidden course/hidden`
adds it. Self-contained: the naive references are written here again, so that an edited
visible test cannot change what these check.
"""
import math
import types

import pytest
import torch

import efx
import model as M
import train

F64 = dict(rtol=1e-9, atol=1e-10)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def keep_lowest_pruned(S, k):
    """Prune the k lowest of each row, ties to the lower column (stable sort)."""
    low = torch.sort(S, dim=1, stable=True).indices[:, :k]
    return torch.ones_like(S, dtype=torch.bool).scatter_(1, low, False)


# ------------------------------------------------------------------------- T1
def tiny(**kw):
    return M.Config(**{**dict(vocab_size=32, hidden_size=24, intermediate_size=20, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=4), **kw})


@pytest.mark.t1
def test_hidden_s2_rmsnorm_eps_1e_5_and_bf16():
    norm = M.RMSNorm(8, eps=1e-5)
    norm.weight.data = rand(8, seed=50, dtype=torch.float32)
    x = rand(2, 3, 8, seed=51, dtype=torch.float32) * 1e-2          # eps not negligible here
    ref = norm.weight * x / (x.square().mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-7)
    assert norm.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.t1
def test_hidden_s2_rope_other_theta_and_llama3_band():
    cfg = tiny(rope_theta=500000.0, head_dim=16)
    want = 500000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    torch.testing.assert_close(M.rope_inv_freq(cfg).double(), want, rtol=1e-6, atol=0)
    sc = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0,
          "original_max_position_embeddings": 200}           # wavelengths 6, 32, 167, 861, ..
    got = M.rope_inv_freq(tiny(rope_theta=500000.0, head_dim=16, rope_scaling=sc)).double()
    for f, g in zip(want.tolist(), got.tolist()):
        wl = 2 * math.pi / f
        t = (200 / wl - 1.0) / (2.0 - 1.0)
        w = f if wl < 100 else f / 4 if wl > 200 else (1 - t) * f / 4 + t * f
        assert g == pytest.approx(w, rel=1e-5), (f, g, w)


@pytest.mark.t1
def test_hidden_s2_rope_keeps_each_pairs_norm_and_starts_at_position_5():
    model = M.Transformer(tiny())
    x = rand(1, 2, 4, 6, seed=52, dtype=torch.float32)
    cos, sin = model.rope(4, "cpu", start_pos=5)
    y = M.apply_rope(x, cos, sin)
    pair = lambda t: t[..., :3].square() + t[..., 3:].square()
    torch.testing.assert_close(pair(y), pair(x), rtol=1e-5, atol=1e-6)
    f = M.rope_inv_freq(model.config)
    angle = 5 * f[0]                                           # position 5, frequency 0
    want = x[0, 0, 0, 0] * torch.cos(angle) - x[0, 0, 0, 3] * torch.sin(angle)
    torch.testing.assert_close(y[0, 0, 0, 0], want, rtol=1e-5, atol=1e-6)


def naive_attention(attn, x, cos, sin):
    B, T, _ = x.shape
    q = M.apply_rope(attn.q_proj(x).view(B, T, attn.nh, attn.hd).transpose(1, 2), cos, sin)
    k = M.apply_rope(attn.k_proj(x).view(B, T, attn.nkv, attn.hd).transpose(1, 2), cos, sin)
    v = attn.v_proj(x).view(B, T, attn.nkv, attn.hd).transpose(1, 2)
    g = attn.nh // attn.nkv
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(attn.hd)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return attn.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))


@pytest.mark.t1
@pytest.mark.parametrize("n_kv", [4, 1])                       # no GQA; one kv head for all
def test_hidden_s2_attention_without_gqa_and_with_one_kv_head_then_one_cached_step(n_kv):
    torch.manual_seed(53)
    model = M.Transformer(tiny(num_key_value_heads=n_kv)).eval()
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 6, 24)
    cos, sin = model.rope(6, "cpu")
    with torch.no_grad():
        want = naive_attention(attn, x, cos, sin)
        torch.testing.assert_close(attn(x, cos, sin), want, rtol=1e-5, atol=1e-5)
        cache = M.KVCache(1)
        attn(x[:, :5], cos[:5], sin[:5], cache)
        torch.testing.assert_close(attn(x[:, 5:], cos[5:], sin[5:], cache), want[:, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.t1
def test_hidden_s2_swiglu_in_float64():
    mlp = M.MLP(tiny()).double()
    for i, lin in enumerate((mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
        lin.weight.data = rand(*lin.weight.shape, seed=54 + i)
    x = rand(4, 24, seed=57)
    g = x @ mlp.gate_proj.weight.T
    want = (g * torch.sigmoid(g) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), want, **F64)


# ------------------------------------------------------------------------- T2
def adapted(m=5, n=7, r=3, alpha=6.0, bias=True, seed=60):
    lin = M.LoRALinear(n, m, bias)
    lin.weight.data = rand(m, n, seed=seed, dtype=torch.float32)
    if bias:
        lin.bias.data = rand(m, seed=seed + 1, dtype=torch.float32)
    lin.set_lora(r, alpha, generator=torch.Generator().manual_seed(seed + 2))
    lin.lora_B.data = rand(m, r, seed=seed + 3, dtype=torch.float32)
    return lin


@pytest.mark.t2
def test_hidden_e0_forward_three_dims_and_a_seeded_init():
    lin = adapted()
    x = rand(2, 4, 7, seed=70, dtype=torch.float32)
    want = x @ lin.weight.T + lin.bias + 2.0 * (x @ lin.lora_A.T) @ lin.lora_B.T
    torch.testing.assert_close(lin(x), want, rtol=1e-5, atol=1e-5)
    again = adapted()
    assert torch.equal(again.lora_A, lin.lora_A) and lin.lora_A.abs().max() <= 7 ** -0.5
    assert not torch.equal(adapted(seed=61).lora_A, lin.lora_A)


@pytest.mark.t2
def test_hidden_e0_augmented_weight_scale_one_then_masked_merge_in_bf16():
    lin = adapted(bias=False)
    W, A, B = lin.weight.clone(), lin.lora_A.detach().clone(), lin.lora_B.detach().clone()
    torch.testing.assert_close(lin.augmented_weight(1.0), W + B @ A)
    lin.weight.data = lin.weight.data.bfloat16()
    keep = rand(5, 7, seed=71) > 0
    weight = lin.weight
    lin.merge(keep)
    assert lin.weight is weight and lin.weight.dtype == torch.bfloat16 and not lin.lora_B.any()
    assert (lin.weight[~keep] == 0).all()
    want = (keep * (W.bfloat16().float() + 2.0 * B @ A)).bfloat16()
    torch.testing.assert_close(lin.weight, want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(lin.augmented_weight(), lin.weight.float())   # B = 0: W itself


# ------------------------------------------------------------------------- T3
def block(n_heads, n_kv, d_h, hidden=8, inter=5, seed=0):
    r = lambda i, *s: rand(*s, seed=seed + i)
    return {"q_proj": r(0, n_heads * d_h, hidden), "k_proj": r(1, n_kv * d_h, hidden),
            "v_proj": r(2, n_kv * d_h, hidden), "o_proj": r(3, hidden, n_heads * d_h),
            "gate_proj": r(4, inter, hidden), "up_proj": r(5, inter, hidden),
            "down_proj": r(6, hidden, inter)}


@pytest.mark.t3
@pytest.mark.parametrize("n_heads, n_kv, d_h", [(2, 2, 3), (4, 1, 2)])   # no GQA; one kv head for 4
def test_hidden_e5_e6_without_gqa_and_one_kv_head(n_heads, n_kv, d_h):
    Ws, g = block(n_heads, n_kv, d_h), n_heads // n_kv
    Q, K, O, D = Ws["q_proj"], Ws["k_proj"], Ws["o_proj"], Ws["down_proj"]
    heads = lambda gam: [h for h in range(n_heads) if h // g == gam]
    c_q = torch.tensor([K[(h // g) * d_h + c].square().sum() for h in range(n_heads) for c in range(d_h)])
    c_v = torch.tensor([sum(O[:, h * d_h + c].square().sum() for h in heads(gam))
                        for gam in range(n_kv) for c in range(d_h)])
    torch.testing.assert_close(efx.consumer_energy("q_proj", Ws, n_heads, n_kv), c_q.double(), **F64)
    torch.testing.assert_close(efx.consumer_energy("v_proj", Ws, n_heads, n_kv), c_v.double(), **F64)
    phi_k = torch.stack([torch.stack([(sum(Q[h * d_h + j, b] ** 2 for h in heads(gam) for j in range(d_h))
                                       / g).sqrt() for b in range(8)])
                         for gam in range(n_kv) for _ in range(d_h)])
    torch.testing.assert_close(efx.partner_factor("k_proj", Ws, n_heads, n_kv).expand(phi_k.shape),
                               phi_k, **F64)
    h = rand(8, seed=9).abs()
    phi_g = D.norm(dim=1)[None, :]                             # row b of down, by the input b
    torch.testing.assert_close(efx.foresight_score("gate_proj", Ws, h, n_heads, n_kv, "code"),
                               Ws["gate_proj"].abs() * h.sqrt() * phi_g, **F64)


@pytest.mark.t3
def test_hidden_e3_e8_dead_column_is_pruned_first_in_float32():
    W, h = rand(6, 10, seed=3, dtype=torch.float32), rand(10, seed=4, dtype=torch.float32).abs() + 0.5
    h[7] = 0                                                   # an input never active
    S = efx.wanda_score(W, h)
    assert S.dtype == torch.float32 and (S[:, 7] == 0).all()
    keep = efx.select_mask(S, 0.1)                             # k = 1 per row: the dead column
    assert (~keep).sum(1).tolist() == [1] * 6 and not keep[:, 7].any()


@pytest.mark.t3
def test_hidden_e8_e10_ties_and_zero_k():
    S = torch.randint(0, 3, (5, 16), generator=torch.Generator().manual_seed(2)).float()
    assert torch.equal(efx.select_mask(S, 0.3), keep_lowest_pruned(S, 4))
    flat = keep_lowest_pruned(S.reshape(1, -1), int(0.3 * 80)).view(5, 16)
    assert torch.equal(efx.select_mask(S, 0.3, per="layer"), flat)
    groups = keep_lowest_pruned(S.reshape(-1, 8), 4).view(5, 16)
    assert torch.equal(efx.select_mask(S, 0.0, nm=(4, 8)), groups)
    assert efx.select_mask(S, 0.05).all()                      # floor(0.05 * 16) = 0: nothing pruned


@pytest.mark.t3
def test_hidden_e7_eta_one_and_dtype():
    S, prev = torch.rand(3, 4), torch.rand(3, 4, dtype=torch.float64)
    assert torch.equal(efx.average_score(S, prev, 1.0), S)
    avg = efx.average_score(S, prev, 0.25)
    assert avg.dtype == torch.float32
    torch.testing.assert_close(avg, 0.25 * S + 0.75 * prev.float())


class ParallelBlock(torch.nn.Module):
    """A block stand-in whose maps all read the input: q, k, v, o, gate, up, down in parallel."""

    def __init__(self, n=5):
        super().__init__()
        self.input_layernorm = torch.nn.LayerNorm(n)
        self.self_attn, self.mlp = torch.nn.Module(), torch.nn.Module()
        for i, name in enumerate(M.SEVEN_MAPS):
            lin = M.LoRALinear(n, n)
            lin.weight.data = rand(n, n, seed=20 + i, dtype=torch.float32)
            setattr(self.self_attn if i < 4 else self.mlp, name, lin)

    def forward(self, x, cos, sin):
        maps = [getattr(self.self_attn if i < 4 else self.mlp, n) for i, n in enumerate(M.SEVEN_MAPS)]
        return x + sum(f(x) for f in maps)


@pytest.mark.t3
@torch.no_grad()
def test_hidden_e1_one_batch_larger_than_the_windows():
    xs = rand(3, 7, 5, seed=5, dtype=torch.float32)
    stats = efx.calibrate_block(ParallelBlock(), xs, None, None, need_H=True, batch_size=16)
    X = xs.reshape(-1, 5)
    for name in M.SEVEN_MAPS:
        torch.testing.assert_close(stats[name]["h"], X.square().sum(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats[name]["H"], X.T @ X, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- T4
def plain_obs(W, H, keep, percdamp):
    """OBS for a given mask, column by column with the explicit inverse of the free block."""
    W, H = W.clone(), H.clone()
    n = W.shape[1]
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * H.diagonal().mean() * torch.eye(n, dtype=H.dtype)
    for c in range(n):
        Hinv = torch.linalg.inv(H[c:, c:])
        for a in range(W.shape[0]):
            if not keep[a, c]:
                W[a, c:] -= W[a, c] / Hinv[0, 0] * Hinv[0]
    return W * keep


@pytest.mark.t4
def test_hidden_e16_random_mask_two_dead_columns_against_plain_obs():
    X = rand(50, 12, seed=6)
    X[:, [2, 9]] = 0
    W, H = rand(4, 12, seed=7), X.T @ X
    keep = torch.rand(4, 12, generator=torch.Generator().manual_seed(8)) > 0.5
    keep[:, 2] = True                                          # a dead input is zeroed even if kept
    got, k = efx.sparsegpt_prune(W, H, 0.0, blocksize=4, mask=keep)
    want = plain_obs(W, H, keep, 0.01)
    assert torch.equal(k, keep) and (got[:, [2, 9]] == 0).all()
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)


@pytest.mark.t4
def test_hidden_e16_all_kept_changes_nothing_and_e11_4_8_in_float32():
    X, W = rand(40, 16, seed=10), rand(3, 16, seed=11)
    same, keep = efx.sparsegpt_prune(W, X.T @ X, 0.0, mask=torch.ones(3, 16, dtype=torch.bool))
    assert keep.all() and torch.allclose(same, W, rtol=1e-10, atol=1e-12)
    W32, keep = efx.sparsegpt_prune(W.float(), (X.T @ X).float(), 0.0, nm=(4, 8), blocksize=8)
    assert W32.dtype == torch.float32 and ((~keep).view(3, 2, 8).sum(-1) == 4).all()
    assert (W32[~keep] == 0).all() and torch.isfinite(W32).all()


@pytest.mark.t4
def test_hidden_e11_threshold_over_the_whole_block_not_per_row():
    """E11 picks the block's floor(rho m bs) + 1 lowest saliencies (no ties), wherever they lie."""
    X, W = rand(60, 8, seed=12), rand(4, 8, seed=13)
    W[0] *= 100                                                # row 0 keeps (almost) everything
    _, keep = efx.sparsegpt_prune(W, X.T @ X, 0.5, blocksize=8)
    assert (~keep).sum() == 17 and (~keep[0]).sum() < (~keep[1:]).sum(1).min()


# ------------------------------------------------------------------------- T5
def e12_row(U_a, A, keep_a, d, kappa, lam):
    """argmin_delta of E12 for one row, by least squares on stacked weighted residuals."""
    w = torch.where(keep_a, kappa * d, d).sqrt()
    lhs = torch.cat([(w[:, None] * A.T), math.sqrt(lam) * torch.eye(A.shape[0], dtype=A.dtype)])
    rhs = torch.cat([-(w * U_a * ~keep_a), torch.zeros(A.shape[0], dtype=A.dtype)])
    return torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0]


@pytest.mark.t5
@pytest.mark.parametrize("kappa", [0.0, 0.7])
def test_hidden_e13_rank_one_adapter(kappa):
    W, A, B = rand(5, 9, seed=14), rand(1, 9, seed=15), rand(5, 1, seed=16)
    keep, d, s = rand(5, 9, seed=17) > 0, rand(9, seed=18).abs() + 0.1, 4.0
    dB = efx.pbs_update(W, A, B, keep, d, s, kappa=kappa, lam=1e-4)
    U = W + s * B @ A
    for a in range(5):
        torch.testing.assert_close(s * dB[a], e12_row(U[a], A, keep[a], d, kappa, 1e-4), **F64)


@pytest.mark.t5
def test_hidden_e14_float32_close_to_float64():
    W, A, B = rand(6, 10, seed=19), rand(2, 10, seed=20), rand(6, 2, seed=21)
    keep, d = rand(6, 10, seed=22) > 0, rand(10, seed=23).abs() + 0.1
    dB64 = efx.pbs_update(W, A, B, keep, d, 2.0)
    dB32 = efx.pbs_update(W.float(), A.float(), B.float(), keep, d.float(), 2.0)
    assert dB32.dtype == torch.float32
    torch.testing.assert_close(dB32.double(), dB64, rtol=1e-4, atol=1e-5)


@pytest.mark.t5
def test_hidden_e15_fully_kept_row_unchanged_and_lstsq_elsewhere():
    X = rand(40, 9, seed=24)
    W, A, B, s, lam = rand(5, 9, seed=25), rand(2, 9, seed=26), rand(5, 2, seed=27), 0.5, 1e-3
    keep = rand(5, 9, seed=28) > 0
    keep[3] = True                                             # nothing pruned in row 3: no error to fix
    dB = efx.gram_pbs_update(W, A, B, keep, X.T @ X, s, lam=lam)
    assert torch.allclose(dB[3], torch.zeros(2, dtype=dB.dtype), atol=1e-12)
    U = W + s * B @ A
    for a in (0, 4):
        K, P = keep[a], ~keep[a]
        lhs = torch.cat([X[:, K] @ A[:, K].T, math.sqrt(lam) * torch.eye(2, dtype=A.dtype)])
        rhs = torch.cat([X[:, P] @ U[a, P], torch.zeros(2, dtype=A.dtype)])
        torch.testing.assert_close(s * dB[a], torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0], **F64)


@pytest.mark.t5
def test_hidden_s7_parts_in_float32_and_a_fully_kept_mask():
    shapes = ((4, 6), (2, 6), (4, 2), (4, 2))
    W, A, B, dB = (rand(*s, seed=30 + i, dtype=torch.float32) for i, s in enumerate(shapes))
    d, keep = rand(6, seed=40, dtype=torch.float32).abs(), torch.ones(4, 6, dtype=torch.bool)
    P, K = efx.merge_error_parts(W, A, B, dB, keep, d, 2.0)
    assert (P == 0).all() and torch.allclose(K, (d * (2.0 * dB @ A).square()).sum(1), rtol=1e-5)


# ------------------------------------------------------------------------- T6
@pytest.mark.t6
@pytest.mark.parametrize("args, want", [((7, 2, 3, 0), [6, 12]), ((1, 3, 1, 1), [1, 2]),
                                        ((2, 5, 1, 5), [5]), ((3, 1, 5, 0), [])])
def test_hidden_s8_prune_points(args, want):
    assert train.prune_points(*args) == want


@pytest.mark.t6
def test_hidden_s8_ramp_single_call_and_none():
    assert train.ramp(0.7, 1, 1, "cubic") == pytest.approx(0.7)
    assert train.ramp(0.3, 2, 5, "none") == 0.3
    assert train.ramp(0.5, 1, 2, "cubic") == pytest.approx(0.5 * 7 / 8)


@pytest.mark.t6
def test_hidden_s8_prune_every_2_resumed_in_epoch_2(monkeypatch):
    """epochs 5, prune_every 2: calls before epochs 2 and 4; resumed at epoch 2, both still run."""
    events, spe = [], 1
    r = types.SimpleNamespace(cfg=train.TrainConfig(method="efx", epochs=5, prune_every=2),
                              steps_per_epoch=spe, start_epoch=2, model=torch.nn.Module())

    def prune_call(r, method, *, tag, compensate=False, average=False, keep_scores=False):
        events.append((tag, compensate, average, keep_scores))
        return {"tag": tag}
    for name, f in dict(setup=lambda c: r, evaluate=lambda r, k: None, attach_lora=lambda r: None,
                        batches=lambda r, e: iter([(e, None)]), prune_call=prune_call,
                        train_step=lambda r, e, s, b: events.append(s), save_checkpoint=lambda r, e: None,
                        finish=lambda r, final: final).items():
        monkeypatch.setattr(train, name, f)
    assert train.run(r.cfg)["tag"] == "final"
    assert events == [("step2", True, True, True), 2, 3, ("step4", True, True, False), 4,
                      ("final", True, False, False)]
