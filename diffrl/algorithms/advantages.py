"""Advantage rules: from one scalar reward per sample to one advantage per sample.

Rows come in groups of ``group_size`` consecutive samples of the same prompt, so a group's
statistics never need communication across ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

SCALE_REWARDS = ("group", "batch", "none")
BASELINES = ("group_mean", "leave_one_out")


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    baseline: str = "group_mean",
    scale_rewards: str = "none",
    eps: float = 1e-4,
) -> Tensor:
    """A_i = (r_i - b_i) / s.

    ``baseline``: ``group_mean`` (GRPO, d1) or ``leave_one_out`` (the mean of the other G-1
    samples, as coupled-GRPO). ``scale_rewards`` (TRL's name): divide by the group's std
    (``group``, GRPO), the batch std (``batch``, as Dr. GRPO's critique suggests) or nothing
    (``none``, d1's code), with ``eps`` added to the std.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of num_generations={group_size}")
    grouped = rewards.float().view(-1, group_size)
    if baseline == "group_mean":
        base = grouped.mean(1, keepdim=True)
    elif baseline == "leave_one_out":
        if group_size < 2:
            raise ValueError("leave_one_out needs num_generations >= 2")
        base = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    else:
        raise ValueError(f"advantage baseline {baseline!r} is not one of {', '.join(BASELINES)}")
    adv = grouped - base
    if scale_rewards == "group":
        adv = adv / (grouped.std(1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        adv = adv / (rewards.float().std() + eps)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards={scale_rewards!r} is not one of {', '.join(SCALE_REWARDS)}")
    return adv.reshape(-1)


@dataclass
class Outcome:
    """What advantage rules and sample filters see, one entry per sample (groups of
    ``group_size`` consecutive rows). ``keep`` marks the samples that train (see
    :attr:`~diffrl.algorithms.registry.Algorithm.keep`)."""

    rewards: Tensor
    correct: Tensor
    tpf: Tensor
    truncated: Tensor
    keep: Tensor
    group_size: int

    @classmethod
    def of_rewards(cls, rewards: Tensor, group_size: int) -> "Outcome":
        """Rewards alone: correct where positive, nothing truncated, every sample kept, TPF 1."""
        ones = torch.ones_like(rewards, dtype=torch.bool)
        return cls(rewards, rewards > 0, torch.ones_like(rewards), ~ones, ones, group_size)


def reward_advantages(baseline: str, scale_rewards: str) -> Callable[[Outcome], Tensor]:
    """The advantage rule on the total reward (:func:`group_advantages` with these options)."""

    def advantage(outcome: Outcome) -> Tensor:
        return group_advantages(outcome.rewards, outcome.group_size, baseline=baseline, scale_rewards=scale_rewards)

    return advantage


def z_score(x: Tensor) -> Tensor:
    """(x - mean) / std along the last dim (population std); 0 where the std is 0."""
    centred = x - x.mean(-1, keepdim=True)
    std = x.std(-1, keepdim=True, unbiased=False)
    return torch.where(std > 0, centred / std, torch.zeros_like(centred))


def min_max(x: Tensor) -> Tensor:
    """(x - min) / (max - min) along the last dim; 0.5 where the range is 0."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), torch.full_like(x, 0.5))
