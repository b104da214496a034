"""Counter-based random numbers: every draw is a pure function of integer keys.

A rollout's Gumbel noise, a remasking score or an estimator's mask is keyed by
``(seed, sample id, step, position, ...)``, so results do not depend on batch composition, on
micro-batching, on caching or on the order work is done in; a Triton kernel can reproduce the same
bits with 32-bit integer arithmetic. The mixer is the "lowbias32" integer hash; multiplications are
split into 16-bit halves so that no int64 product overflows.
"""

from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_C1 = 0x7FEB352D
_C2 = 0x846CA68B

# Stream ids keep independent uses of one (seed, sample, step) from sharing numbers.
STREAM_GUMBEL = 1
STREAM_REMASK = 2
STREAM_PROMPT_MASK = 3
STREAM_COMPLETION_MASK = 4
STREAM_TIME = 5

# Seed streams of the training loop: ``counter_hash(trainer.seed, step, stream)`` seeds one use of
# a step. Inner update k's estimator masks use stream ``SEED_UPDATE + k``.
SEED_UPDATE = 0
SEED_REGENERATE = 1  # with rollout.seed: the draws of samples a group repair regenerates
SEED_REPAIR = 2  # the repair's own choices (IGPO's hint chunks and replaced slots)
SEED_SUPERVISED = 7  # the masks of a supervised (SFT or warm-start) step


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 without leaving int64."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def mix32(x: Tensor) -> Tensor:
    """Bijective 32-bit integer hash of values held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def counter_hash(*keys: Tensor | int) -> Tensor:
    """Hash a tuple of integer keys (broadcast together) to int64 values in [0, 2^32)."""
    h: Tensor | None = None
    for key in keys:
        k = torch.as_tensor(key, dtype=torch.int64) if not isinstance(key, Tensor) else key.to(torch.int64)
        if h is not None and k.device != h.device:
            k = k.to(h.device)
        k = k & _M32
        h = mix32(k + _GOLDEN) if h is None else mix32((h ^ k) + _GOLDEN)
    assert h is not None, "counter_hash needs at least one key"
    return h


def counter_uniform(*keys: Tensor | int) -> Tensor:
    """Uniform float64 in (0, 1), a pure function of the keys."""
    return (counter_hash(*keys).to(torch.float64) + 0.5) / 4294967296.0
