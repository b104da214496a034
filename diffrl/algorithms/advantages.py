"""Advantage rules: from one scalar reward per sample to one advantage per sample.

Rows come in groups of ``group_size`` consecutive samples of the same prompt, so a group's
statistics never need communication across ranks.
"""

from __future__ import annotations

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
