"""GDPO (Group Diffusion Policy Optimization, Rojas et al. 2025, arXiv 2510.08554; gdpo.github.io).

Estimator: the sequence ELBO  L(y|q) = E_t E_{y_t} [ (1/t) sum_i 1[y_t^i = M] log p(y^i | y_t, q) ]
by semi-deterministic Monte Carlo: fixed Gauss-Legendre nodes t_n with weights w_n, K random masks
per node (N x K forwards); ``time_sampling=uniform`` is the double Monte Carlo baseline.
Advantage: A_g = R_g - mean(R) (no std).
Loss: one ratio per sequence, r_g = exp((L - L_old) / |y_g|) (length-normalised, as GSPO; the
project page writes L / L_old), clipped, averaged 1/|y_g| per sequence then over the group
(loss_type grpo), plus beta * k3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.estimators import MonteCarloELBO
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm


@dataclass
class GDPOKnobs:
    # Quadrature nodes N on t in (0, 1) (the third-party port says 2-3 match 100+ double-MC draws).
    num_nodes: int = 3
    # Random masks K per node; the estimate costs N x K forwards.
    masks_per_node: int = 1
    # gauss: semi-deterministic Monte Carlo; uniform: double Monte Carlo (t ~ U(0, 1)).
    time_sampling: str = "gauss"
    # bernoulli (each token masked with probability t) or exact (round(t x |y|) tokens).
    mask_count: str = "bernoulli"


@dataclass
class GDPOConfig(AlgorithmConfig):
    name: str = "gdpo"
    loss_type: str = "grpo"
    gdpo: GDPOKnobs = field(default_factory=GDPOKnobs)


@register_algorithm("gdpo", GDPOConfig)
def build(cfg: GDPOConfig) -> Algorithm:
    knobs = cfg.gdpo
    return Algorithm(
        config=cfg,
        # L = sum_n w_n (1/K) sum_k (1/t_n) sum_i 1[masked] log p(y^i | y_{t_n,k}, q)
        estimator=MonteCarloELBO(num_nodes=knobs.num_nodes, masks_per_node=knobs.masks_per_node, time_sampling=knobs.time_sampling, mask_count=knobs.mask_count),
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        # -min(r_g A_g, clip(r_g, 1 - eps, 1 + eps_high) A_g), r_g = exp((L - L_old) / |y_g|)
        loss=cfg.clipped_loss(ratio_level="sequence"),
    )
