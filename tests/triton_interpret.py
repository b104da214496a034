"""Shared set-up of the kernel tests: Triton's interpreter on machines without CUDA.

Importing this module sets ``TRITON_INTERPRET=1`` when there is no GPU and then imports triton,
so that triton and every kernel module are first imported with the interpreter chosen (triton
decides between compiling and interpreting when a function is decorated, its own standard
library included). The Triton kernels then run on CPU tensors; with a GPU the same tests run the
compiled kernels.
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
if HAS_TRITON:
    import triton  # noqa: F401
TRITON_MARKS = [
    pytest.mark.triton,
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install -e '.[test]' installs it)"),
]


def requires_triton(test):
    """Mark one test as a Triton test (``pytestmark = TRITON_MARKS`` marks a whole module)."""
    for mark in TRITON_MARKS:
        test = mark(test)
    return test

# Triton's interpreter truncates fp32 -> bf16 casts where a GPU rounds to nearest, so anything the
# kernels round to bf16 is compared within one bf16 step (2^-7 relative).
BF16_RTOL = 2.0**-7
