"""Rotary embeddings in the half-split (NeoX) form, with partial rotary.

:func:`apply_rope_torch` is the exact PyTorch fallback of the fused kernel in
:mod:`diffrl.kernels.rope_triton`; :func:`apply_rope` picks one of the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels.dispatch import use_triton


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of each head of ``x`` [B, H, L, D] in fp32.

    ``cos``/``sin`` are [B or 1, 1, L, rotary_dim] fp32 tables. The fused kernel reads ``x`` in
    whatever layout it has (the [B, L, H * D] projection output seen as [B, H, L, D] by a transpose)
    and writes the same layout; it treats the tables as constants, so a call whose tables need a
    gradient takes the fallback.
    """
    if not (cos.requires_grad or sin.requires_grad) and use_triton(x, cos, sin):
        from diffrl.kernels.rope_triton import apply_rope_triton

        return apply_rope_triton(x, cos, sin)
    return apply_rope_torch(x, cos, sin)


def apply_rope_torch(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The PyTorch fallback of :func:`apply_rope`. Channels past the rotary dimension pass
    through (LLaDA2's partial rotary); the rotation runs in fp32 as LLaDA's
    ``rope_full_precision`` prescribes, which is harmless for the others."""
    rotary_dim = cos.shape[-1]
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    out = (rot * cos + rotated * sin).to(x.dtype)
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out
