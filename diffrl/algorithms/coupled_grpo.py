"""coupled-GRPO (DiffuCoder, Gong et al. 2025, arXiv 2506.20639; apple/ml-diffucoder coupled_grpo.py).

Estimator: "coupled sampling": t ~ U(0.2, 0.8) (the code's range) and complementary masks at t and
1 - t, so every completion token is scored exactly once by the pair, each pass's tokens weighted
1/t or 1/(1-t); as the reference code does, the per-token value is averaged with a fully masked
pass: l_i = 1/2 [ l_full + 1[u<t] l_t / t + 1[u>=t] l_(1-t) / (1-t) ]. The prompt is never masked.
Advantage: leave-one-out, A_i = r_i - mean_{j != i} r_j (divided by the std only if scale_rewards).
Loss: the token-level clipped surrogate with (epsilon, epsilon_high) plus beta * k3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.estimators import CoupledComplementary
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm


@dataclass
class CoupledKnobs:
    # t ~ U(t_low, t_high) per sample (the code draws U(0.2, 0.8); its comment says 0.1-0.9).
    t_low: float = 0.2
    t_high: float = 0.8


@dataclass
class CoupledGRPOConfig(AlgorithmConfig):
    name: str = "coupled_grpo"
    coupled_grpo: CoupledKnobs = field(default_factory=CoupledKnobs)


@register_algorithm("coupled_grpo", CoupledGRPOConfig)
def build(cfg: CoupledGRPOConfig) -> Algorithm:
    knobs = cfg.coupled_grpo
    if not 0 < knobs.t_low <= knobs.t_high < 1:
        raise ValueError(f"algorithm.coupled_grpo.t_low={knobs.t_low} and t_high={knobs.t_high} must satisfy 0 < t_low <= t_high < 1")
    return Algorithm(
        config=cfg,
        # l_i = 1/2 [ l_full + 1[u<t] l_t / t + 1[u>=t] l_(1-t) / (1-t) ]
        estimator=CoupledComplementary(t_low=knobs.t_low, t_high=knobs.t_high),
        # A_i = r_i - (sum_j r_j - r_i) / (G - 1)
        advantage=reward_advantages("leave_one_out", cfg.scale_rewards),
        loss=cfg.clipped_loss(),
    )
