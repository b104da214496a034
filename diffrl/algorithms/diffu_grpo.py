"""diffu-GRPO (d1, Zhao et al. 2025, arXiv 2504.12216).

Estimator: "One-Step Per-Token Log Probability Estimation with Prompt Masking": all completion
tokens masked, prompt tokens masked with probability p_mask_prompt, one forward; the sequence
log-likelihood is the mean-field sum of per-token log-probs. A fresh mask seed per inner update
(num_iterations) acts as a regulariser; old/reference/current share it.
Advantage: A_i = r_i - mean(r_group) (the released code does not divide by the std).
Loss: the GRPO clipped surrogate per token plus beta * k3 to the reference, token mean per
micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.estimators import OneStepMeanField
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm


@dataclass
class DiffuGRPOConfig(AlgorithmConfig):
    # Probability of masking each prompt token in the estimator's input (d1: 0.3 default, 0.15 in its run script).
    p_mask_prompt: float = 0.15
    # Classifier-free guidance scale of the estimator (d1's cfg_scale, 0 in its training runs).
    cfg_scale: float = 0.0


@register_algorithm("diffu_grpo", DiffuGRPOConfig)
def build(cfg: DiffuGRPOConfig) -> Algorithm:
    return Algorithm(
        config=cfg,
        # log pi(y|q) ~= sum_i log p(y^i | q~, M...M), q~ = q with tokens masked at p_mask_prompt
        estimator=OneStepMeanField(p_mask_prompt=cfg.p_mask_prompt, cfg_scale=cfg.cfg_scale),
        # A_i = r_i - mean_j r_j over the group
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        # -min(rho A, clip(rho, 1-eps, 1+eps_high) A) + beta k3
        loss=cfg.clipped_loss(),
    )
