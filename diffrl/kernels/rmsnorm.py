"""RMSNorm in the Llama order: normalise in fp32, cast back to the input dtype, scale by the weight.

:func:`rms_norm_torch` is the exact PyTorch fallback of the fused kernel in
:mod:`diffrl.kernels.rmsnorm_triton`; :func:`rms_norm` picks one of the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels.dispatch import use_triton


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``weight * (x / rms(x)).to(x.dtype)`` over the last dimension, in the dtype torch promotes
    ``weight`` and ``x`` to; Triton where :func:`diffrl.kernels.dispatch.use_triton` says so."""
    if use_triton(x, weight):
        from diffrl.kernels.rmsnorm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    return rms_norm_torch(x, weight, eps)


def rms_norm_torch(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The PyTorch fallback of :func:`rms_norm`."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)
