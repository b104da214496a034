"""Fused rotary embedding (half-split form, partial rotary), forward and backward.

One program handles one (batch, position) and a block of heads: it reads the two rotary halves
and the pass-through channels of each head straight from ``x`` with its own strides (the
[B, L, H * D] q/k projection output seen as [B, H, L, D] by a transpose, no copy), rotates
in fp32 and writes an output of the same layout. The backward pass is the inverse rotation of the
incoming gradient, run by the same kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rope_kernel(
    x_ptr,
    cos_ptr,
    sin_ptr,
    y_ptr,
    n_heads,
    seq_len,
    half,
    n_pass,
    sx_b,
    sx_h,
    sx_l,
    sy_b,
    sy_h,
    sy_l,
    sc_b,
    sc_l,
    INVERSE: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // seq_len).to(tl.int64)
    pos = (pid % seq_len).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)
    head_ok = heads < n_heads
    r = tl.arange(0, BLOCK_HALF)
    r_ok = r < half
    table = b * sc_b + pos * sc_l
    c1 = tl.load(cos_ptr + table + r, mask=r_ok, other=0.0)[None, :]
    c2 = tl.load(cos_ptr + table + half + r, mask=r_ok, other=0.0)[None, :]
    s1 = tl.load(sin_ptr + table + r, mask=r_ok, other=0.0)[None, :]
    s2 = tl.load(sin_ptr + table + half + r, mask=r_ok, other=0.0)[None, :]
    x_row = x_ptr + b * sx_b + pos * sx_l + heads[:, None].to(tl.int64) * sx_h
    y_row = y_ptr + b * sy_b + pos * sy_l + heads[:, None].to(tl.int64) * sy_h
    ok = head_ok[:, None] & r_ok[None, :]
    x1 = tl.load(x_row + r[None, :], mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half + r[None, :], mask=ok, other=0.0).to(tl.float32)
    if INVERSE:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(y_row + r[None, :], y1.to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(y_row + half + r[None, :], y2.to(y_ptr.dtype.element_ty), mask=ok)
    if BLOCK_PASS > 0:
        p = 2 * half + tl.arange(0, BLOCK_PASS)
        p_ok = head_ok[:, None] & (p < 2 * half + n_pass)[None, :]
        tl.store(y_row + p[None, :], tl.load(x_row + p[None, :], mask=p_ok, other=0.0), mask=p_ok)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, inverse: bool) -> Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    bsz, n_heads, seq_len, head_dim = x.shape
    rotary_dim = cos.shape[-1]
    cos = cos.expand(bsz, 1, seq_len, rotary_dim)
    sin = sin.expand(bsz, 1, seq_len, rotary_dim)
    if cos.stride(-1) != 1 or cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    y = torch.empty_like(x)  # keeps x's strides: the [B, L, H, D] memory of the projection
    half, n_pass = rotary_dim // 2, head_dim - rotary_dim
    block_heads = min(triton.next_power_of_2(n_heads), 16)
    grid = (bsz * seq_len, triton.cdiv(n_heads, block_heads))
    if y.numel():
        _rope_kernel[grid](
            x, cos, sin, y, n_heads, seq_len, half, n_pass,
            x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2), cos.stride(0), cos.stride(2),
            INVERSE=inverse, BLOCK_HEADS=block_heads, BLOCK_HALF=triton.next_power_of_2(half),
            BLOCK_PASS=triton.next_power_of_2(n_pass) if n_pass else 0,
        )
    return y


class _FusedRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor):  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return _rotate(g, cos, sin, inverse=True), None, None


def apply_rope_triton(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The fused kernel behind :func:`diffrl.kernels.apply_rope` (same arguments and result)."""
    rotary_dim = cos.shape[-1]
    if x.dim() != 4 or rotary_dim % 2 or rotary_dim > x.shape[-1] or cos.shape != sin.shape:
        raise ValueError(
            f"apply_rope needs x [B, H, L, D] and cos/sin [B or 1, 1, L, R] with even R <= D; "
            f"got {tuple(x.shape)}, {tuple(cos.shape)}, {tuple(sin.shape)}"
        )
    return _FusedRope.apply(x, cos.float(), sin.float())
