"""JustGRPO ("The Flexibility Trap", arXiv 2601.15165; LeapLabTHU/JustGRPO grpo.py).

Rollout: autoregressive order, one token per step, left to right (the leftmost masked position
commits first, steps = completion length); evaluation keeps parallel decoding.
Likelihood: exact for that policy, log pi(y|q) = sum_i log p(y^i | q, y^{<i}, M ... M), computed
with many positions per batched forward rather than one forward per token.
Advantage: group z-score (r - mean) / (std + 1e-4).
Loss: plain GRPO, on-policy (rho = 1, the clip inert at one update), no KL, scaled
1 / (max_completion_length x n_valid) with n_valid the samples whose advantage is non-zero
(loss_type dr_grpo over the kept samples: groups with reward variance).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import Tensor

from diffrl.algorithms.advantages import Outcome, reward_advantages
from diffrl.algorithms.estimators import AutoregressiveLikelihood
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, Needs, register_algorithm
from diffrl.errors import DiffrlConfigError
from diffrl.rollout.config import RolloutConfig


@dataclass
class JustGRPOKnobs:
    # Likelihood rows per batched forward (each row scores one position, or one in-block offset of
    # every block on block-causal models); bounds the memory of one forward.
    rows_per_forward: int = 64
    # Loss normaliser: micro_step (the reference: 1 / (L x n_valid) per accumulation micro-step of
    # micro_step_prompts prompts over all ranks, their gradients summed) or global (1 / (L x n_valid)
    # over the whole batch).
    normalizer: str = "micro_step"
    micro_step_prompts: int = 8
    # Logits are divided by this when scoring (the reference: its rollout temperature, 1.0).
    learner_temperature: float = 1.0


@dataclass
class JustGRPOConfig(AlgorithmConfig):
    name: str = "just_grpo"
    loss_type: str = "dr_grpo"
    scale_rewards: str = "group"
    just_grpo: JustGRPOKnobs = field(default_factory=JustGRPOKnobs)


def autoregressive_order(cfg: RolloutConfig) -> RolloutConfig:
    """The rollout settings decoding one token per step, leftmost first, whatever the block size."""
    return replace(
        cfg, remasking="left_to_right", steps=cfg.max_completion_length, schedule="linear", threshold=None, factor=None,
        alg_temp=None, editing_threshold=None, max_post_steps=0, early_commit_margin=None, eos_min_gamma=None,
        running_confidence=False, unmasking_policy=None,
    )


def groups_with_signal(outcome: Outcome) -> Tensor:
    """Samples of the groups whose rewards differ (the others have advantage 0)."""
    grouped = outcome.rewards.view(-1, outcome.group_size)
    return (grouped.amax(1) > grouped.amin(1)).repeat_interleave(outcome.group_size) & outcome.keep


NORMALIZERS = ("micro_step", "global")


@register_algorithm("just_grpo", JustGRPOConfig)
def build(cfg: JustGRPOConfig) -> Algorithm:
    knobs = cfg.just_grpo
    if knobs.normalizer not in NORMALIZERS:
        raise DiffrlConfigError(f"algorithm.just_grpo.normalizer={knobs.normalizer!r} is not one of {', '.join(NORMALIZERS)}")
    if knobs.learner_temperature <= 0:
        raise DiffrlConfigError(
            f"algorithm.just_grpo.learner_temperature={knobs.learner_temperature} must be positive (it divides the logits); "
            "sample with rollout.temperature > 0, as the reference does (1.0)"
        )
    return Algorithm(
        config=cfg,
        # log pi(y|q) = sum_i log p(y^i | q, y^{<i}, M...M), logits / T
        estimator=AutoregressiveLikelihood(rows_per_forward=knobs.rows_per_forward, temperature=knobs.learner_temperature),
        # A_i = (r_i - mean) / (std + 1e-4)
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        # -min(rho A, clip(rho) A) / (L n_valid); rho = 1 on-policy
        loss=cfg.clipped_loss(),
        rollout_config=autoregressive_order,
        keep=groups_with_signal,
        needs=Needs(left_to_right=True),
        # sum_k 1 / (L n_valid,k) sum_{i in micro-step k} (the reference's accumulation)
        normaliser_prompts=knobs.micro_step_prompts if knobs.normalizer == "micro_step" else None,
    )
