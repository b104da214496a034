"""BGPO (Boundary-Guided Policy Optimization, arXiv 2510.11683; THU-KEG/BGPO, code not read).

Estimator: the ELBO by K Monte Carlo draws (t_k ~ U(0, 1), one mask each), kept per draw, each
draw's forward checkpointed so memory holds one draw's graph however large K is.
Advantage: A_i = r_i - mean(r_group).
Loss: a lower bound of the ELBO-based objective A_i exp(x_i), x_i = mean_k x_ik, that is linear in
the draws, x_ik = (ELBO_ik - ELBO_old,ik) / |y_i|:
  A_i >= 0:  A_i (1 + (1/K) sum_k x_ik)      (exp(x) >= 1 + x)
  A_i < 0:   A_i (1/K) sum_k exp(x_ik)       (Jensen: exp(mean x) <= mean exp(x))
Both equal A_i exp(x_i) in value and gradient on-policy (x = 0); one term per sequence averaged
over sequences (loss_type grpo), plus beta * k3 on the draw-mean per-token values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.elbo_bounds import PerDrawELBO
from diffrl.algorithms.losses import k3
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm


@dataclass
class BGPOKnobs:
    # Monte Carlo draws K of the ELBO (the paper's point is that K can be large at constant memory).
    num_draws: int = 16
    # uniform: t_k ~ U(0, 1) per sample (double Monte Carlo); gauss: Gauss-Legendre nodes.
    time_sampling: str = "uniform"
    # Recompute each draw's forward in the backward so memory holds one draw's graph (false: keep
    # all K graphs, the naive many-sample ELBO, faster when they fit).
    checkpoint_draws: bool = True


@dataclass
class BGPOConfig(AlgorithmConfig):
    name: str = "bgpo"
    loss_type: str = "grpo"
    bgpo: BGPOKnobs = field(default_factory=BGPOKnobs)


def boundary_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, weights: Tensor, *, beta: float, ref_logp: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """-sum_i w_i B_i with B_i the linear lower bound above (``logp`` [B, Lc, K], w_i = sum_t weights_it)."""
    counted = (weights != 0).to(logp.dtype)[..., None]
    # x_ik = (ELBO_ik - ELBO_old,ik) / |y_i|
    x = ((logp - old_logp) * counted).sum(1) / counted.sum(1).clamp_min(1)
    adv = advantages[:, None].to(x.dtype)
    bound = torch.where(adv >= 0, adv * (1 + x), adv * torch.exp(x)).mean(1)
    row_weight = weights.sum(1)
    loss = -(bound * row_weight).sum()
    w = weights.detach()
    metrics = {"actor/pg_loss": loss.detach(), "actor/ppo_kl": (-x.detach().mean(1) * row_weight.detach()).sum()}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = k3(logp.mean(-1), ref_logp.mean(-1))
        loss = loss + beta * (kl * weights).sum()
        metrics["actor/kl_loss"] = (kl.detach() * w).sum()
    return loss, metrics


@register_algorithm("bgpo", BGPOConfig)
def build(cfg: BGPOConfig) -> Algorithm:
    knobs = cfg.bgpo
    if knobs.num_draws < 1:
        raise ValueError(f"algorithm.bgpo.num_draws={knobs.num_draws} must be >= 1")
    return Algorithm(
        config=cfg,
        # ELBO_ik = (1/t_k) sum_i 1[y_t^i = M] log p(y^i | y_t, q), one checkpointed forward per draw
        estimator=PerDrawELBO(num_draws=knobs.num_draws, time_sampling=knobs.time_sampling, checkpointed=knobs.checkpoint_draws),
        # A_i = r_i - mean_j r_j over the group
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        loss=partial(boundary_loss, beta=cfg.beta),
    )
