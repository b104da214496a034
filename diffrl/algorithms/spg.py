"""SPG (Sandwiched Policy Gradient, arXiv 2510.09541; facebookresearch/SPG spg/spg_trainer.py).

Estimator: ``block_random`` masked draws (num_t per sample): a random block partly masked, earlier
blocks clean, later blocks M. From the same draws, per token: the ELBO-type lower bound (mean
log-prob over each draw's masked tokens) and the EUBO upper bound
(1/beta) log mean_j(p^beta 1[masked] / t_j), or their mixture (logp_estimation).
Advantage: A_i = r_i - mean(r_group).
Loss: no ratio, no clip: -A_i V_i with V_i the lower bound where A_i > 0 and the upper bound (or the
mixture) where A_i <= 0, each sample weighted by its completion length (loss_type dapo).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.elbo_bounds import SandwichedBounds
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm


@dataclass
class SPGKnobs:
    # Masked draws per sample and update (num_t); each picks a distinct block while there are enough.
    num_t: int = 2
    # Block length of the masking on full-attention models (the rollout's block_length, 32 in the
    # recipes); block-causal models use their own block size.
    block_length: int = 32
    # k ~ U{max(1, floor(m min_t)) .. floor(m max_t)} tokens of the chosen block's m are masked.
    min_t: float = 0.0
    max_t: float = 1.0
    # Each prompt token masked with this probability (use_mask_prompt, p_mask_prompt).
    p_mask_prompt: float = 0.15
    # The bound for A <= 0: eubo, mix (w EUBO + (1 - w) ELBO), elbo or zero.
    logp_estimation: str = "mix"
    eubo_beta: float = 1.5
    mix_weight: float = 0.5


@dataclass
class SPGConfig(AlgorithmConfig):
    name: str = "spg"
    loss_type: str = "dapo"
    spg: SPGKnobs = field(default_factory=SPGKnobs)


def sandwiched_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, weights: Tensor, *, ref_logp: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """L = -sum_i A_i V_i w_i, with V_i = sum_t ELBO_t if A_i > 0 else sum_t bound_t (channels 0
    and 1 of ``logp``) and w_i = sum_t weights_it (dapo: |y_i| / sum_j |y_j|)."""
    positive = advantages[:, None] > 0
    value = torch.where(positive, logp[..., 0], logp[..., 1]).sum(1)
    row_weight = weights.sum(1)
    loss = -(advantages * value * row_weight).sum()
    w = weights.detach()
    return loss, {
        "actor/pg_loss": loss.detach(),
        "actor/elbo": (logp[..., 0].detach() * w).sum(),
        "actor/negative_bound": (logp[..., 1].detach() * w).sum(),
    }


@register_algorithm("spg", SPGConfig)
def build(cfg: SPGConfig) -> Algorithm:
    knobs = cfg.spg
    if cfg.beta != 0:
        raise ValueError(f"algorithm.beta={cfg.beta}: SPG has no KL term (its reference raises for beta != 0); set algorithm.beta=0")
    return Algorithm(
        config=cfg,
        # ELBO = (1/J) sum_j sum_i m_ij l_ij / n_j ; EUBO = (1/(beta|V|)) sum_i log (1/J) sum_j m_ij p_ij^beta / t_j
        estimator=SandwichedBounds(
            num_t=knobs.num_t, block_length=knobs.block_length, min_t=knobs.min_t, max_t=knobs.max_t, p_mask_prompt=knobs.p_mask_prompt,
            eubo_beta=knobs.eubo_beta, mix_weight=knobs.mix_weight, negative=knobs.logp_estimation,
        ),
        # A_i = r_i - mean_j r_j over the group
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        # -A_i (ELBO_i if A_i > 0 else bound_i), length-weighted
        loss=sandwiched_loss,
    )
