"""Rewards by name, and the runner that scores a batch without ever taking the run down.

A reward is a plain function ``(completions, rows, **kwargs) -> list[Score | float]``: one score
per completion, given the data row it answers (``reward_model.ground_truth``, ``extra_info``, ...).
The task recipe names the rewards and their weights.

Registration also says which row fields the reward reads (checked when the data is loaded) and
whether it is slow enough to run in the worker pool (math-verify, sandboxed code).
"""

from __future__ import annotations

import inspect
import logging
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    (raises ValueError naming the field and the fix), and whether it runs in the worker pool."""

    fn: RewardFn
    required: tuple[str, ...] = ()
    check_row: RowCheck | None = None
    pooled: bool = False


_REWARDS: dict[str, RewardEntry] = {}


def register_reward(name: str, *, required: Sequence[str] = (), check_row: RowCheck | None = None, pooled: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``. The runner calls it once with no samples when it starts, to
    check its options: raise TypeError or ValueError there for options it cannot use. ``pooled`` rewards must be module-level functions: the pool's worker
    processes import them by module and look them up by name."""

    def wrap(fn: RewardFn) -> RewardFn:
        _REWARDS[name] = RewardEntry(fn, tuple(required), check_row, pooled)
        return fn

    return wrap


def reward_entry(name: str) -> RewardEntry:
    import diffrl.rewards  # noqa: F401  (registers the built-in rewards)

    if name not in _REWARDS:
        raise ValueError(f"reward {name!r} is not registered; known: {', '.join(sorted(_REWARDS))}")
    return _REWARDS[name]


def get_reward(name: str) -> RewardFn:
    return reward_entry(name).fn


@dataclass
class RewardSpec:
    """One entry of a task's ``rewards`` list."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


def required_fields(specs: Sequence[RewardSpec]) -> tuple[str, ...]:
    """Every dotted row field the task's rewards read, for validation at load time."""
    return tuple(dict.fromkeys(f for spec in specs for f in reward_entry(spec.name).required))


def check_row(specs: Sequence[RewardSpec], row: dict[str, Any]) -> None:
    """Raise ValueError (naming the field and the fix) if a reward could not read ``row``."""
    for spec in specs:
        check = reward_entry(spec.name).check_row
        if check is not None:
            check(row)


@dataclass
class RewardBatch:
    """Weighted total per sample, each reward's raw scores and reasons, and how many raised."""

    total: Tensor
    per_reward: dict[str, Tensor]
    reasons: dict[str, list[str]]
    errors: int

    def metrics(self) -> dict[str, float]:
        out = {
            "critic/score/mean": self.total.mean().item(),
            "critic/score/max": self.total.max().item(),
            "critic/score/min": self.total.min().item(),
            "reward/errors": float(self.errors),
        }
        for name, scores in self.per_reward.items():
            out[f"reward/{name}/mean"] = scores.mean().item()
        return out


def as_score(value: Score | float) -> Score:
    return value if isinstance(value, Score) else Score(float(value), "" if value else WRONG)


def score_one(fn: RewardFn, kwargs: dict[str, Any], completion: str, row: dict[str, Any]) -> tuple[Score, str | None]:
    """One sample's score, or a reward_error zero and the traceback if the reward raised."""
    try:
        return as_score(fn([completion], [row], **kwargs)[0]), None
    except Exception:
        return Score(0.0, REWARD_ERROR), traceback.format_exc()


def default_workers() -> int:
    """Reward worker processes when the caller does not say: the cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class RewardRunner:
    """Scores batches with a task's rewards; a reward that raises costs its samples, not the run.

    Pooled rewards (math-verify, sandboxed code) run one sample per task in ``num_workers`` worker
    processes (``None``: :func:`default_workers`; 0: everything in this process). A sample that
    takes longer than ``sample_timeout_s`` in a worker scores 0 (timeout) and its worker is
    replaced; a worker that dies costs its sample (reward_error). Use as a context manager or call
    :meth:`close` to stop the workers (they also stop when this process exits).
    """

    def __init__(self, specs: Sequence[RewardSpec], *, num_workers: int | None = None, sample_timeout_s: float = 120.0) -> None:
        if not specs:
            raise ValueError("task.rewards is empty; name at least one reward")
        self.specs = list(specs)
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"task.rewards lists a reward more than once ({names}); metrics and reasons are keyed by name")
        self.entries = {spec.name: reward_entry(spec.name) for spec in self.specs}
        self.num_workers = default_workers() if num_workers is None else num_workers
        for spec in self.specs:
            entry = self.entries[spec.name]
            _check_kwargs(spec, entry.fn)
            if entry.pooled and self.num_workers > 0 and entry.fn.__module__ == "__main__":
                raise ValueError(f"reward {spec.name!r} is pooled but defined in __main__, which worker processes cannot import; move it to a module")
        self.sample_timeout_s = sample_timeout_s
        self._pool: WorkerPool | None = None
        self._traceback_logged = False

    def _log_first_traceback(self, name: str, text: str | None) -> None:
        if text and not self._traceback_logged:
            self._traceback_logged = True
            log.error("reward %r raised; the sample scores 0 and the run goes on:\n%s", name, text)

    def _score_inline(self, spec: RewardSpec, completions: list[str], rows: list[dict]) -> list[Score]:
        fn = self.entries[spec.name].fn
        try:
            scores = [as_score(s) for s in fn(completions, rows, **spec.kwargs)]
            if len(scores) != len(completions):
                raise ValueError(f"reward {spec.name!r} returned {len(scores)} scores for {len(completions)} completions")
            return scores
        except Exception:
            # Find the samples that raise instead of zeroing the whole batch.
            scores = []
            for text, row in zip(completions, rows):
                score, tb = score_one(fn, spec.kwargs, text, row)
                self._log_first_traceback(spec.name, tb)
                scores.append(score)
            return scores

    def _score_pooled(self, spec: RewardSpec, completions: list[str], rows: list[dict]) -> list[Score]:
        if self._pool is None:
            from diffrl.rewards.pool import WorkerPool

            self._pool = WorkerPool(self.num_workers, self.sample_timeout_s)
        fn = self.entries[spec.name].fn
        tasks = [(fn.__module__, spec.name, spec.kwargs, text, row) for text, row in zip(completions, rows)]
        scores = []
        for score, tb in self._pool.map(tasks):
            self._log_first_traceback(spec.name, tb)
            scores.append(score)
        return scores

    def __call__(self, completions: list[str], rows: list[dict]) -> RewardBatch:
        import torch

        total = torch.zeros(len(completions))
        per_reward, reasons = {}, {}
        for spec in self.specs:
            pooled = self.entries[spec.name].pooled and self.num_workers > 0
            scores = self._score_pooled(spec, completions, rows) if pooled else self._score_inline(spec, completions, rows)
            values = torch.tensor([s.value for s in scores], dtype=torch.float32)
            per_reward[spec.name] = values
            reasons[spec.name] = [s.reason for s in scores]
            total += spec.weight * values
        errors = sum(r == REWARD_ERROR for rs in reasons.values() for r in rs)
        return RewardBatch(total=total, per_reward=per_reward, reasons=reasons, errors=errors)

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
