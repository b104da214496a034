"""Building blocks shared by every family: RMSNorm, rotary embeddings, masked attention, SwiGLU.

Each family module composes these under its own checkpoint parameter names; nothing here knows
about a family.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrl import kernels


class RMSNorm(nn.Module):
    """RMSNorm in the Llama order: normalise in fp32, cast back, then scale by the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_cos_sin(positions: Tensor, rotary_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables [B, 1, L, rotary_dim] in fp32 for the half-split (NeoX) rotary form.

    Computed from the positions on every call instead of kept as a buffer, so a model built on the
    meta device needs no re-initialisation and nothing non-persistent goes missing on load.
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim)
    )
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of each head of ``x`` [B, H, L, D] in fp32.

    Channels past the rotary dimension pass through (LLaDA2's partial rotary); the rotation itself
    runs in fp32 as LLaDA's ``rope_full_precision`` prescribes, which is harmless for the others.
    The fused kernel reads and writes the transposed per-head view of the projection without a copy.
    """
    return kernels.apply_rope(x, cos, sin)


class KVCache(Protocol):
    """What an attention layer asks of a cache: give it this call's K/V, get back the keys to attend.

    The cache decides whether the new K/V are appended, written at given positions, or only read
    alongside what it holds; the model code stays the same for every caching scheme.
    """

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None,
    layer_idx: int,
    cache: KVCache | None,
) -> Tensor:
    """Scaled dot-product attention over post-RoPE q [B, Hq, Lq, D] and k/v [B, Hkv, Lk, D].

    ``mask`` is a bool keep-mask [B, 1, Lq, Lk_total] (True = may attend) or None for full
    attention. Grouped-query heads are handled by SDPA itself. Returns [B, Lq, Hq * D].
    """
    # SDPA takes a plain bool, and a compiled forward may see head counts as symbolic (the cache's
    # sizes; a module's int attributes in a frame dynamo re-enters after FSDP2's hooks): a branch
    # makes dynamo settle the comparison with a guard, which a bare comparison would leave symbolic.
    gqa = True if q.shape[1] != k.shape[1] else False  # noqa: SIM210
    if cache is not None:
        k, v = cache.update(layer_idx, k, v)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be bool (True = attend), got {mask.dtype}")
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    b, h, lq, d = out.shape
    return out.transpose(1, 2).reshape(b, lq, h * d)


def rotary_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cos: Tensor,
    sin: Tensor,
    *,
    mask: Tensor | None,
    layer_idx: int,
    cache: KVCache | None,
) -> Tensor:
    """RoPE on per-head q [B, L, Hq, D] and k [B, L, Hkv, D], then :func:`attend` with v.

    Every family's attention goes through here, so every family hands its post-RoPE K/V to the
    same cache protocol. Returns [B, L, Hq * D].
    """
    q = apply_rope(q.transpose(1, 2), cos, sin)
    k = apply_rope(k.transpose(1, 2), cos, sin)
    return attend(q, k, v.transpose(1, 2), mask=mask, layer_idx=layer_idx, cache=cache)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with the Qwen/Llama parameter names."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
