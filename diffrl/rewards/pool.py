"""Worker processes that score one sample per task, so slow rewards never stall or crash the trainer.

Each worker is a plain ``python -c`` subprocess speaking length-prefixed pickles over its stdin and
stdout (rewards' own prints go to stderr). The parent keeps one task in flight per worker, so a
sample that hangs past the deadline is pinned to one process: that worker is stopped and replaced,
and the sample scores 0 (timeout). A worker that dies (segfault, out of memory) costs its sample
(reward_error). Workers are ordinary processes, not multiprocessing children: nothing of the
trainer (CUDA, threads, the ``__main__`` module) is forked or re-imported into them, and they exit
on their own when the parent's end of the pipe closes.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any, BinaryIO

from diffrl.rewards.registry import REWARD_ERROR, TIMEOUT, Score

# (where the reward comes from: its module, or the ``fn`` reference of a task entry; its
# registered name; kwargs; completion; row)
Task = tuple[str, str, dict[str, Any], str, dict[str, Any]]
_HEADER = struct.Struct("<Q")
_KILL_GRACE_S = 2.0


def _send(stream: BinaryIO, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other end closed the pipe")
    size = _HEADER.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other end closed the pipe mid-message")
    return pickle.loads(data)


def serve() -> None:
    """A worker's loop: read a task, score it, write ``(Score, traceback | None)``; stop at EOF."""
    import importlib

    from diffrl.rewards.registry import RewardSpec, entry_for, reward_entry, score_one

    # Ctrl-C reaches the whole process group; the parent decides when workers stop. SIGTERM
    # (a sample past its deadline) unwinds, so a sandbox it was running is killed and removed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    tasks = sys.stdin.buffer
    while True:
        try:
            source, name, kwargs, completion, row = _receive(tasks)
        except EOFError:
            return
        try:
            if ":" in source:
                entry = entry_for(RewardSpec(name=name, fn=source))
            else:
                importlib.import_module(source)
                entry = reward_entry(name)
        except Exception:
            _send(replies, (Score(0.0, REWARD_ERROR), traceback.format_exc()))
            continue
        _send(replies, score_one(entry, kwargs, completion, row))


class _Worker:
    def __init__(self) -> None:
        # The parent's import path, so rewards registered outside the package (tests, user code) load.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from diffrl.rewards.pool import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def fileno(self) -> int:
        return self.stdout.fileno()

    def kill(self) -> None:
        """SIGTERM, so the worker can clean up what it was running; SIGKILL if it does not go."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stdin.close()
        self.stdout.close()

    def stop(self) -> None:
        try:
            self.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()

    def death(self) -> str:
        self.kill()
        code = self.proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return f"reward worker process died ({how}) while scoring this sample"


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class WorkerPool:
    """``num_workers`` reward processes, started on first use; ``map`` scores tasks in order."""

    def __init__(self, num_workers: int, timeout_s: float) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def map(self, tasks: Sequence[Task]) -> list[tuple[Score, str | None]]:
        """``(score, traceback or None)`` per task, whatever the workers do."""
        results: list[tuple[Score, str | None] | None] = [None] * len(tasks)
        while len(self._workers) < min(self.num_workers, len(tasks)):
            self._workers.append(_Worker())
        idle = deque(self._workers)
        pending = deque(range(len(tasks)))
        busy: dict[_Worker, tuple[int, float]] = {}

        def replace(worker: _Worker) -> None:
            self._workers[self._workers.index(worker)] = fresh = _Worker()
            idle.append(fresh)

        while pending or busy:
            while pending and idle:
                worker, index = idle.popleft(), pending.popleft()
                try:
                    _send(worker.stdin, tasks[index])
                except OSError:
                    results[index] = (Score(0.0, REWARD_ERROR), worker.death())
                    replace(worker)
                    continue
                busy[worker] = (index, time.monotonic() + self.timeout_s)
            if not busy:
                continue
            wait = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
            ready, _, _ = select.select(list(busy), [], [], wait)
            for worker in ready:
                index, _ = busy.pop(worker)
                try:
                    results[index] = _receive(worker.stdout)
                    idle.append(worker)
                except EOFError:
                    results[index] = (Score(0.0, REWARD_ERROR), worker.death())
                    replace(worker)
            now = time.monotonic()
            for worker in [w for w, (_, deadline) in busy.items() if deadline <= now]:
                index, _ = busy.pop(worker)
                results[index] = (Score(0.0, TIMEOUT), None)
                worker.kill()
                replace(worker)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._finalizer()
