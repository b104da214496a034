"""Rewards by name, and the runner that scores a batch without ever taking the run down.

A reward is a plain function ``(completions, rows, **kwargs) -> list[Score | float]``: one score
per completion, given the data row it answers (``reward_model.ground_truth``, ``extra_info``, ...).
The task recipe names the rewards and their weights.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

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
_REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def wrap(fn: RewardFn) -> RewardFn:
        _REWARDS[name] = fn
        return fn

    return wrap


def get_reward(name: str) -> RewardFn:
    import diffrl.rewards  # noqa: F401  (registers the built-in rewards)

    if name not in _REWARDS:
        raise ValueError(f"reward {name!r} is not registered; known: {', '.join(sorted(_REWARDS))}")
    return _REWARDS[name]


@dataclass
class RewardSpec:
    """One entry of a task's ``rewards`` list."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


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


def _as_score(value: Score | float) -> Score:
    return value if isinstance(value, Score) else Score(float(value), "" if value else WRONG)


class RewardRunner:
    """Scores batches with a task's rewards; a reward that raises costs its samples, not the run."""

    def __init__(self, specs: Sequence[RewardSpec]) -> None:
        if not specs:
            raise ValueError("task.rewards is empty; name at least one reward")
        self.specs = list(specs)
        self.fns = {spec.name: get_reward(spec.name) for spec in self.specs}
        self._traceback_logged = False

    def _score_one_by_one(self, fn: RewardFn, spec: RewardSpec, completions: list[str], rows: list[dict]) -> tuple[list[Score], int]:
        scores, errors = [], 0
        for text, row in zip(completions, rows):
            try:
                scores.append(_as_score(fn([text], [row], **spec.kwargs)[0]))
            except Exception:
                errors += 1
                scores.append(Score(0.0, REWARD_ERROR))
                if not self._traceback_logged:
                    self._traceback_logged = True
                    log.error("reward %r raised; the sample scores 0 and the run goes on:\n%s", spec.name, traceback.format_exc())
        return scores, errors

    def __call__(self, completions: list[str], rows: list[dict]) -> RewardBatch:
        total = torch.zeros(len(completions))
        per_reward, reasons, errors = {}, {}, 0
        for spec in self.specs:
            fn = self.fns[spec.name]
            try:
                scores = [_as_score(s) for s in fn(completions, rows, **spec.kwargs)]
                if len(scores) != len(completions):
                    raise ValueError(f"reward {spec.name!r} returned {len(scores)} scores for {len(completions)} completions")
            except Exception:
                # Find the samples that raise instead of zeroing the whole batch.
                scores, n_err = self._score_one_by_one(fn, spec, completions, rows)
                errors += n_err
            values = torch.tensor([s.value for s in scores], dtype=torch.float32)
            per_reward[spec.name] = values
            reasons[spec.name] = [s.reason for s in scores]
            total += spec.weight * values
        return RewardBatch(total=total, per_reward=per_reward, reasons=reasons, errors=errors)
