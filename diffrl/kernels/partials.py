"""Streaming softmax partials, merged across vocabulary chunks and groups.

A part of a row's logits ``z`` is summarised by ``(m, s, t)`` = (max, sum exp(z - m),
sum exp(z - m) (z - m)); parts merge exactly, and the whole row's logsumexp is ``m + log s`` and
its entropy ``log s - t / s``. The decode and log-prob fallbacks build their statistics from these
without holding a row's full logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Dot products along the last dimension without materialising ``a * b``."""
    return (a.reshape(-1, 1, a.shape[-1]) @ b.reshape(-1, b.shape[-1], 1)).view(a.shape[:-1])


class Scratch:
    """Flat buffers reused across a call's chunks: a fresh [rows, chunk] tensor per operation costs
    page faults that on CPU take as long as the arithmetic."""

    def __init__(self) -> None:
        self._flat: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor, the front of the buffer ``name``."""
        size = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < size or flat.dtype != dtype:
            flat = self._flat[name] = torch.empty(size, dtype=dtype, device=device)
        return flat[:size].view(shape)

    def like(self, name: str, t: Tensor) -> Tensor:
        """:meth:`get` with ``t``'s shape, dtype and device."""
        return self.get(name, tuple(t.shape), t.dtype, t.device)


def softmax_partials(z: Tensor, with_dot: bool, scale: float = 1.0, scratch: Scratch | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(m, s, t) of ``z * scale`` over its last dimension (``t`` only ``with_dot``); rows of -inf
    give (-inf, 0, 0). ``scratch`` lends the two [.., last] work buffers."""
    scratch = scratch or Scratch()
    top = z.amax(-1)
    shift = torch.where(torch.isfinite(top), top, 0.0)
    d = torch.sub(z, shift[..., None], out=scratch.like("d", z))
    if scale != 1.0:
        d.mul_(scale)
    m = top * scale
    # exp of anything below the smallest normal float is computed as a subnormal, tens of times
    # slower on x86 (at the boundary too, hence the margin); those terms are below 1e-37 of the
    # max's, which contributes 1. Clamping also keeps -inf (suppressed ids) out of the dot
    # product, where 0 * -inf would be nan.
    d.clamp_(min=math.log(torch.finfo(d.dtype).tiny) + 1.0)
    alive = torch.isfinite(top)
    if not with_dot:
        return m, d.exp_().sum(-1).where(alive, 0.0), None
    e = torch.exp(d, out=scratch.like("e", z))
    return m, e.sum(-1).where(alive, 0.0), row_dot(e, d).where(alive, 0.0)


def reduce_partials(m: Tensor, s: Tensor, t: Tensor | None) -> tuple:
    """Combine partials [..., k] of k disjoint parts of the same rows into partials [...]."""
    top = m.amax(-1)
    ref = torch.where(torch.isfinite(top), top, 0.0)[..., None]
    delta = torch.where(torch.isfinite(m), m - ref, 0.0)
    f = torch.exp(m - ref)
    s_all = (s * f).sum(-1)
    t_all = None if t is None else (f * (t + delta * s)).sum(-1)
    return top, s_all, t_all


def merge_partials(a: tuple | None, b: tuple) -> tuple:
    """Merge two (m, s, t) partials of disjoint parts of the same rows (``a`` may be None)."""
    if a is None:
        return b
    return reduce_partials(*(None if x is None else torch.stack((x, y), -1) for x, y in zip(a, b)))


def lse_of(p: tuple) -> Tensor:
    """Logsumexp of the row from its partials."""
    return p[0] + torch.log(p[1])


def entropy_of(p: tuple) -> Tensor:
    """Entropy of the row's softmax from its partials (``t`` required)."""
    return torch.log(p[1]) - p[2] / p[1]
