"""MDPO (Masked Diffusion Policy Optimization, arXiv 2508.13148; autonomousvision/mdpo
src/open_r1/mdpo/mdpo_trainer.py, src/mdlm_generation_utils.py).

Rollout: every step t records x̂0_t, the canvas x_t with each masked position of the block filled
by the model's prediction, and the prediction's confidence c_t (``rollout.record_predictions``).
Rewards: r_t, the task's reward of the intermediate answer x̂0_t (decoded like a completion).
Advantage: A_t = (r_t - r_{t-1}) + 1 + mean_{t' > t} r_{t'} (r_{-1} = 0; the last step adds r_T),
z-scored over each group at each step (sample std + 1e-4).
Training: the ``sample_train_steps`` steps with the largest sum_b |A_{b,t}|; each step trains
log p(x̂0_t^i | x_t) at its masked positions, per token -min(rho A_t, clip(rho) A_t) weighted by
lambda_t c_t^i with lambda_t = L / |M_t|, the token mean over M_t, then averaged over the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch import Tensor

from diffrl.algorithms.advantages import reward_advantages
from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import TokenScores, score_disjoint_rows
from diffrl.algorithms.losses import clipped_policy_loss
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm
from diffrl.models.base import DiffusionLM
from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.trajectory import Rollout


@dataclass
class MDPOKnobs:
    # Steps that train per rollout batch, those with the largest sum_b |A_{b,t}| (config_demo.yaml: 16).
    sample_train_steps: int = 16
    # Training rows per batched forward (bounds the memory of one forward).
    rows_per_forward: int = 64


@dataclass
class MDPOConfig(AlgorithmConfig):
    name: str = "mdpo"
    # Each sample's step-mean weights are scaled by its share of the batch (1 / B).
    loss_type: str = "grpo"
    mdpo: MDPOKnobs = field(default_factory=MDPOKnobs)


def recorded(cfg: RolloutConfig) -> RolloutConfig:
    """The rollout settings with every step's prediction x̂0_t recorded."""
    return replace(cfg, record_predictions=True)


def reached_predictions(rollout: Rollout) -> Tensor:
    """x̂0_t [B, T, Lc] of the T steps some sample reached; a sample that stopped earlier keeps its
    final completion (its answer no longer changes)."""
    if rollout.step_tokens.shape[1] == 0:
        raise ValueError("MDPO needs each step's prediction; the rollout has none (rollout.record_predictions=false)")
    reached = (rollout.step_tokens[..., 0] >= 0).any(0)
    steps = int(reached.nonzero().max()) + 1 if reached.any() else 1
    tokens = rollout.step_tokens[:, :steps]
    return torch.where(tokens[..., :1] >= 0, tokens, rollout.completion_ids[:, None, :])


def step_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """A [B, T] from the step rewards r [B, T] (mdpo_trainer.py, adv-v4 = adv-v3 + adv-v2)."""
    if group_size < 2:
        raise ValueError("MDPO z-scores each step over the group; set algorithm.num_generations >= 2")
    r = rewards.float()
    steps = r.shape[1]
    # adv-v3: A_t = r_t - r_{t-1} + 1, r_{-1} = 0
    adv = torch.cat((r[:, :1], r[:, 1:] - r[:, :-1]), dim=1) + 1
    # adv-v2: + mean_{t' > t} r_{t'} for t < T, + r_T at the last step
    later = (r[:, 1:].flip(1).cumsum(1) / torch.arange(1, steps, device=r.device)).flip(1)
    adv = adv + torch.cat((later, r[:, -1:]), dim=1)
    # z-score over the group at each step: (A - mean_g A) / (std_g A + eps)
    grouped = adv.view(-1, group_size, steps)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + eps)).view(-1, steps)


def train_steps(advantages: Tensor, count: int) -> Tensor:
    """The ``count`` steps with the largest sum_b |A_{b,t}|, largest first (split_into_micro_batches)."""
    return torch.topk(advantages.abs().sum(0), k=min(count, advantages.shape[1])).indices


def mdpo_step_advantages(rollout: Rollout, score: Callable[[Tensor], Tensor], *, knobs: MDPOKnobs, group_size: int) -> tuple[Rollout, Tensor]:
    """Reward every reached step, compute A_t, keep the training steps' record and advantages [B, K]."""
    predictions = reached_predictions(rollout)
    # r_t = reward(x̂0_t)
    adv = step_advantages(score(predictions), group_size)
    steps = train_steps(adv, knobs.sample_train_steps)
    narrowed = replace(
        rollout,
        step_tokens=rollout.step_tokens[:, steps],
        step_predicted=rollout.step_predicted[:, steps],
        step_confidence=rollout.step_confidence[:, steps],
    )
    return narrowed, adv[:, steps]


def step_weights(predicted: Tensor, confidence: Tensor) -> Tensor:
    """lambda_t c_t^i / |M_t| at each (sample, step) row's masked positions M_t [.., Lc], with
    lambda_t = L / |M_t| (compute_loss: lambda_t times the confidence-weighted token mean)."""
    count = predicted.sum(-1, keepdim=True).clamp_min(1)
    lam = predicted.shape[-1] / count
    return predicted * confidence * lam / count


@dataclass
class MaskedPredictions:
    """l_{t,i} = log p(x̂0_t^i | q, x_t) at the positions masked in x_t, one noisy row per (sample,
    training step), ``rows_per_forward`` rows per forward. ``logp`` [B, Lc, K, 2]: channel 0 the log-probs, channel 1 the detached weights
    of :func:`step_weights`."""

    rows_per_forward: int = 64

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        rows, steps, length = batch.step_tokens.shape
        if steps == 0:
            raise ValueError("MDPO trains on recorded steps; the batch has none (rollout.record_predictions=false)")
        # One row per (sample, step): x̂0_t as its completion, so x_t masks M_t and the targets are x̂0_t.
        per_step = replace(batch.select(torch.arange(rows, device=batch.step_tokens.device).repeat_interleave(steps)), completion_ids=batch.step_tokens.reshape(-1, length).clamp_min(0))
        predicted = batch.step_predicted.reshape(-1, length)
        scored = predicted.any(1).nonzero().squeeze(1)
        if scored.numel():
            logp, entropy = score_disjoint_rows(model, per_step, scored, predicted[scored], predicted[scored], self.rows_per_forward)
        else:
            logp = torch.zeros(predicted.shape, device=predicted.device, requires_grad=torch.is_grad_enabled())
            entropy = logp.detach()
        logp, entropy = (x.view(rows, steps, length).transpose(1, 2) for x in (logp, entropy))
        weights = step_weights(batch.step_predicted, batch.step_confidence).transpose(1, 2).to(logp.dtype)
        masks = batch.step_predicted.transpose(1, 2)
        entropy = (entropy * masks).sum(-1) / masks.sum(-1).clamp_min(1)
        return TokenScores(logp=torch.stack((logp, weights), dim=-1), mask=masks.any(-1), entropy=entropy)


def mdpo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, weights: Tensor, *, epsilon: float, epsilon_high: float | None, beta: float, ref_logp: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """(1/K) sum_k sum_b w_b lambda_t mean_{i in M_t} c^i [-min(rho A_{b,k}, clip(rho) A_{b,k}) + beta k3],
    w_b a sample's loss weight (1 / B for loss_type grpo; compute_loss divides by the batch's
    masked count, the same when every sample has as many masks at the step)."""
    rows, length, steps = logp.shape[:3]

    def per_row(x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(rows * steps, length)

    sample_weight = weights.sum(1)[:, None, None] / steps
    row_weights = per_row(logp[..., 1].detach() * sample_weight)
    ref = per_row(ref_logp[..., 0]) if ref_logp is not None else None
    return clipped_policy_loss(
        per_row(logp[..., 0]), per_row(old_logp[..., 0]), advantages.reshape(rows * steps), row_weights, epsilon=epsilon, epsilon_high=epsilon_high, beta=beta, ref_logp=ref
    )


@register_algorithm("mdpo", MDPOConfig)
def build(cfg: MDPOConfig) -> Algorithm:
    knobs = cfg.mdpo
    if knobs.sample_train_steps < 1:
        raise ValueError(f"algorithm.mdpo.sample_train_steps={knobs.sample_train_steps} must be >= 1")
    return Algorithm(
        config=cfg,
        # l_{t,i} = log p(x̂0_t^i | q, x_t), i masked in x_t
        estimator=MaskedPredictions(rows_per_forward=knobs.rows_per_forward),
        # unused: the step advantages replace the per-sample ones
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        # (1/K) sum_k mean_b lambda_t mean_{i in M_t} c^i [-min(rho A_t, clip(rho) A_t) + beta k3]
        loss=partial(mdpo_loss, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta),
        rollout_config=recorded,
        # r_t = reward(x̂0_t) -> A_t -> the top sample_train_steps steps by sum_b |A_t|
        step_advantages=partial(mdpo_step_advantages, knobs=knobs, group_size=cfg.num_generations),
    )
