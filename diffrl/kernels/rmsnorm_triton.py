"""Fused RMSNorm, forward and backward, one row per step of a program.

Forward keeps the fallback's rounding: normalise in fp32, round to the input dtype, multiply by the
weight in fp32 and round to the output dtype. Backward recomputes the normalised row from the
saved ``1/rms``; each program sums its rows' weight gradient in fp32 and the per-program partials
are added in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _rmsnorm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_cols, eps, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    xn = (x * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n_cols + cols, (w * xn).to(y_ptr.dtype.element_ty), mask=ok)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rmsnorm_bwd_kernel(
    x_ptr, w_ptr, g_ptr, rstd_ptr, dx_ptr, dw_ptr, n_rows, n_cols, rows_per_program, NEED_DW: tl.constexpr, BLOCK_D: tl.constexpr
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_D,), tl.float32)
    first = pid * rows_per_program
    base = first.to(tl.int64) * n_cols  # 64-bit offsets: rows x width can pass 2^31
    for row in range(first, tl.minimum(first + rows_per_program, n_rows)):
        at = base + (row - first) * n_cols + cols
        x = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + at, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row)
        xn = x * rstd
        if NEED_DW:
            dw += g * xn.to(x_ptr.dtype.element_ty).to(tl.float32)
        dxn = g * w
        dx = rstd * (dxn - xn * (tl.sum(dxn * xn, axis=0) / n_cols))
        tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    if NEED_DW:
        tl.store(dw_ptr + pid * n_cols + cols, dw, mask=ok)


def _launch_width(n_cols: int) -> tuple[int, int]:
    block = triton.next_power_of_2(n_cols)
    return block, min(16, max(1, block // 256))


class _FusedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float, programs: int | None):  # type: ignore[override]
        shape, d = x.shape, x.shape[-1]
        x2 = x.reshape(-1, d).contiguous()
        y = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
        rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
        block, warps = _launch_width(d)
        if x2.shape[0]:
            _rmsnorm_fwd_kernel[(x2.shape[0],)](x2, weight, y, rstd, d, eps, BLOCK_D=block, num_warps=warps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape, ctx.programs = shape, programs
        return y.view(shape)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x2, weight, rstd = ctx.saved_tensors
        n, d = x2.shape
        if ctx.programs is not None:
            programs = ctx.programs
        elif x2.is_cuda:
            programs = 4 * torch.cuda.get_device_properties(x2.device).multi_processor_count
        else:
            programs = 1
        programs = max(1, min(programs, n))
        per_program = triton.cdiv(n, programs)
        need_dw = ctx.needs_input_grad[1]
        dx = torch.empty_like(x2)
        dw = torch.empty(programs, d, dtype=torch.float32, device=x2.device) if need_dw else rstd
        block, warps = _launch_width(d)
        if n:
            _rmsnorm_bwd_kernel[(programs,)](
                x2, weight, g.reshape(n, d).contiguous(), rstd, dx, dw, n, d, per_program,
                NEED_DW=need_dw, BLOCK_D=block, num_warps=warps,
            )
        grad_w = None
        if need_dw:
            grad_w = dw.sum(0).to(weight.dtype) if n else torch.zeros_like(weight)
        return dx.view(ctx.shape), grad_w, None, None


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float, *, programs: int | None = None) -> Tensor:
    """The fused kernel behind :func:`diffrl.kernels.rms_norm`; ``programs`` sets how many
    programs share the backward's rows (by default four per SM, one in the interpreter)."""
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"RMSNorm weight {tuple(weight.shape)} does not match the last dimension of {tuple(x.shape)}")
    return _FusedRMSNorm.apply(x, weight.contiguous(), float(eps), programs)
