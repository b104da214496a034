"""Shared set-up of the kernel tests: Triton's interpreter on machines without CUDA.

Importing this module sets ``TRITON_INTERPRET=1`` when there is no GPU, before any kernel module
is imported (triton decides between compiling and interpreting when a kernel is decorated), so
the Triton kernels run on CPU tensors. With a GPU the same tests run the compiled kernels.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HAS_TRITON = importlib.util.find_spec("triton") is not None
requires_triton = [
    pytest.mark.triton,
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install -e '.[test]' installs it)"),
]

# Triton's interpreter truncates fp32 -> bf16 casts where a GPU rounds to nearest, so anything the
# kernels round to bf16 is compared within one bf16 step (2^-7 relative).
BF16_RTOL = 2.0**-7

