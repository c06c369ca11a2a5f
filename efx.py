"""efx.py: EfficientXpert pruning: calibration, criteria, masks, PBS and the pruning call.

Implements method §3-8 (equations E1-E16) on the model of model.py:
  E1  column energy h from layer-sequential calibration hooks   -> calibrate_block(), prune()
  E2  magnitude, E3 Wanda, E5/E6 ForeSight (paper / reference-code form) -> *_score()
  E7  score average across pruning calls                         -> average_score()
  E8-E10 per-row, per-layer and N:M masks                        -> select_mask()
  E11 SparseGPT (the baseline, kept bug-compatible)              -> sparsegpt_prune() (obs.py)
  E12-E14 Partial Brain Surgeon (update only the LoRA B)         -> pbs_update()
  §7 note: the merged map's error split into pruned / kept parts -> merge_error_parts()
  E15 Gram PBS: B only, full H, survives the masked merge         -> gram_pbs_update()
  E16 OBS reconstruction of the kept weights for a given mask     -> sparsegpt_prune(mask=) (obs.py)
Pure matrix functions take (out, in) = (m, n) weights as torch stores them; "lower score
is pruned first"; masks are bool with True = keep.
"# BEGIN / END SOLUTION Tn" lines mark the bodies a course student writes (course.py, docs/course.md).

One-shot pruning from the command line: python -m drivers.prune. Tests: python -m pytest -q tests/test_efx.py
"""
from __future__ import annotations

import dataclasses
import time

import torch

from model import SEVEN_MAPS, sparsity_of   # SEVEN_MAPS: also the pruning order in a block
from obs import check_finite, chol, sparsegpt_prune   # E11, E16 and the damped solves

METHODS = ("magnitude", "wanda", "sparsegpt", "foresight")
CHOICES = {"method": METHODS, "per": ("row", "layer"), "foresight_variant": ("paper", "code"),
           "pbs_variant": ("paper", "code", "gram"), "reconstruct": ("none", "obs")}


# ---------------------------------------------------------------- criteria (E2-E6)
def magnitude_score(W):
    """method (E2): S_ab = |W_ab|."""
    return W.abs()


def wanda_score(W, h):
    """method (E3): S_ab = |W_ab| * xi_b with xi = sqrt(h) (E1), h the column energy (n,)."""
    # BEGIN SOLUTION T3
    return W.abs() * h.sqrt().unsqueeze(0)
    # END SOLUTION T3


def _heads(name, Ws, n_heads, n_kv_heads):
    """(d_h, g) from q_proj's rows; q has n_heads * d_h rows (Qwen3: d_h need not be hidden/heads)."""
    if name not in SEVEN_MAPS:
        raise ValueError(f"foresight: unknown map {name!r}; expected one of {SEVEN_MAPS}")
    rows = Ws["q_proj"].shape[0]
    if rows % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"q_proj has {rows} rows: expected a multiple of n_heads={n_heads}, "
                         f"and n_heads divisible by n_kv_heads={n_kv_heads}")
    return rows // n_heads, n_heads // n_kv_heads


def consumer_energy(name, Ws, n_heads, n_kv_heads):
    """method (E5) table: c_a (m,) for every output unit a of map `name`; Ws: {map: W + s B A}.
    Query head h reads kv head floor(h/g), so kv head gamma serves query heads gamma*g ..
    gamma*g+g-1: viewing per-unit values of q (or o's columns) as (n_kv, g, d_h) groups them by kv head."""
    d_h, g = _heads(name, Ws, n_heads, n_kv_heads)
    # BEGIN SOLUTION T3
    if name == "q_proj":   # ||K_{gamma(h) d_h + c, :}||^2, repeated over the g heads of gamma
        return Ws["k_proj"].square().sum(1).view(n_kv_heads, d_h).repeat(1, g).reshape(-1)
    if name == "k_proj":   # sum over the g query heads of ||Q_{h d_h + c, :}||^2
        return Ws["q_proj"].square().sum(1).view(n_kv_heads, g, d_h).sum(1).reshape(-1)
    if name == "v_proj":   # sum over the g heads of ||O_{:, h d_h + c}||^2
        return Ws["o_proj"].square().sum(0).view(n_kv_heads, g, d_h).sum(1).reshape(-1)
    if name == "o_proj":
        return Ws["gate_proj"].square().sum(0) + Ws["up_proj"].square().sum(0)
    if name in ("gate_proj", "up_proj"):
        return Ws["down_proj"].square().sum(0)
    return Ws["down_proj"].new_ones(Ws["down_proj"].shape[0])   # down_proj: residual stream
    # END SOLUTION T3


def partner_factor(name, Ws, n_heads, n_kv_heads):
    """method (E6) table: phi, broadcastable to (m, n). Ws hold W + B A (no scale, as the code)."""
    d_h, g = _heads(name, Ws, n_heads, n_kv_heads)
    # BEGIN SOLUTION T3
    if name == "q_proj":   # row (h, c): ||K_gamma(h)[:, b]|| over the d_h rows of kv head gamma(h)
        k = Ws["k_proj"].square().view(n_kv_heads, d_h, -1).sum(1).sqrt()      # (n_kv, n)
        return k.repeat_interleave(g * d_h, dim=0)
    if name == "k_proj":   # row (gamma, c): sqrt(mean over the g heads of ||Q_h[:, b]||^2)
        q = (Ws["q_proj"].square().view(n_kv_heads, g * d_h, -1).sum(1) / g).sqrt()   # (n_kv, n)
        return q.repeat_interleave(d_h, dim=0)
    if name == "v_proj":   # row (gamma, c): sqrt(mean over heads of ||O_{:, h d_h + c}||^2)
        return (consumer_energy(name, Ws, n_heads, n_kv_heads) / g).sqrt().unsqueeze(1)
    if name == "o_proj":
        return ((Ws["gate_proj"].norm(dim=0) + Ws["up_proj"].norm(dim=0)) / 2).unsqueeze(1)
    if name in ("gate_proj", "up_proj"):  # row b of down_proj, indexed by the INPUT b (as the code)
        return Ws["down_proj"].norm(dim=1).unsqueeze(0)
    return Ws["down_proj"].new_ones(1, 1)                       # down_proj
    # END SOLUTION T3


def foresight_score(name, Ws, h, n_heads, n_kv_heads, variant="paper"):
    """ForeSight score of map `name` of one block: variant "paper" (E5) with
    Ws = {map: W + s B A}, variant "code" (E6) with Ws = {map: W + B A} (reference code)."""
    if variant not in ("paper", "code"):
        raise ValueError(f"foresight_variant must be 'paper' or 'code', got {variant!r}")
    # BEGIN SOLUTION T3
    W = Ws[name]
    if variant == "paper":
        return W.square() * h.unsqueeze(0) * consumer_energy(name, Ws, n_heads, n_kv_heads).unsqueeze(1)
    return wanda_score(W, h) * partner_factor(name, Ws, n_heads, n_kv_heads)
    # END SOLUTION T3


def average_score(S, prev, mask_lr=0.5):
    """method (E7): S_bar = eta S + (1 - eta) S_bar_prev, eta = mask_lr; S when there is no prev."""
    if prev is not None and prev.shape != S.shape:
        raise ValueError(f"score_state: stored score {tuple(prev.shape)} != new {tuple(S.shape)}")
    # BEGIN SOLUTION T3
    if prev is None:
        return S
    return mask_lr * S + (1 - mask_lr) * prev.to(S.device, S.dtype)
    # END SOLUTION T3


# ---------------------------------------------------------------- masks (E8-E10)
def _check_nm(nm, n, what="weight"):
    N, M = nm
    if not (0 < N < M):
        raise ValueError(f"nm={N}:{M}: expected 0 < N < M")
    if n % M:
        raise ValueError(f"nm={N}:{M}: {what} has {n} columns, not divisible by M={M}")


def select_mask(scores, sparsity, nm=None, per="row"):
    """Bool keep-mask (True = keep) from scores (m, n); the lowest scores are pruned.
    E8 per="row": floor(rho n) per row; E9 per="layer": floor(rho m n) in the matrix;
    E10 nm=(N, M): the N lowest of every M consecutive columns (sparsity is then ignored).
    Ties: among equal scores the lower column (flat) index is pruned first.
    All three prune the k lowest of every row of a view: (m, n), (1, m n) or (m n / M, M)."""
    m, n = scores.shape
    if nm is not None:
        _check_nm(nm, n, "scores")
    elif not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    elif per not in ("row", "layer"):
        raise ValueError(f"per must be 'row' or 'layer', got {per!r}")
    # BEGIN SOLUTION T3
    if nm is not None:
        rows, k = scores.reshape(-1, nm[1]), nm[0]
    else:                 # int() as Wanda does: floor for positive values
        rows = scores if per == "row" else scores.reshape(1, -1)
        k = int(rows.shape[1] * sparsity)
    if k == 0:
        return torch.ones(m, n, dtype=torch.bool, device=scores.device)
    # The obvious form: the first k of a stable sort of each row,
    #   pruned = torch.zeros_like(rows, dtype=torch.bool).scatter_(
    #       1, rows.argsort(1, stable=True)[:, :k], True)
    # Speed-up, the same masks ~2x faster on CPU (test_e8_e9_e10_equal_a_stable_sort_...):
    # prune all below the k-th value, then as many ties at it as needed, lowest column first.
    thr = rows.kthvalue(k, dim=1, keepdim=True).values
    below, tie = rows < thr, rows == thr
    pruned = below | (tie & (tie.cumsum(1) <= k - below.sum(1, keepdim=True)))
    return (~pruned).view(m, n)
    # END SOLUTION T3


# ---------------------------------------------------------------- PBS (E12-E14)
def pbs_update(W, A, B, mask, d, scale, kappa=1.0, lam=None, variant="paper", pbs_damp=1e-6,
               per_row=False, info=None):
    """method (E12-E14): Partial Brain Surgeon; returns delta_B (m, r), B itself is untouched.
    Moves U = W + s B A towards 0 on the pruned coordinates (mask False) by changing B only.
    Column weights d (n,), keep weight kappa, ridge lam (None: method §7's rule for
    `variant`; "code" drops s, as the reference code). per_row=True forces the per-row E13
    solve even at kappa = 1 (tests and the benchmark compare it with E14)."""
    if variant not in ("paper", "code"):
        raise ValueError(f"pbs_variant must be 'paper' or 'code', got {variant!r}")
    # BEGIN SOLUTION T5
    dt = torch.float64 if torch.float64 in (W.dtype, A.dtype, B.dtype) else torch.float32
    W, A, B, d = W.to(dt), A.to(dt), B.to(dt), d.to(dt)
    s = float(scale) if variant == "paper" else 1.0
    U = W + s * (B @ A)                                    # (m, n)
    P = (~mask).to(dt)                                     # 1 on pruned coordinates
    AD = A * d.unsqueeze(0)                                # (r, n) = A D
    G = AD @ A.T                                           # (r, r) = A D A^T
    if lam is None:
        lam = pbs_damp * G.diagonal().mean() if variant == "paper" else 1e-8
    rhs = (P * U) @ AD.T                                   # (m, r): rows A_P D_P U_{a,P}^T
    if kappa == 1.0 and not per_row:   # method (E14): one r x r solve for all rows
        L, _ = chol(G, float(lam), info, "pbs A D A^T")
        delta = -torch.cholesky_solve(rhs.T, L).T
    else:              # method (E13): per row, K_a = kappa G + (1-kappa) A_P D_P A_P^T + lam I
        r = A.shape[0]
        outer = (A.unsqueeze(1) * A.unsqueeze(0)).reshape(r * r, -1)  # (r^2, n): A_ib A_jb
        GP = ((P * d.unsqueeze(0)) @ outer.T).view(-1, r, r)         # (m, r, r), no (m, r, n)
        L, _ = chol(kappa * G + (1 - kappa) * GP, float(lam), info, "pbs per-row K")
        delta = -torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
    return delta / s
    # END SOLUTION T5


def merge_error_parts(W, A, B, dB, keep, d, scale):
    """method §7 note: the error E = M * (U + s dB A) - U of the masked merge after a change dB
    of the adapter, U = W + s B A the pre-call map, in E12's metric, split per row into its
    part on the pruned coordinates and its part on the kept ones: (sum_P d_b E_ab^2,
    sum_K d_b E_ab^2), each (m,). Why E12-E14 cannot lower the error right after a call."""
    # BEGIN SOLUTION T5
    U = W + scale * (B @ A)
    E2 = d * (keep * (U + scale * (dB @ A)) - U).square()
    return (E2 * ~keep).sum(1), (E2 * keep).sum(1)
    # END SOLUTION T5


def gram_pbs_update(W, A, B, mask, H, scale, lam=None, pbs_damp=1e-6, info=None, target=None):
    """method (E15): Gram PBS; returns delta_B (m, r), B itself is untouched. The masked merge
    zeroes the pruned columns P of row a whatever B does, so the merged row errs on the
    calibration inputs by e = (-U_P, s dB_a A_K); minimising e H e^T + lam ||s dB_a||^2 gives
    (A_K H_KK A_K^T + lam I) s dB_a^T = A_K H_KP U_{a,P}^T: Optimal Brain Surgeon's correction
    restricted to the r directions of the adapter. One r x r system per row, all rows batched.
    target (m, n): the map to reproduce when it is not U = W + s B A itself (E16 then E15: W
    is E16's reconstruction, B = 0, target the pre-call U); the right side is then
    -A_K H_{K,:} e0^T with e0 = M * U - target, which is the above when target = U."""
    # BEGIN SOLUTION T5
    dt = torch.float64 if torch.float64 in (W.dtype, A.dtype, B.dtype, H.dtype) else torch.float32
    W, A, B, H = W.to(dt), A.to(dt), B.to(dt), H.to(dt)
    # Speed-up: row-major operands. The mask and W take the weights' layout, column-major on
    # CPU (support/speedups.column_major), which made this function 4-5x slower on SmolLM2's maps.
    W, mask = W.contiguous(), mask.contiguous()
    target = None if target is None else target.contiguous()
    U = W + scale * (B @ A)                                # (m, n)
    AK = mask.unsqueeze(1) * A                             # (m, r, n): A_K, pruned columns zeroed
    Y = AK @ H                                             # (m, r, n): A_K H_{K,:}
    G = Y @ AK.mT                                          # (m, r, r): A_K H_KK A_K^T
    e0 = mask * U - (U if target is None else target.to(dt))   # merged error at dB = 0
    rhs = -(Y @ e0.unsqueeze(-1))                          # (m, r, 1): A_K H_KP U_{a,P}^T
    if lam is None:
        lam = pbs_damp * ((A @ H) * A).sum(1).mean()       # pbs_damp * mean diag(A H A^T)
    L, _ = chol(G, float(lam), info, "gram pbs A_K H_KK A_K^T")
    return torch.cholesky_solve(rhs, L).squeeze(-1) / scale
    # END SOLUTION T5


# ---------------------------------------------------------------- calibration (section 3, E1)
def _maps(block):
    """{short name: LoRALinear} of one block, in the pruning order q, k, v, o, gate, up, down."""
    return {n: getattr(block.self_attn if n in SEVEN_MAPS[:4] else block.mlp, n) for n in SEVEN_MAPS}


def _run_block(block, xs, cos, sin, batch_size, write):
    """Run `block` over the hidden states xs (nsamples, T, hidden) batch by batch on its device;
    write=True overwrites xs with the outputs (safe: window j's output depends on window j's
    input only). The obvious form is the loop below alone; the speed-up (10-20 % on CPU, equal
    up to float rounding): each map runs as one plain linear with its forward weight
    W + s B A instead of three matmuls, and W, A, B and r are put back afterwards."""
    dev = block.input_layernorm.weight.device
    saved = [(m, m.weight.data, m.r) for m in _maps(block).values() if m.r > 0]
    try:
        for m, _, _ in saved:        # r = 0 makes LoRALinear.forward a plain F.linear
            m.weight.data, m.r = m.augmented_weight().to(m.weight.dtype), 0
        for b in range(0, xs.shape[0], batch_size):
            y = block(xs[b:b + batch_size].to(dev), cos, sin)
            if write:
                xs[b:b + batch_size] = y.to(xs.device)
    finally:
        for m, w, r in saved:
            m.weight.data, m.r = w, r


# model.py feeds q, k, v the same tensor (the normed block input) and gate, up the same
# (the normed attention output): they share one accumulator, computed once, one H for three.
_SAME_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


@torch.no_grad()
def calibrate_block(block, xs, cos, sin, need_H=False, batch_size=8):
    """Forward hooks on the maps accumulate, over every calibration token, method (E1)
    h = sum_t X_t^2 (n,) and, for SparseGPT, H = X^T X (n, n); float32 on the block's device.
    Returns {map: {"h": .., "H": ..}} for the seven maps (shared per _SAME_INPUT)."""
    maps, stats, handles = _maps(block), {}, []     # stats: {hooked module: {"h": .., "H": ..}}

    def hook(mod, inputs, output):
        # BEGIN SOLUTION T3
        X = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()    # (tokens, n)
        stats[mod]["h"] += X.square().sum(0)
        if need_H:
            stats[mod]["H"].addmm_(X.T, X)
        # END SOLUTION T3

    try:
        for name, mod in maps.items():
            if name not in _SAME_INPUT:
                n, dev = mod.in_features, mod.weight.device
                st = stats[mod] = {"h": torch.zeros(n, device=dev)}
                if need_H:
                    st["H"] = torch.zeros(n, n, device=dev)
                handles.append(mod.register_forward_hook(hook))
        _run_block(block, xs, cos, sin, batch_size, write=False)
    finally:                                   # never leave hooks behind, even on errors
        for hd in handles:
            hd.remove()
    return {name: stats[maps[_SAME_INPUT.get(name, name)]] for name in SEVEN_MAPS}


def calib_memory_estimate(cfg, nsamples, seqlen, elem_bytes, o):
    """Bytes a prune call with options `o` adds: the hidden states (exact), one block's
    statistics (h, or H when o.needs_H), the live float32 temporaries of one batch through a
    block and the per-map work (scores, masks, W~ copies; the inverses of E11/E16, E15's
    (m, r, n) products). Nothing depends on the maximum context."""
    hid, inter, attn = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    ins = (hid, attn, hid, inter)                   # distinct inputs: q/k/v, o, gate/up, down
    stats = 4 * sum(n * n if o.needs_H else n for n in ins)
    work = 4 * (4 * inter * hid + (3 * inter * inter if o.needs_H else 0)
                + (2 * attn * hid + 2 * kv * hid + 3 * inter * hid if o.method == "foresight" else 0)
                + (2 * 64 * inter * hid if o.pbs and o.pbs_variant == "gram" else 0))   # r <= 64
    return {"hidden_states": nsamples * seqlen * hid * elem_bytes, "stats": stats,
            "activations": o.calib_batch * seqlen * (8 * hid + 8 * attn + 4 * inter) * 4, "work": work}


# ---------------------------------------------------------------- the pruning call (section 8)
def _parse_nm(nm):
    if nm in (None, "") or isinstance(nm, (tuple, list)):
        return None if nm in (None, "") else (int(nm[0]), int(nm[1]))
    try:
        N, M = (int(v) for v in str(nm).split(":"))
    except ValueError:
        raise ValueError(f"nm must look like '2:4', got {nm!r}") from None
    return N, M


def check_nm_fits(config, nm):
    """method (E10) needs every map's input width divisible by M: checked on the model's Config
    alone, before any weight is loaded. nm: (N, M) or "N:M"."""
    nm = _parse_nm(nm)
    for what, n in (("q/k/v/gate/up_proj (hidden_size)", config.hidden_size),
                    ("o_proj (heads x head_dim)", config.num_attention_heads * config.head_dim),
                    ("down_proj (intermediate_size)", config.intermediate_size)):
        _check_nm(nm, n, what)


@dataclasses.dataclass
class PruneOptions:
    """The options of a pruning call (method §4-8), declared once: train.py's TrainConfig and
    the one-shot PruneConfig reuse these fields (and their comments, the --help text)."""
    method: str = "wanda"            # magnitude (E2) | wanda (E3) | sparsegpt (E11) | foresight (E5/E6)
    sparsity: float = 0.5            # rho: fraction pruned per row (E8) or per layer (E9)
    nm: str = ""                     # "2:4" etc.: N:M instead of unstructured (E10); sparsity is then N / M
    per: str = "row"                 # mask selection: row (E8) | layer (E9)
    foresight_variant: str = "code"  # code (E6, the authors' released code) | paper (E5)
    mask_lr: float = 0.5             # eta of the score average across calls (E7)
    pbs: bool = False                # update the LoRA B before the masked merge (method §7)
    pbs_variant: str = "paper"       # paper | code (E12-E14: no gain after the merge) | gram (E15)
    pbs_kappa: float = 1.0           # kappa of E12 / E13 (paper and code variants)
    pbs_damp: float = 1e-6           # relative ridge of E14 / E15
    reconstruct: str = "none"        # none | obs: OBS update of the kept weights for the mask (E16)
    calib_batch: int = 8             # calibration windows per forward in a pruning call
    blocksize: int = 128             # column block of E11 / E16
    percdamp: float = 0.01           # relative damping of E11 / E16
    offload: bool = False            # calibration hidden states on CPU, moved to the device per batch
    seed: int = 0                    # seed of the fresh LoRA A each pruning call leaves behind

    def __post_init__(self):
        for field, allowed in CHOICES.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r}, expected one of {allowed}")
        self.nm = _parse_nm(self.nm)
        if self.nm is not None:
            _check_nm(self.nm, self.nm[1])
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not (0 < self.mask_lr <= 1 and 0 <= self.pbs_kappa <= 1 and self.calib_batch >= 1):
            raise ValueError(f"need 0 < mask_lr <= 1, 0 <= pbs_kappa <= 1, calib_batch >= 1; "
                             f"got {self.mask_lr}, {self.pbs_kappa}, {self.calib_batch}")
        if self.pbs and self.pbs_variant != "gram" and self.reconstruct != "none":
            raise ValueError(f"pbs_variant={self.pbs_variant!r} with reconstruct="
                             f"{self.reconstruct!r}: E16 replaces the merged map, so E12-E14's "
                             "change of B would be lost; use pbs_variant='gram' or pbs=False")
        if self.method == "sparsegpt" and (self.pbs or self.reconstruct != "none"):
            raise ValueError("pbs and reconstruct need a LoRA criterion (magnitude, wanda, "
                             "foresight); sparsegpt reconstructs by itself")

    @classmethod
    def of(cls, config, **call):
        """The options a config that reuses these fields holds (train.py's TrainConfig,
        drivers/prune.py's PruneConfig), with the call's own values (method, sparsity, ...) over them."""
        return cls(**{**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)}, **call})

    @property
    def needs_H(self):                       # the full H = X^T X of every map (E11, E15, E16)
        return self.method == "sparsegpt" or self.reconstruct == "obs" or (
            self.pbs and self.pbs_variant == "gram")

    @property
    def lora_scale(self):                    # E6 scores W + B A (the reference code drops s)
        return not (self.method == "foresight" and self.foresight_variant == "code")


def _check_calib(model, calib_ids, o):
    if not (torch.is_tensor(calib_ids) and calib_ids.dim() == 2 and calib_ids.numel()
            and not calib_ids.is_floating_point()):
        raise ValueError("prune: calib_ids must be a non-empty integer tensor (nsamples, seqlen)")
    if int(calib_ids.max()) >= model.config.vocab_size or int(calib_ids.min()) < 0:
        raise ValueError(f"prune: calib_ids outside [0, vocab_size={model.config.vocab_size})")
    if o.nm is not None:
        check_nm_fits(model.config, o.nm)


@torch.no_grad()
def prune(model, calib_ids, method=None, sparsity=None, *, options=None, score_state=None,
          log=print, on_block=None, **fields):
    """One pruning call over the whole model, block by block (method §8 PRUNE_CALL, §3).
    options: a PruneOptions; method, sparsity and any other of its fields given as keywords
    win. score_state: {map name: S_bar} on the CPU, or None. Given, each map's score is
    averaged with the one stored there (E7, when there is one) and the result stored.
    log gets one line on the buffers and one per damping increase; on_block(i, n, block)
    is called after each block (a progress line: support/cli.py prune_reporting).
    Returns a report: per-map and per-block exact zeros, overall sparsity, N:M validity,
    time per block, every damping increase."""
    given = dict(fields, **{k: v for k, v in (("method", method), ("sparsity", sparsity)) if v is not None})
    try:
        o = dataclasses.replace(options or PruneOptions(), **given)
    except (ValueError, TypeError) as e:
        raise ValueError(f"prune: {e}") from None
    _check_calib(model, calib_ids, o)
    t_start, was_training, layers = time.time(), model.training, model.model.layers
    report = {"method": o.method, "sparsity_target": o.nm[0] / o.nm[1] if o.nm else o.sparsity,
              "nm": o.nm, "per": o.per, "pbs": o.pbs and o.pbs_variant, "reconstruct": o.reconstruct,
              "maps": {}, "blocks": [], "damping_increased": []}
    model.eval()
    try:
        xs, cos, sin = _block_inputs(model, calib_ids, o, report, log)
        gen = torch.Generator(device=cos.device).manual_seed(o.seed)    # the fresh LoRA A
        for i, block in enumerate(layers):
            t0, names = time.time(), _full_names(i)
            stats = calibrate_block(block, xs, cos, sin, o.needs_H, o.calib_batch)    # E1
            _check_stats(stats, names)
            Ws = None             # ForeSight: the block's W~ of every map, each replaced once pruned
            if o.method == "foresight":
                Ws = {n: m.augmented_weight(None if o.lora_scale else 1.0) for n, m in _maps(block).items()}
            for name, mod in _maps(block).items():
                info = {}
                _prune_map(mod, stats[name], name=name, full=names[name], Ws=Ws, o=o,
                           score_state=score_state, gen=gen, config=model.config, info=info)
                for note in info.get("damping_increased", []):
                    report["damping_increased"].append({"map": names[name], **note})
                    log(f"efx.prune: {names[name]}: {note['what']} singular, damping "
                        f"{note['from']:g} -> {note['to']:g}")
                report["maps"][names[name]] = sparsity_of(mod.weight, o.nm)
                if Ws is not None:      # later maps see this one pruned (reference-code order)
                    Ws[name] = mod.weight.float()      # merged: B = 0, so W + s B A = W
            del stats, Ws
            if i + 1 < len(layers):    # step 4: the pruned block's outputs feed block i+1
                _run_block(block, xs, cos, sin, o.calib_batch, write=True)
            if cos.device.type == "cuda":
                torch.cuda.synchronize(cos.device)         # the block's time, not its launch
            z = [report["maps"][full] for full in names.values()]
            report["blocks"].append({"block": i, "time_s": time.time() - t0,
                                     "sparsity": sum(v["zeros"] for v in z) / sum(v["numel"] for v in z)})
            if on_block is not None:
                on_block(i, len(layers), report["blocks"][-1])
    finally:
        model.train(was_training)
    maps = report["maps"].values()
    report["overall_sparsity"] = sum(v["zeros"] for v in maps) / sum(v["numel"] for v in maps)
    report["nm_valid"] = all(v["nm_valid"] for v in maps) if o.nm else None
    report["time_s"] = time.time() - t_start
    return report


def _block_inputs(model, calib_ids, o, report, log):
    """The embedded calibration windows (block 0's inputs), RoPE's cos and sin; logs and
    records the buffers the call needs (calib_memory_estimate)."""
    cfg, emb = model.config, model.model.embed_tokens
    dev = emb.weight.device
    where = torch.device("cpu") if o.offload else dev
    nsamples, T = calib_ids.shape
    est = report["est_calib_bytes"] = calib_memory_estimate(cfg, nsamples, T, emb.weight.element_size(), o)
    MiB = lambda x: f"{x / 2**20:.1f} MiB"
    log(f"efx.prune: {o.method} rho={o.sparsity} nm={o.nm} per={o.per}: buffers "
        f"{MiB(est['hidden_states'])} hidden states ({nsamples}x{T}x{cfg.hidden_size} on {where})"
        f" + {MiB(est['stats'])} statistics + ~{MiB(est['activations'] + est['work'])} work")
    xs = torch.empty(nsamples, T, cfg.hidden_size, dtype=emb.weight.dtype, device=where)
    for b in range(0, nsamples, o.calib_batch):
        xs[b:b + o.calib_batch] = emb(calib_ids[b:b + o.calib_batch].to(dev)).to(where)
    cos, sin = model.rope(T, dev)
    return xs, cos, sin


def _full_names(i):
    """{short name: the map's name in the checkpoint} for block i."""
    return {n: f"model.layers.{i}.{'self_attn' if n in SEVEN_MAPS[:4] else 'mlp'}.{n}" for n in SEVEN_MAPS}


def _check_stats(stats, names):
    """NaN / inf statistics would give arbitrary masks: stop before any weight changes."""
    for name, st in stats.items():
        for k, v in st.items():
            check_finite(v, f"efx.prune: calibration statistic {k} of {names[name]}",
                         " (the block's inputs overflow or the weights are not finite)")


def _prune_map(mod, st, *, name, full, Ws, o, score_state, gen, config, info):
    """One map of method §8 PRUNE_CALL: W~ -> score -> average -> mask -> compensate -> merge.
    st: the map's calibration statistics; Ws: the block's W~ (ForeSight), else None."""
    if o.method == "sparsegpt":  # method (E11) on W~ = W + s B A: mask and reconstruction at once
        W_new, keep = sparsegpt_prune(mod.augmented_weight(), st["H"], o.sparsity, o.nm,
                                      o.blocksize, o.percdamp, info)
    else:
        W = Ws[name] if Ws is not None else mod.augmented_weight()     # W~ (E6: W + B A)
        if o.method == "magnitude":
            S = magnitude_score(W)                                     # E2
        elif o.method == "wanda":
            S = wanda_score(W, st["h"])                                # E3
        else:
            S = foresight_score(name, Ws, st["h"], config.num_attention_heads,
                                config.num_key_value_heads, o.foresight_variant)   # E5 / E6
        if score_state is not None:                                    # E7
            S = average_score(S, score_state.get(full), o.mask_lr)
            score_state[full] = S.detach().to("cpu", torch.float32)
        keep = select_mask(S, o.sparsity, o.nm, o.per)                 # E8 / E9 / E10
        W_new = _compensate(mod, W, keep, st, o, info)                 # E12-E16, or None
    mod.merge(keep)              # W <- M * (W + s B A), B = 0 (method (E0))
    if W_new is not None:        # E11 / E16: the reconstructed kept weights replace the merge
        mod.weight.copy_(W_new.to(mod.weight.dtype))
    mod.reset_lora(gen)          # fresh A (Kaiming), B = 0: the next epoch trains a new adapter


def _compensate(mod, W, keep, st, o, info):
    """Compensation for the mask `keep` before the masked merge (method §7). Changes the
    adapter's B in place (E12-E15), or returns the kept weights that replace the merged map
    (E16, followed by E15 through a fresh B with pbs_variant gram); None: merge as is."""
    gram = o.pbs and mod.r > 0 and o.pbs_variant == "gram"
    if o.reconstruct == "obs":                                         # E16 for this mask
        U = W if o.lora_scale else mod.augmented_weight()             # W + s B A
        W_new, _ = sparsegpt_prune(U, st["H"], 0.0, None, o.blocksize, o.percdamp, info, mask=keep)
        if gram:         # then E15 on what E16's column order left, through a fresh B
            dB = gram_pbs_update(W_new, mod.lora_A, torch.zeros_like(mod.lora_B), keep, st["H"],
                                 mod.scaling, pbs_damp=o.pbs_damp, info=info, target=U)
            W_new += keep * (mod.scaling * dB @ mod.lora_A)
        return W_new
    if gram:                                                           # E15, B only
        mod.lora_B += gram_pbs_update(mod.weight, mod.lora_A, mod.lora_B, keep, st["H"],
                                      mod.scaling, pbs_damp=o.pbs_damp, info=info)
    elif o.pbs and mod.r > 0:                                          # E12-E14, B only
        d = st["h"] if o.pbs_variant == "paper" else st["h"].sqrt().clamp_min(1e-12)
        mod.lora_B += pbs_update(mod.weight, mod.lora_A, mod.lora_B, keep, d, mod.scaling,
                                 o.pbs_kappa, variant=o.pbs_variant, pbs_damp=o.pbs_damp, info=info)
    return None
