"""Faster forms of three plain steps of model.py, each with the same result (the dropout: the
same distribution). model.py writes the plain form of every step and switches these in where
they pay while model.SPEEDUPS is True (the default); model.SPEEDUPS = False runs the plain
forms only (`python -m bench.bench_model --plain`).

Gains: time of the plain form / time with the speed-up, the other two on; SmolLM2-135M,
float32, 2 CPU threads, bench_model's work (LoRA r 8 on the seven maps, dropout 0.05), both
forms in one process, interleaved, medians of 8 (10 for the layout) paired repeats.

* GapDropout replaces nn.Dropout on the adapters' input (method (E0)), in CPU training: it
  draws the gaps between zeros, ~p * numel random numbers instead of numel.
  Gain: 1.35x on a LoRA step of 4 x 256 supervised tokens, 1.13x on the main job's batches.
  Proof: tests/test_model.py test_e0_gap_dropout_* (rate at every position, scaling,
  gradient, seeding, eval mode; nn.Dropout passes the same checks and rates agree).
* completion_ce replaces F.cross_entropy over lm_head's logits at the supervised positions
  (method §8) when lm_head is frozen (LoRA): the gradient is computed in the forward pass,
  chunk by chunk, so the full logits never exist and backward needs no lm_head matmul.
  Gain: 1.12x on a LoRA step of 4 x 256 supervised tokens, 1.02x on the main job's batches
  (short completions); peak memory of that step 2.40 GB instead of 3.41 (all three off).
  Proof: test_s8_loss_at_supervised_positions_equals_full_logits (value and gradients: fast
  against plain, plain against all-position logits; chunk edges included).
* column_major replaces the row-major layout of loaded weights, on CPU: same values, but
  x W^T with one row of x (generation) runs faster on W stored column-major.
  Gain: 1.18x on greedy generation; forward and LoRA step unchanged (1.00x, 0.99x).
  Proof: test_s2_column_major_load_equals_plain_load (tensors, logits and greedy tokens
  against the plain load).
"""
import math

import torch
import torch.nn as nn


class GapDropout(nn.Dropout):
    """nn.Dropout; on CPU the zeros are placed by drawing the gaps between them (geometric,
    P(gap = g) = (1-p)^(g-1) p): ~p * numel random numbers, not numel. Same distribution,
    another random stream. Elsewhere (CUDA) nn.Dropout itself."""

    def forward(self, x):
        if not self.training or x.device.type != "cpu":
            return super().forward(x)
        y, n, p, last = x.contiguous() * (1 / (1 - self.p)), x.numel(), self.p, -1
        while last < n:                      # until the gaps pass the end (rarely twice)
            u = 1 - torch.rand(int(n * p + 6 * (n * p) ** 0.5) + 16)          # (0, 1]
            pos = ((u.log_() / math.log1p(-p)).clamp_(max=n).long() + 1).cumsum_(0) + last
            last = int(pos[-1])
            y.view(-1)[pos[pos < n]] = 0
        return y


class _CompletionCE(torch.autograd.Function):
    """Sum of CE(W h_i, t_i) chunk by chunk, W frozen. d/dh = softmax(W h) W - W_t is computed
    here (the loss ends the graph), so backward only scales it: two lm_head matmuls where the
    plain form takes three (logits, then d/dh in backward)."""

    @staticmethod
    def forward(ctx, h, weight, target, chunk):
        loss = torch.zeros((), device=h.device)
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None             # (N, hidden)
        for i in range(0, len(h), chunk):
            hc, tc = h[i:i + chunk], target[i:i + chunk]
            z = (hc @ weight.T).float()                                     # (c, vocab) logits
            zmax, zt = z.amax(-1, keepdim=True), z.gather(1, tc[:, None])
            e = z.sub_(zmax).exp_()                                         # in place
            s = e.sum(-1, keepdim=True)                                     # softmax = e / s
            loss += (s.log() + zmax - zt).sum()                             # logsumexp - z_t
            if gh is not None:
                gh[i:i + chunk] = (e.to(weight.dtype) @ weight) / s - weight[tc]
        ctx.save_for_backward(gh)
        return loss

    @staticmethod
    def backward(ctx, g):
        return ctx.saved_tensors[0] * g.to(ctx.saved_tensors[0].dtype), None, None, None


def completion_ce(h, weight, target, chunk=None):
    """h (N, hidden), weight (vocab, hidden) frozen, target (N,) -> float32 sum of
    CE(W h_i, t_i), in chunks of 2^23 logits (32 MB float32) unless `chunk` (rows) is given."""
    if weight.requires_grad:                 # no gradient for W is computed: refuse, not drop it
        raise ValueError("completion_ce: weight must be frozen (requires_grad False)")
    return _CompletionCE.apply(h, weight, target, chunk or max(1, 2**23 // weight.shape[0]))


def column_major(weights):
    """Store each matrix column-major (W^T contiguous), values unchanged, in place: MKL's
    x W^T with one row of x reads such W faster."""
    for w in weights:
        w.data = w.data.T.contiguous().T
