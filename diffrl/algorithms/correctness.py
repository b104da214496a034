"""Which samples are correct: the one definition training, validation and evaluation share."""

from __future__ import annotations

from torch import Tensor

from diffrl.rewards.registry import RewardBatch


def is_correct(rewards: RewardBatch, reward: str | None = None, threshold: float | None = None) -> Tensor:
    """Samples [B] whose ``reward`` (a task reward's name; None: the total reward) reaches
    ``threshold`` (None: is positive).

    Training and validation pass ``algorithm.correctness_reward`` (IGPO's trigger, LightningRL's
    accuracy and NLL, ``val/<task>/acc``); evaluation passes ``eval.correct_reward`` and
    ``eval.correct_threshold``.
    """
    if reward is None:
        values = rewards.total
    elif reward in rewards.per_reward:
        values = rewards.per_reward[reward]
    else:
        raise ValueError(f"correctness reward {reward!r} is not one of this task's rewards: {', '.join(rewards.per_reward)}; "
                         "set algorithm.correctness_reward (or eval.correct_reward) to one of them")
    return values > 0 if threshold is None else values >= threshold
