"""Fused selected-token log-probability and entropy: ``log_softmax(h @ W.T / T)[target]`` with the
logits never leaving registers.

Forward: every program walks its vocabulary split tile by tile, keeps an online logsumexp and the
entropy's running sum, and picks the target's logit out of the tile that holds it; the per-split
partials are merged in PyTorch. Backward: every tile's logits are recomputed, ``dL/dlogits`` is
formed in registers, and ``dh = G @ W`` and ``dW = G.T @ h`` are accumulated with fp32 atomic adds.
That is the Cut Cross-Entropy scheme (Wijmans et al., 2024) without its gradient filtering, so
the gradient is exact up to fp32 summation order (which atomics make vary at the last bit).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from diffrl.kernels.lmhead_triton import (
    VocabGrid,
    check_lm_head,
    contiguous_rows,
    dot_precision,
    logits_tile,
    mma,
    merge_softmax_partials,
    online_softmax_update,
    program_rows,
    program_tiles,
    vocab_grid,
)


@triton.jit
def _logprob_fwd_kernel(
    h_ptr,
    w_ptr,
    tgt_ptr,
    part_ptr,
    n_rows,
    vocab,
    n_hidden,
    stride_h,
    stride_w,
    temperature,
    tiles_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, row_ok = program_rows(n_rows, BLOCK_N)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    z_tgt = tl.zeros((BLOCK_N,), tl.float32)
    first, last = program_tiles(vocab, tiles_per_split, BLOCK_V)
    for tile in range(first, last):
        z, cols, _ = logits_tile(h_ptr, w_ptr, rows, row_ok, tile, vocab, n_hidden, stride_h, stride_w, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION)
        z = z / temperature
        m, s, t = online_softmax_update(m, s, t, z)
        z_tgt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
    plane = tl.num_programs(1) * n_rows
    out = part_ptr + tl.program_id(1) * n_rows + rows
    tl.store(out, m, mask=row_ok)
    tl.store(out + plane, s, mask=row_ok)
    tl.store(out + 2 * plane, t, mask=row_ok)
    tl.store(out + 3 * plane, z_tgt, mask=row_ok)


@triton.jit
def _logprob_bwd_kernel(
    h_ptr,
    w_ptr,
    tgt_ptr,
    lse_ptr,
    mean_ptr,
    g_logp_ptr,
    g_ent_ptr,
    dh_ptr,
    dw_ptr,
    n_rows,
    vocab,
    n_hidden,
    stride_h,
    stride_w,
    temperature,
    tiles_per_split,
    HAS_G_LOGP: tl.constexpr,
    HAS_G_ENT: tl.constexpr,
    NEED_DH: tl.constexpr,
    NEED_DW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, row_ok = program_rows(n_rows, BLOCK_N)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    first, last = program_tiles(vocab, tiles_per_split, BLOCK_V)
    for tile in range(first, last):
        z, cols, col_ok = logits_tile(h_ptr, w_ptr, rows, row_ok, tile, vocab, n_hidden, stride_h, stride_w, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION)
        ok = row_ok[:, None] & col_ok[None, :]
        z = z / temperature
        p = tl.where(ok, tl.exp(z - lse[:, None]), 0.0)
        # d logp / dz = onehot - p ;  d entropy / dz = -p * (z - E_p[z])
        g = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        if HAS_G_LOGP:
            g_logp = tl.load(g_logp_ptr + rows, mask=row_ok, other=0.0)
            g += g_logp[:, None] * (tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0) - p)
        if HAS_G_ENT:
            g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0)
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            g -= g_ent[:, None] * p * tl.where(ok, z - mean[:, None], 0.0)
        g = (g / temperature).to(w_ptr.dtype.element_ty)
        for k0 in range(0, n_hidden, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < n_hidden
            if NEED_DH:
                w = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_w + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                dh = mma(g, w, None, PRECISION)
                tl.atomic_add(dh_ptr + rows[:, None].to(tl.int64) * n_hidden + ks[None, :], dh, mask=row_ok[:, None] & k_ok[None, :])
            if NEED_DW:
                h = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                dw = mma(tl.trans(g), h, None, PRECISION)
                tl.atomic_add(dw_ptr + cols[:, None].to(tl.int64) * n_hidden + ks[None, :], dw, mask=col_ok[:, None] & k_ok[None, :])


class _FusedSelectedLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, geo: VocabGrid):  # type: ignore[override]
        n, h_dim = hidden.shape
        part = torch.empty(4, geo.splits, n, dtype=torch.float32, device=hidden.device)
        _logprob_fwd_kernel[geo.grid](
            hidden, weight, targets, part, n, weight.shape[0], h_dim, hidden.stride(0), weight.stride(0), temperature,
            geo.tiles_per_split, BLOCK_N=geo.block_n, BLOCK_V=geo.block_v, BLOCK_H=geo.block_h, PRECISION=dot_precision(hidden.dtype),
        )
        lse, entropy = merge_softmax_partials(part[0], part[1], part[2])
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.geo = temperature, geo
        ctx.set_materialize_grads(False)  # an unused entropy output then costs nothing in backward
        return part[3].sum(0) - lse, entropy

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_ent: Tensor | None):  # type: ignore[override]
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        geo: VocabGrid = ctx.geo
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return None, None, None, None, None
        n, h_dim = hidden.shape
        dh = torch.zeros(n, h_dim, dtype=torch.float32, device=hidden.device) if need_h else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        _logprob_bwd_kernel[geo.grid](
            hidden, weight, targets, lse, lse - entropy,
            lse if g_logp is None else g_logp.float().contiguous(),
            lse if g_ent is None else g_ent.float().contiguous(),
            lse if dh is None else dh, lse if dw is None else dw,
            n, weight.shape[0], h_dim, hidden.stride(0), weight.stride(0), ctx.temperature, geo.tiles_per_split,
            HAS_G_LOGP=g_logp is not None, HAS_G_ENT=g_ent is not None, NEED_DH=need_h, NEED_DW=need_w,
            BLOCK_N=geo.block_n, BLOCK_V=geo.block_v, BLOCK_H=geo.block_h, PRECISION=dot_precision(hidden.dtype),
        )
        return (
            None if dh is None else dh.to(hidden.dtype),
            None if dw is None else dw.to(weight.dtype),
            None,
            None,
            None,
        )


def selected_logprobs_triton(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    block_n: int = 64,
    block_v: int = 128,
    block_h: int = 64,
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The fused kernel behind :func:`diffrl.kernels.selected_logprobs`: per-row log-prob of
    ``targets`` and entropy [N] in fp32. Tile sizes and the vocabulary split count are exposed for
    tests and tuning."""
    check_lm_head(hidden, weight)
    hidden, weight = contiguous_rows(hidden), contiguous_rows(weight)
    geo = vocab_grid(hidden.shape[0], weight.shape[0], hidden.shape[1], hidden.device, block_n=block_n, block_v=block_v, block_h=block_h, splits=splits)
    return _FusedSelectedLogProb.apply(hidden, weight, targets.long().contiguous(), float(temperature), geo)
