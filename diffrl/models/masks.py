"""Attention keep-masks and position ids, built once here for every family.

All masks are bool [B, 1, Lq, Lk] with True meaning "may attend". Padding is always on the left
and is described by a 2-D keep-mask over key columns (1 = real token). Positions count real tokens
only (``cumsum - 1``), so a left-padded row sees exactly the positions it would see alone; with
RoPE this is also what the unpadded reference computes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def positions_from_mask(key_mask: Tensor) -> Tensor:
    """Position ids [B, L] that count real tokens from 0; pads get 0."""
    return (key_mask.long().cumsum(-1) - 1).clamp_min(0)


def _query_columns(q_len: int, k_len: int, q_index: Tensor | None, device: torch.device) -> Tensor:
    if q_index is None:
        return torch.arange(k_len - q_len, k_len, device=device)
    return q_index


def _with_self(keep: Tensor, q_cols: Tensor, k_len: int) -> Tensor:
    # A pad query with every key hidden would give NaN in some SDPA backends; letting every query
    # see itself keeps those rows finite without changing any real row (real queries see themselves).
    diag = q_cols[..., :, None] == torch.arange(k_len, device=keep.device)
    if diag.dim() == 2:
        diag = diag[None]
    return keep | diag[:, None]


def bidirectional_mask(key_mask: Tensor, q_len: int, q_index: Tensor | None = None) -> Tensor:
    """Full attention over real keys. ``q_index`` gives the key column of each query (default: last)."""
    b, k_len = key_mask.shape
    q_cols = _query_columns(q_len, k_len, q_index, key_mask.device)
    keep = key_mask.bool()[:, None, None, :].expand(b, 1, q_len, k_len)
    return _with_self(keep, q_cols, k_len)


def block_ids(key_mask: Tensor, block_size: int) -> Tensor:
    """Block index [B, L] of every column, on a grid that starts at each row's first real token."""
    return positions_from_mask(key_mask) // block_size


def block_causal_mask(key_mask: Tensor, q_len: int, block_size: int, q_index: Tensor | None = None) -> Tensor:
    """Bidirectional within a block, causal across blocks (SDAR / LLaDA2 inference)."""
    b, k_len = key_mask.shape
    q_cols = _query_columns(q_len, k_len, q_index, key_mask.device)
    blk = block_ids(key_mask, block_size)
    q_blk = blk.gather(1, q_cols.expand(b, -1)) if q_cols.dim() == 1 else blk.gather(1, q_cols)
    keep = (blk[:, None, :] <= q_blk[:, :, None]) & key_mask.bool()[:, None, :]
    return _with_self(keep[:, None], q_cols, k_len)


def two_stream_block_mask(key_mask: Tensor, block_size: int) -> Tensor:
    """Mask for the block-diffusion training input ``[x_t ; x_0]`` of length 2L.

    Noisy block k sees noisy block k and clean blocks < k; clean block k sees clean blocks <= k.
    Both halves share the same position ids (``positions_from_mask`` of the half mask).
    """
    b, length = key_mask.shape
    blk = block_ids(key_mask, block_size)
    real = key_mask.bool()
    same = blk[:, :, None] == blk[:, None, :]
    earlier = blk[:, None, :] < blk[:, :, None]
    upto = blk[:, None, :] <= blk[:, :, None]
    no = torch.zeros_like(same)
    top = torch.cat((same, earlier), dim=2)
    bottom = torch.cat((no, upto), dim=2)
    keep = torch.cat((top, bottom), dim=1) & real.repeat(1, 2)[:, None, :]
    cols = torch.arange(2 * length, device=key_mask.device)
    return _with_self(keep[:, None], cols, 2 * length)
