"""Rewards by name, and the runner that scores a batch without ever taking the run down.

A reward is a plain function ``(completions, rows, **kwargs) -> list[Score | float]``: one score
per completion, given the data row it answers (``reward_model.ground_truth``, ``extra_info``, ...).
The task recipe names the rewards (or points at a function: ``fn: my_pkg.my_module:my_reward``
or ``fn: path/to/file.py:my_reward``) and their weights.

Registration also says which row fields the reward reads (checked when the data is loaded),
whether it is slow enough to run in the worker pool (math-verify, sandboxed code), and the range
its values lie in: anything else (NaN, inf, out of range, not a number) scores 0 with the reason
``reward_out_of_range`` and is counted, so the advantage rule only ever sees finite, bounded values.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from diffrl.rewards.pool import WorkerPool

log = logging.getLogger(__name__)

# Why a sample scored zero.
PARSE_FAILURE = "parse_failure"
WRONG = "wrong"
TIMEOUT = "timeout"
SANDBOX_VIOLATION = "sandbox_violation"
REWARD_ERROR = "reward_error"
OUT_OF_RANGE = "reward_out_of_range"
# A completion that is not text (None, bytes, a number): no reward is asked to read it.
NOT_TEXT = "not_text"
DEFAULT_BOUNDS = (0.0, 1.0)


@dataclass(frozen=True)
class Score:
    """One sample's reward and, for a zero, why."""

    value: float
    reason: str = ""


RewardFn = Callable[..., Sequence["Score | float"]]
RowCheck = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward: the function, the dotted row fields it reads, an optional row check
    (raises ValueError naming the field and the fix), whether it runs in the worker pool, the
    closed range ``(low, high)`` its values must lie in, and for a reward loaded from
    ``fn: ...`` the reference the pool's workers load it by."""

    fn: RewardFn
    required: tuple[str, ...] = ()
    check_row: RowCheck | None = None
    pooled: bool = False
    bounds: tuple[float, float] = DEFAULT_BOUNDS
    source: str | None = None


_REWARDS: dict[str, RewardEntry] = {}


def register_reward(
    name: str, *, required: Sequence[str] = (), check_row: RowCheck | None = None, pooled: bool = False, bounds: tuple[float, float] = DEFAULT_BOUNDS
) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``. The runner calls it once with no samples when it starts, to
    check its options: raise TypeError or ValueError there for options it cannot use. ``pooled``
    rewards must be module-level functions: the pool's worker processes import them by module
    and look them up by name. ``bounds``: the closed range every value must lie in."""
    low, high = (float(b) for b in bounds)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"reward {name!r}: bounds {bounds} must be two finite numbers, low <= high")

    def wrap(fn: RewardFn) -> RewardFn:
        _REWARDS[name] = RewardEntry(fn, tuple(required), check_row, pooled, (low, high))
        return fn

    return wrap


def load_function(ref: str) -> RewardFn:
    """The function ``ref`` names: ``package.module:function`` or ``path/to/file.py:function``."""
    where, sep, attr = ref.rpartition(":")
    if not sep or not where or not attr:
        raise ValueError(f"task.rewards fn={ref!r}: write it as package.module:function or path/to/file.py:function")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"task.rewards fn={ref!r}: no file {path}")
        # One module name per file, so pool workers loading the same file get the same module.
        module_name = f"diffrl_user_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"task.rewards fn={ref!r}: cannot import {where!r} ({err}); is it on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"task.rewards fn={ref!r}: {where} has no function {attr!r}")
    return fn


def reward_entry(name: str) -> RewardEntry:
    import diffrl.rewards  # noqa: F401  (registers the built-in rewards)

    if name not in _REWARDS:
        raise ValueError(f"reward {name!r} is not registered; known: {', '.join(sorted(_REWARDS))}")
    return _REWARDS[name]


def get_reward(name: str) -> RewardFn:
    return reward_entry(name).fn


@dataclass
class RewardSpec:
    """One entry of a task's ``rewards`` list: a registered reward by ``name``, or a function by
    reference (``fn``; ``name`` then defaults to the function's name, and ``pooled`` / ``bounds``
    say how to run it unless the function registered itself)."""

    name: str = ""
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    fn: str | None = None
    pooled: bool = False
    bounds: list[float] | None = None


def entry_for(spec: RewardSpec) -> RewardEntry:
    """The reward a task entry means; a ``fn`` entry is loaded and registered under its name."""
    if not spec.fn:
        if not spec.name:
            raise ValueError("task.rewards: an entry needs a name (a registered reward) or fn (package.module:function or file.py:function)")
        return reward_entry(spec.name)
    fn = load_function(spec.fn)
    registered = next((e for e in _REWARDS.values() if e.fn is fn), None)
    spec.name = spec.name or fn.__name__
    taken = _REWARDS.get(spec.name)
    if taken is not None and taken.fn is not fn and taken.source is None:
        raise ValueError(f"task.rewards: fn={spec.fn!r} would be named {spec.name!r}, a registered reward; give the entry another name")
    if registered is not None:
        entry = RewardEntry(registered.fn, registered.required, registered.check_row, registered.pooled, registered.bounds, spec.fn)
    else:
        register_reward(spec.name, pooled=spec.pooled, bounds=tuple(spec.bounds or DEFAULT_BOUNDS))(fn)  # type: ignore[arg-type]
        entry = RewardEntry(fn, (), None, spec.pooled, _REWARDS[spec.name].bounds, spec.fn)
    _REWARDS[spec.name] = entry
    return entry


def required_fields(specs: Sequence[RewardSpec]) -> tuple[str, ...]:
    """Every dotted row field the task's rewards read, for validation at load time."""
    return tuple(dict.fromkeys(f for spec in specs for f in entry_for(spec).required))


def check_row(specs: Sequence[RewardSpec], row: dict[str, Any]) -> None:
    """Raise ValueError (naming the field and the fix) if a reward could not read ``row``."""
    for spec in specs:
        check = entry_for(spec).check_row
        if check is not None:
            check(row)


@dataclass
class RewardBatch:
    """Weighted total per sample, each reward's raw scores and reasons, and how many raised."""

    total: Tensor
    per_reward: dict[str, Tensor]
    reasons: dict[str, list[str]]
    errors: int
    # Values replaced by 0 because they were not finite numbers inside the reward's bounds.
    out_of_range: int = 0

    def metrics(self) -> dict[str, float]:
        out = {
            "critic/score/mean": self.total.mean().item(),
            "critic/score/max": self.total.max().item(),
            "critic/score/min": self.total.min().item(),
            "reward/errors": float(self.errors),
            "reward/out_of_range": float(self.out_of_range),
        }
        for name, scores in self.per_reward.items():
            out[f"reward/{name}/mean"] = scores.mean().item()
        return out


# Texts a null ground truth turns into when something stringifies it.
_NULL_TEXTS = ("", "none", "null", "nan")


def ground_truth_text(row: dict[str, Any]) -> str:
    """``reward_model.ground_truth`` as stripped text; raises ValueError naming the field for a
    null, NaN or empty one (``str(None)`` would otherwise let ``\\boxed{None}`` score 1)."""
    value = row["reward_model"]["ground_truth"]
    text = "" if value is None else str(value).strip()
    if text.lower() in _NULL_TEXTS:
        raise ValueError(f"field 'reward_model.ground_truth' is null or empty ({value!r}); the reward needs the answer to compare with")
    return text


def checked(value: object, bounds: tuple[float, float] = DEFAULT_BOUNDS) -> Score:
    """``value`` as a Score if it is a finite real number inside ``bounds`` (a bare number or a
    Score holding one); anything else (NaN, inf, 1e6 for a 0..1 reward, a string, None) is 0 with
    the reason ``reward_out_of_range``."""
    raw, reason = (value.value, value.reason) if isinstance(value, Score) else (value, "")
    if not isinstance(raw, numbers.Real) or not isinstance(reason, str):
        return Score(0.0, OUT_OF_RANGE)
    number = float(raw)
    if not (math.isfinite(number) and bounds[0] <= number <= bounds[1]):
        return Score(0.0, OUT_OF_RANGE)
    return Score(number, reason if isinstance(value, Score) else ("" if number else WRONG))


class SampleTimeout(BaseException):
    """An inline reward ran past its per-sample deadline (a BaseException: rewards' own
    ``except Exception`` cannot swallow it)."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise :class:`SampleTimeout` in this thread after ``seconds`` of wall time (a SIGALRM timer:
    only in the main thread, and it interrupts Python code, not a C call already running; the
    built-in parsers do linear work on capped input, so theirs return in microseconds)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(*_: object) -> None:
        raise SampleTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def score_one(entry: RewardEntry, kwargs: dict[str, Any], completion: object, row: dict[str, Any], timeout_s: float | None = None) -> tuple[Score, str | None]:
    """One sample's score under a deadline, or a zero with its reason (and the traceback if the
    reward raised). A completion that is not text never reaches the reward."""
    if not isinstance(completion, str):
        return Score(0.0, NOT_TEXT), None
    try:
        with deadline(timeout_s):
            values = entry.fn([completion], [row], **kwargs)
        return checked(values[0], entry.bounds), None
    except SampleTimeout:
        return Score(0.0, TIMEOUT), None
    except Exception:
        return Score(0.0, REWARD_ERROR), traceback.format_exc()


def default_workers() -> int:
    """Reward worker processes when the caller does not say: the cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class RewardRunner:
    """Scores batches with a task's rewards; a reward that raises costs its samples, not the run.

    Pooled rewards (math-verify, sandboxed code) run one sample per task in ``num_workers`` worker
    processes (``None``: :func:`default_workers`; 0: everything in this process). Every sample of
    every reward has a deadline of ``sample_timeout_s``: in a worker, one past it scores 0
    (timeout) and its worker is replaced; in this process, a timer interrupts it (see
    :func:`deadline`). A worker that dies costs its sample (reward_error). Every value is checked
    against its reward's bounds (:func:`checked`). Use as a context manager or call :meth:`close`
    to stop the workers (they also stop when this process exits).
    """

    def __init__(self, specs: Sequence[RewardSpec], *, num_workers: int | None = None, sample_timeout_s: float = 120.0, allow_unsafe_code: bool = False) -> None:
        if not specs:
            raise ValueError("task.rewards is empty; name at least one reward")
        self.specs = list(specs)
        if allow_unsafe_code:
            # task.allow_unsafe_code reaches every reward that takes the option (the code reward).
            self.specs = [_with_option(spec, "allow_unsafe_code", True) for spec in self.specs]
        entries = [entry_for(spec) for spec in self.specs]
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"task.rewards lists a reward more than once ({names}); metrics and reasons are keyed by name")
        self.entries = dict(zip(names, entries))
        self.num_workers = default_workers() if num_workers is None else num_workers
        for spec in self.specs:
            entry = self.entries[spec.name]
            _check_kwargs(spec, entry.fn)
            if entry.pooled and self.num_workers > 0 and entry.fn.__module__ == "__main__" and entry.source is None:
                raise ValueError(f"reward {spec.name!r} is pooled but defined in __main__, which worker processes cannot import; move it to a module")
        self.sample_timeout_s = sample_timeout_s
        self._pool: WorkerPool | None = None
        self._traceback_logged = False

    def _log_first_traceback(self, name: str, text: str | None) -> None:
        if text and not self._traceback_logged:
            self._traceback_logged = True
            log.error("reward %r raised; the sample scores 0 and the run goes on:\n%s", name, text)

    def _score_inline(self, spec: RewardSpec, completions: list[Any], rows: list[dict]) -> list[Score]:
        entry = self.entries[spec.name]
        # Pooled rewards run here only with num_workers=0; they time themselves (math-verify's
        # alarm, the sandbox's wall clock), and a timer of ours would cancel math-verify's.
        timeout = None if entry.pooled else self.sample_timeout_s
        scores = []
        for text, row in zip(completions, rows):
            score, tb = score_one(entry, spec.kwargs, text, row, timeout)
            self._log_first_traceback(spec.name, tb)
            scores.append(score)
        return scores

    def _score_pooled(self, spec: RewardSpec, completions: list[Any], rows: list[dict]) -> list[Score]:
        if self._pool is None:
            from diffrl.rewards.pool import WorkerPool

            self._pool = WorkerPool(self.num_workers, self.sample_timeout_s)
        entry = self.entries[spec.name]
        source = entry.source or entry.fn.__module__
        scores: list[Score | None] = [Score(0.0, NOT_TEXT) if not isinstance(t, str) else None for t in completions]
        todo = [i for i, s in enumerate(scores) if s is None]
        tasks = [(source, spec.name, spec.kwargs, completions[i], rows[i]) for i in todo]
        for i, (score, tb) in zip(todo, self._pool.map(tasks)):
            self._log_first_traceback(spec.name, tb)
            scores[i] = score
        return scores  # type: ignore[return-value]

    def __call__(self, completions: list[Any], rows: list[dict]) -> RewardBatch:
        import torch

        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions for {len(rows)} rows")
        total = torch.zeros(len(completions))
        per_reward, reasons = {}, {}
        for spec in self.specs:
            entry = self.entries[spec.name]
            pooled = entry.pooled and self.num_workers > 0
            raw = self._score_pooled(spec, completions, rows) if pooled else self._score_inline(spec, completions, rows)
            # Checked here too: a worker's reply is data from another process.
            scores = [checked(s, entry.bounds) for s in raw]
            values = torch.tensor([s.value for s in scores], dtype=torch.float32)
            per_reward[spec.name] = values
            reasons[spec.name] = [s.reason for s in scores]
            total += spec.weight * values
        errors = sum(r == REWARD_ERROR for rs in reasons.values() for r in rs)
        out_of_range = sum(r == OUT_OF_RANGE for rs in reasons.values() for r in rs)
        return RewardBatch(total=total, per_reward=per_reward, reasons=reasons, errors=errors, out_of_range=out_of_range)

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_option(spec: RewardSpec, key: str, value: Any) -> RewardSpec:
    """``spec`` with ``key=value`` added to its kwargs if its function takes that option."""
    if key in spec.kwargs or key not in inspect.signature(entry_for(spec).fn).parameters:
        return spec
    return RewardSpec(spec.name, spec.weight, {**spec.kwargs, key: value}, spec.fn, spec.pooled, spec.bounds)


def _check_kwargs(spec: RewardSpec, fn: RewardFn) -> None:
    """Call the reward once with no samples, so unknown (TypeError) or invalid (ValueError)
    options fail at start-up with the recipe entry named, instead of zeroing every sample."""
    try:
        inspect.signature(fn).bind([], [], **spec.kwargs)
        fn([], [], **spec.kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"task.rewards: {spec.name!r} with kwargs {spec.kwargs}: {err}") from None
    except Exception:
        pass  # anything else is for the samples to find, one by one
