"""Fused RMSNorm and RoPE against their PyTorch fallbacks (forward and backward), through Triton's
interpreter on CPU, in the layouts and dtypes the models use."""

from __future__ import annotations

import pytest
import torch

from diffrl.kernels.rmsnorm import rms_norm_torch
from diffrl.kernels.rope import apply_rope_torch
from diffrl.models.layers import rope_cos_sin
from tests.triton_interpret import BF16_RTOL, DEVICE, TRITON_MARKS


def per_head(proj: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """The [B, L, H * D] q/k projection seen as [B, H, L, D], as the models hand it to RoPE (no copy)."""
    return proj.unflatten(-1, (heads, head_dim)).transpose(1, 2)

pytestmark = TRITON_MARKS


def output_and_grads(fn, inputs: list[torch.Tensor], seed: int):
    out = fn(*inputs)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    grads = torch.autograd.grad((out.float() * probe).sum(), [x for x in inputs if x.requires_grad])
    return out, grads


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.float().abs().max().item()
    assert (got.float() - want.float()).abs().max().item() <= rtol * scale + 1e-6, (got, want)


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["fp32", "bf16-x-fp32-weight", "bf16"],
)
def test_fused_rmsnorm_matches_fallback(x_dtype: torch.dtype, w_dtype: torch.dtype) -> None:
    """Rows [3, 7] (ragged for two programs) of width 40 (not a power of two)."""
    from diffrl.kernels.rmsnorm_triton import rms_norm_triton

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 7, 40, generator=gen) * 3).to(x_dtype).to(DEVICE).requires_grad_()
    w = (1 + 0.2 * torch.randn(40, generator=gen)).to(w_dtype).to(DEVICE).requires_grad_()
    got = output_and_grads(lambda a, b: rms_norm_triton(a, b, 1e-5, programs=2), [x, w], 1)
    want = output_and_grads(lambda a, b: rms_norm_torch(a, b, 1e-5), [x, w], 1)
    rtol = 1e-6 if x_dtype == torch.float32 else 2 * BF16_RTOL  # dw sums rows rounded to bf16
    for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
        assert_close(a, b, rtol)


@pytest.mark.parametrize("rotary_dim", [16, 8], ids=["full", "partial"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_rope_matches_fallback_on_the_projection_layout(rotary_dim: int, dtype: torch.dtype) -> None:
    """q/k as the models make them: a [B, L, H * D] projection seen per head by a transpose, left-padded
    rows with their own positions; the output keeps the projection's memory layout."""
    from diffrl.kernels.rope_triton import apply_rope_triton

    b, length, heads, head_dim = 2, 5, 3, 16
    proj = torch.randn(b, length, heads * head_dim, generator=torch.Generator().manual_seed(2)).to(dtype).to(DEVICE)
    proj.requires_grad_()
    positions = (torch.arange(length)[None] - torch.tensor([[0], [2]])).clamp(min=0).to(DEVICE)
    cos, sin = rope_cos_sin(positions, rotary_dim, 10000.0)
    got = output_and_grads(lambda p: apply_rope_triton(per_head(p, heads, head_dim), cos, sin), [proj], 3)
    want = output_and_grads(lambda p: apply_rope_torch(per_head(p, heads, head_dim), cos, sin), [proj], 3)
    rtol = 1e-6 if dtype == torch.float32 else BF16_RTOL
    assert_close(got[0], want[0], rtol)
    assert_close(got[1][0], want[1][0], rtol)
    assert got[0].transpose(1, 2).is_contiguous()  # written in place of [B, L, H, D], no copy
    passthrough = got[0][..., rotary_dim:]
    assert torch.equal(passthrough, per_head(proj, heads, head_dim)[..., rotary_dim:].detach())


def test_fused_rope_broadcasts_one_table_over_the_batch() -> None:
    from diffrl.kernels.rope_triton import apply_rope_triton

    x = torch.randn(3, 2, 6, 8, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    cos, sin = rope_cos_sin(torch.arange(6, device=DEVICE)[None], 8, 500000.0)
    assert torch.allclose(apply_rope_triton(x, cos, sin), apply_rope_torch(x, cos, sin), atol=1e-6)
