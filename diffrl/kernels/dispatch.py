"""Which implementation a kernel call runs: the one rule and the one switch.

``auto`` (the default) runs the Triton kernel when every tensor of the call is on a CUDA device
and ``triton`` imports, and the exact PyTorch fallback otherwise. ``torch`` always runs the
fallback; ``triton`` always runs the kernel (on CPU tensors that needs Triton's interpreter,
``TRITON_INTERPRET=1`` set before triton is imported). The switch is :func:`set_backend`, or the
``DIFFRL_KERNELS`` environment variable when nothing was set in code.

The kernels cover fp16, bf16 and fp32; floating inputs of another dtype (fp64 in gradient checks)
always take the fallback. A kernel may decline more (a top-k wider than its candidate list): its
module says which, beside the call to :func:`use_triton`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "DIFFRL_KERNELS"
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_backend: str | None = None


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a kernel backend; use one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str | None) -> None:
    """Choose ``"auto"``, ``"torch"`` or ``"triton"`` for every later kernel call; ``None`` goes
    back to the ``DIFFRL_KERNELS`` environment variable (default ``auto``)."""
    global _backend
    _backend = None if name is None else _check(name, "kernel backend")


def get_backend() -> str:
    """The backend in force: :func:`set_backend`'s, else ``$DIFFRL_KERNELS``, else ``auto``."""
    if _backend is not None:
        return _backend
    return _check(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run a block under another backend (benchmarks and equivalence checks), then restore."""
    global _backend
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        _backend = previous


@functools.cache
def triton_available() -> bool:
    """Whether triton imports (checked once, on the first call that could use it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(*tensors: Tensor) -> bool:
    """Whether a call on ``tensors`` runs the Triton kernel under the backend in force."""
    backend = get_backend()
    if backend == "torch" or any(t.is_floating_point() and t.dtype not in FUSED_DTYPES for t in tensors):
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError(f"kernel backend 'triton' needs triton: pip install -e '.[gpu]' (or set {ENV_VAR}=auto)")
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "kernel backend 'triton' on CPU tensors runs only in Triton's interpreter: "
            f"set TRITON_INTERPRET=1 before triton is imported (or set {ENV_VAR}=auto)"
        )
    return True
