"""Count the host-device synchronisations a block of code asks for, on any device.

On a GPU every op whose result the host must read (``.item()``, ``bool(t)`` in an ``if``,
``int(t)``, ``.tolist()``) or whose output size depends on the data (``nonzero``, ``unique``,
indexing with a bool mask, ``masked_select``) stalls the host until the device catches up.
``torch.cuda.set_sync_debug_mode`` reports them on CUDA only; this counter sees the same calls
through a ``TorchFunctionMode``, so a CPU test can count them per denoising step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Calls that read a device value on the host.
_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"}
# Calls whose output shape depends on the data.
_DATA_SHAPED = {"nonzero", "unique", "unique_consecutive", "masked_select", "argwhere", "repeat_interleave"}


def _bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class SyncCounter(TorchFunctionMode):
    """``with SyncCounter() as syncs: ...`` then ``syncs.total`` / ``syncs.calls`` (name -> count).

    Calls made inside a function wrapped by :meth:`exempt` are not counted (e.g. a kernel whose
    GPU path runs without them)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self._paused = 0

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def exempt(self, fn: Callable) -> Callable:
        """``fn`` with its own calls left out of the count."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._paused += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._paused -= 1

        return wrapped

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if not self._paused:
            if name in _READS or name in _DATA_SHAPED:
                self.calls[name] += 1
            elif name in ("__getitem__", "__setitem__") and len(args) > 1 and _bool_index(args[1]):
                self.calls[f"{name}[bool]"] += 1
        return func(*args, **(kwargs or {}))
