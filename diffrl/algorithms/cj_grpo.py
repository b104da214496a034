"""CJ-GRPO (Consistency-trajectory GRPO, arXiv 2509.23924; yjyddq/EOSER-ASS-RL cj-grpo/cj_grpo_trainer_*.py).

Estimator: the rollout trajectory step by step: each token is scored given the state just before
the step that unmasked it (every token of that step or a later one M), read from the rollout's
step map instead of stored intermediate states.
Advantage: A_i = r_i - mean(r_group).
Loss: per step, the token mean of -min(rho A, clip(rho, 1 - eps, 1 + eps) A) + beta k3 over the
tokens that step unmasked; then the mean over steps, then over sequences (loss_type grpo).
Rollout: the paper's decoders are the rollout's ``eos_early_rejection`` (EOS confidence scaled by
a factor rising from eos_min_gamma to 1) and ``ascending`` schedule (step i unmasks 2^i tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from torch import Tensor

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.losses import clipped_policy_loss
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm
from diffrl.algorithms.replay import TraceReplay, replayable


@dataclass
class CJGRPOKnobs:
    # Training rows (trajectory steps) per batched forward.
    rows_per_forward: int = 64


@dataclass
class CJGRPOConfig(AlgorithmConfig):
    name: str = "cj_grpo"
    loss_type: str = "grpo"
    cj_grpo: CJGRPOKnobs = field(default_factory=CJGRPOKnobs)


def step_mean_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, weights: Tensor, *, epsilon: float, epsilon_high: float | None, beta: float, ref_logp: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped token loss with each sample's weight spread by its step shares (channel 1 of
    ``logp``: 1 / (S n_s) for a token unmasked at step s), i.e. (1/S) sum_s mean_{i in s} loss_i."""
    shares = logp[..., 1].detach()
    step_weights = shares * weights.sum(1, keepdim=True)
    ref = ref_logp[..., 0] if ref_logp is not None else None
    return clipped_policy_loss(logp[..., 0], old_logp[..., 0], advantages, step_weights, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta, ref_logp=ref)


@register_algorithm("cj_grpo", CJGRPOConfig)
def build(cfg: CJGRPOConfig) -> Algorithm:
    return Algorithm(
        config=cfg,
        # l_i = log p(y^i | x_{s_i}), x_s = the canvas before step s; shares 1 / (S n_s)
        estimator=TraceReplay(shrink=1, rows_per_forward=cfg.cj_grpo.rows_per_forward, step_shares=True),
        # A_i = r_i - mean_j r_j over the group
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        # (1/S) sum_s mean_{i in s} [ -min(rho A, clip(rho) A) + beta k3 ]
        loss=partial(step_mean_loss, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta),
        rollout_config=replayable,
    )
