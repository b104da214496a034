"""TraceRL (dLLM-RL / TraDo, arXiv 2509.06949; Gen-Verse/dLLM-RL train/rl_sdar.py, train/rl_llada.py,
reward/rl_reward.py).

Estimator: the rollout's own decoding trace. Each decoded token is scored given the canvas it was
committed from (every token of its step or a later one M), with ``shrink`` consecutive steps merged
into one round; on block-causal models one row replays a round of every block at once.
Advantage: the group z-score of the reward (population std, 0 for a flat group); a group trains
only if its accuracy lies in [accuracy_low, accuracy_high] (the reference drops > 0.8 and < 0.2),
a truncated sample counting as wrong.
Loss: per token, -min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = exp(clamp(l - l_old, +-10)),
summed over tokens and divided by the response length (loss_type dr_grpo), plus beta * k3.
The diffusion value model (token-wise baselines) is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from torch import Tensor

from diffrl.algorithms.advantages import Outcome, z_score
from diffrl.algorithms.lightning_rl import accurate
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm
from diffrl.algorithms.replay import TraceReplay, replayable


@dataclass
class TraceRLKnobs:
    # Consecutive decode steps merged into one training round (1 for block models, 8 for LLaDA in
    # the reference configs).
    shrink: int = 1
    # Groups train only when their accuracy lies in [accuracy_low, accuracy_high].
    accuracy_low: float = 0.2
    accuracy_high: float = 0.8
    # Training rows per batched forward (bounds the memory of one forward).
    rows_per_forward: int = 64
    # The log-ratio is clamped to +- this before exp (rl_sdar.py).
    log_ratio_clamp: float = 10.0


@dataclass
class TraceRLConfig(AlgorithmConfig):
    name: str = "trace_rl"
    loss_type: str = "dr_grpo"
    trace_rl: TraceRLKnobs = field(default_factory=TraceRLKnobs)


def trace_advantages(outcome: Outcome) -> Tensor:
    """A_i = (r_i - mean_g r) / std_g r (population std; 0 where the group is flat)."""
    return z_score(outcome.rewards.float().view(-1, outcome.group_size)).reshape(-1)


def accuracy_band(outcome: Outcome, knobs: TraceRLKnobs) -> Tensor:
    """Samples of the groups whose accuracy lies in [accuracy_low, accuracy_high]."""
    acc = accurate(outcome).float().view(-1, outcome.group_size).mean(1)
    keep = (acc >= knobs.accuracy_low) & (acc <= knobs.accuracy_high)
    return keep.repeat_interleave(outcome.group_size) & outcome.keep


@register_algorithm("trace_rl", TraceRLConfig)
def build(cfg: TraceRLConfig) -> Algorithm:
    knobs = cfg.trace_rl
    if not 0 <= knobs.accuracy_low <= knobs.accuracy_high <= 1:
        raise ValueError(f"algorithm.trace_rl.accuracy_low={knobs.accuracy_low} <= accuracy_high={knobs.accuracy_high} must lie in [0, 1]")
    return Algorithm(
        config=cfg,
        # l_i = log p(y^i | q, y^{round < r_i}, M elsewhere), r_i = rank(step_i) // shrink
        estimator=TraceReplay(shrink=knobs.shrink, rows_per_forward=knobs.rows_per_forward),
        advantage=trace_advantages,
        # -min(rho A, clip(rho) A) / L + beta k3, rho = exp(clamp(l - l_old, +-10))
        loss=cfg.clipped_loss(log_ratio_clamp=knobs.log_ratio_clamp),
        keep=partial(accuracy_band, knobs=knobs),
        rollout_config=replayable,
    )
