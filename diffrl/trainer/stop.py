"""Stopping cleanly on SIGTERM (SLURM preemption, ``kill``) and SIGINT (Ctrl-C).

The first signal only sets a flag; the loop checks it at the next step boundary, where every
rank agrees (one all-reduce of a flag), saves a checkpoint and returns. A second signal of the
same kind falls back to the default behaviour, so a second Ctrl-C still interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from diffrl.trainer.distributed import all_reduce_sum

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Catches SIGTERM and SIGINT while active (a context manager); ``name`` is the first caught."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        # Signal handlers can only be set from the main thread (a library caller may train in another).
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank caught a signal (every rank must call this at the same point)."""
        return bool(all_reduce_sum(int(self.name is not None), device).item())

    def stopped(self, step: int, total: int, checkpoint: Path) -> str:
        """The console line of a run stopped after ``step`` with ``checkpoint`` written."""
        return (
            f"stopped by {self.name or 'a signal to another rank'} at step {step} of {total}: "
            f"checkpoint {checkpoint}; run the same command again to resume (trainer.resume=auto)"
        )
