"""ESPO (ELBO-based Sequence-level Policy Optimization, arXiv 2512.03759; ML-GSAI/ESPO espo/espo_trainer.py).

Estimator: the sequence ELBO with ``num_mc`` stratified mask counts and the complementary
("coupled", reduce_var) pass, the prompt clean.
Advantage: leave-one-out, A_i = r_i - mean_{j != i} r_j (scale_rewards false).
Loss: the whole completion is one action: rho_i = exp((ELBO_i - ELBO_old,i) / |y_i|) (the
per-token normalised sequence ratio), clipped to [1 - eps, 1 + eps_high], one term per sequence
averaged over sequences (loss_type grpo), plus beta x the k2 estimate (ELBO_i - ELBO_ref,i)^2 / 2
normalised per token (k3 of a sequence-level log-ratio would explode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from torch import Tensor

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.elbo_bounds import StratifiedCoupledELBO
from diffrl.algorithms.losses import clipped_policy_loss
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm


@dataclass
class ESPOKnobs:
    # Monte Carlo masks per ELBO estimate (num_mc; the recipes use 1 or 2); each costs two forwards when coupled.
    num_mc: int = 2
    # Score the complement of every mask too (reduce_var).
    coupled: bool = True


@dataclass
class ESPOConfig(AlgorithmConfig):
    name: str = "espo"
    loss_type: str = "grpo"
    espo: ESPOKnobs = field(default_factory=ESPOKnobs)


def sequence_k2(logp: Tensor, ref_logp: Tensor, weights: Tensor) -> Tensor:
    """Per-sequence k2 = (ELBO - ELBO_ref)^2 / 2 / |y| over the weighted tokens [B]."""
    counted = (weights != 0).to(logp.dtype)
    diff = ((logp - ref_logp) * counted).sum(1)
    return diff**2 / 2 / counted.sum(1).clamp_min(1)


def espo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, weights: Tensor, *, epsilon: float, epsilon_high: float | None, beta: float, ref_logp: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """-min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) per sequence + beta k2(ELBO, ELBO_ref)."""
    # rho_i = exp(sum_t (l_t - l_old,t) / |y_i|)
    loss, metrics = clipped_policy_loss(logp, old_logp, advantages, weights, epsilon=epsilon, epsilon_high=epsilon_high, ratio_level="sequence")
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = sequence_k2(logp, ref_logp, weights)
        # Each sequence's k2 carries its share of the loss weight (1 / n_seq under grpo).
        kl_loss = (kl * weights.sum(1)).sum()
        loss = loss + beta * kl_loss
        metrics["actor/kl_loss"] = (kl.detach() * weights.detach().sum(1)).sum()
    return loss, metrics


@register_algorithm("espo", ESPOConfig)
def build(cfg: ESPOConfig) -> Algorithm:
    knobs = cfg.espo
    return Algorithm(
        config=cfg,
        # ELBO = (1/D) sum_d 1/2 [ 1[m] l / t_d + 1[not m] l^c / (1 - t_d') ], x_d stratified over d
        estimator=StratifiedCoupledELBO(num_mc=knobs.num_mc, coupled=knobs.coupled),
        # A_i = r_i - (sum_j r_j - r_i) / (G - 1)
        advantage=reward_advantages("leave_one_out", cfg.scale_rewards),
        loss=partial(espo_loss, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta),
    )
