"""Tiny Triton kernels that expose one device function of diffrl.kernels to a test.

Imported inside tests only (it needs triton), after tests.triton_interpret has chosen the
interpreter on machines without a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from diffrl.kernels.decode_triton import counter_bits


@triton.jit
def counter_bits_kernel(hash_ptr, out_ptr, n_cols, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """``out[r, c] = counter_bits(hash[r], c)`` for a [BLOCK_N, n_cols] block, BLOCK_V columns per program."""
    rows = tl.arange(0, BLOCK_N)
    cols = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    bits = counter_bits(tl.load(hash_ptr + rows), cols)
    tl.store(out_ptr + rows[:, None] * n_cols + cols[None, :], bits.to(tl.int64))
