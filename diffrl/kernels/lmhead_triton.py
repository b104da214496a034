"""What the fused vocabulary kernels share: a logits tile ``h @ W.T`` computed in registers, the
launch geometry that splits the vocabulary across programs, and the merge of online-softmax
partials.

Every vocabulary kernel runs on a grid of (row blocks, vocabulary splits). A program walks its
split one ``BLOCK_V`` tile at a time, forms the [BLOCK_N, BLOCK_V] logits of that tile from
``BLOCK_H``-wide slices of the hidden states and of the LM head, reduces it, and moves on: no
[rows, vocab] tensor is ever written. Splitting the vocabulary keeps the GPU busy when there are
few rows (a decode step has a few thousand); the per-split partials are [splits, rows] and are
merged here in PyTorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor


@dataclass(frozen=True)
class VocabGrid:
    """Tile sizes and the (row blocks, vocabulary splits) grid of one fused vocabulary kernel."""

    block_n: int
    block_v: int
    block_h: int
    splits: int
    tiles_per_split: int
    row_blocks: int

    @property
    def grid(self) -> tuple[int, int]:
        return (self.row_blocks, self.splits)


def vocab_grid(
    rows: int,
    vocab: int,
    hidden: int,
    device: torch.device,
    *,
    block_n: int = 64,
    block_v: int = 128,
    block_h: int = 64,
    splits: int | None = None,
) -> VocabGrid:
    """Geometry for ``rows`` x ``vocab`` logits: by default about four programs per SM on a GPU
    (one split in the interpreter, where more programs only cost time)."""
    block_h = min(block_h, max(16, triton.next_power_of_2(hidden)))
    row_blocks = triton.cdiv(rows, block_n)
    tiles = triton.cdiv(vocab, block_v)
    if splits is None:
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        splits = max(1, programs // row_blocks)
    splits = max(1, min(splits, tiles))
    per_split = triton.cdiv(tiles, splits)
    # Drop splits that would start past the last tile, so every split owns at least one tile.
    splits = triton.cdiv(tiles, per_split)
    return VocabGrid(block_n, block_v, block_h, splits, per_split, row_blocks)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 products follow torch's own matmul setting, so the fallback and the kernel agree."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


# Triton 3.7.1's interpreter multiplies the raw bits of bf16 operands in tl.dot; upcasting there is
# exact (a bf16 product is exact in fp32) and leaves compiled kernels on the tensor cores.
_UPCAST_DOT = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """``a @ b + acc`` in fp32 (``acc`` may be None)."""
    if _UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def program_rows(n_rows, BLOCK_N: tl.constexpr):
    """This program's rows (axis 0 of the grid) and which of them exist."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, rows < n_rows


@triton.jit
def program_tiles(vocab, tiles_per_split, BLOCK_V: tl.constexpr):
    """The range of vocabulary tiles of this program's split (axis 1 of the grid)."""
    first = tl.program_id(1) * tiles_per_split
    return first, tl.minimum(first + tiles_per_split, tl.cdiv(vocab, BLOCK_V))


@triton.jit
def logits_tile(
    h_ptr,
    w_ptr,
    rows,
    row_ok,
    tile,
    vocab,
    n_hidden,
    stride_h,
    stride_w,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """fp32 logits [BLOCK_N, BLOCK_V] of ``rows`` against vocabulary tile ``tile`` (``-inf`` past
    the vocabulary), with the tile's vocabulary indices and which of them exist."""
    cols = tile * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < vocab
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, n_hidden, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < n_hidden
        h = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_w + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = mma(h, tl.trans(w), acc, PRECISION)
    return tl.where(col_ok[None, :], acc, float("-inf")), cols, col_ok


@triton.jit
def online_softmax_update(m, s, t, z):
    """Fold a tile ``z`` [BLOCK_N, BLOCK_V] (``-inf`` = excluded) into the running max ``m``,
    ``s = sum exp(z - m)`` and ``t = sum exp(z - m) * (z - m)`` of each row.

    Keeping ``t`` relative to the running max (not ``sum p * z``) avoids the cancellation of
    ``lse - E[z]`` when logits are large and the entropy small.
    """
    m_new = tl.maximum(m, tl.max(z, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    shift = (tl.where(s > 0, m, m_safe) - m_safe) * s
    valid = z > float("-inf")
    d = tl.where(valid, z - m_safe[:, None], 0.0)
    e = tl.where(valid, tl.exp(d), 0.0)
    t = alpha * (t + shift) + tl.sum(e * d, axis=1)
    s = alpha * s + tl.sum(e, axis=1)
    return m_new, s, t


def merge_softmax_partials(m: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Merge per-split (max, sum exp, sum exp * shift) [splits, N] into the row's logsumexp and
    entropy [N]; splits that saw only ``-inf`` contribute nothing."""
    top = m.max(0).values
    top_safe = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    w = torch.exp(m - top_safe)
    total = (s * w).sum(0)
    shifted = torch.where(s > 0, w * (t + (m - top_safe) * s), torch.zeros_like(s)).sum(0)
    log_total = torch.log(total)
    return top_safe + log_total, log_total - shifted / total


def check_lm_head(hidden: Tensor, weight: Tensor) -> None:
    """The kernels read rows with one stride and the hidden dimension with unit stride."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V, H] must agree; got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and LM head weight ({weight.dtype}) must share a dtype")


def contiguous_rows(x: Tensor) -> Tensor:
    """``x`` with unit stride along its last dimension (a copy only when needed)."""
    return x if x.stride(-1) == 1 else x.contiguous()

