"""Progress of one phase (warm start, training, evaluation): a tqdm bar on a terminal, plain lines
otherwise (log files, SLURM), both with an ETA from this phase's own pace.

The clock starts when the phase is created, right before its first unit of work, and the ETA is
the remaining units times the mean time per unit so far (tqdm with ``smoothing=0``), so time spent
before the phase (loading, an earlier phase, the steps a resumed run skipped) never inflates it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

# Plain-line mode prints about this many lines per phase.
LINES_PER_PHASE = 20


def duration(seconds: float) -> str:
    """``75.0`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """``update()`` after each unit of ``total``; ``initial`` units were done before (a resume)."""

    def __init__(
        self, desc: str, total: int, *, initial: int = 0, unit: str = "step", enabled: bool = True,
        stream: TextIO | None = None, clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.desc, self.total, self.initial, self.n, self.unit = desc, total, initial, initial, unit
        self.stream = stream or sys.stderr
        self.enabled, self.clock, self.start = enabled, clock, clock()
        self.postfix: dict[str, str] = {}
        self.every = max(1, (total - initial) // LINES_PER_PHASE)
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, smoothing=0, dynamic_ncols=True, file=self.stream)

    def eta(self) -> float | None:
        """Seconds left at this phase's mean pace (None before the first unit)."""
        done = self.n - self.initial
        return (self.total - self.n) * (self.clock() - self.start) / done if done > 0 else None

    def line(self) -> str:
        """The plain progress line: ``rl: 10/100 (10%) 2.31 s/step, elapsed 23s, ETA 3m28s, reward=0.412``."""
        done, elapsed, eta = self.n - self.initial, self.clock() - self.start, self.eta()
        pace = f"{elapsed / done:.2f} s/{self.unit}" if done else "-"
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        left = duration(eta) if eta is not None else "?"
        return f"{self.desc}: {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%) {pace}, elapsed {duration(elapsed)}, ETA {left}{extra}"

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` units done; ``postfix`` values (floats shown to 3 decimals) join the line."""
        self.n += n
        self.postfix = {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in postfix.items()}
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
        elif self.enabled and ((self.n - self.initial) % self.every == 0 or self.n == self.total):
            print(self.line(), file=self.stream, flush=True)

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
