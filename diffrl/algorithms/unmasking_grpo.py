"""Unmasking-GRPO: train the unmasking policy, not the dLLM ("Learning Unmasking Policies for
Diffusion Language Models", Jazbec et al., Apple 2025, arXiv 2512.09106).

The dLLM is frozen and is the environment; an episode is one completion; the actions are the
learned rule's commit decisions D_t (one per denoising step t of the sample); the reward arrives
at the end and trades the task against the forwards spent:
    additive        r = task_weight * R_task - nfe_cost * NFE                  (issue 19's form)
    multiplicative  r = task_weight * R_task * (1 - nfe_cost * NFE)            (the paper's: a wrong answer earns nothing however fast)
Advantage (GRPO): A_i = (r_i - mean_group r) / (std_group r + eps) (scale_rewards=group).
Loss: the clipped surrogate on each step's decision log-probability
    L = -sum_i w_i sum_t min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps_high) A_i),
    rho_it = pi_phi(D_it | s_it) / pi_old(D_it | s_it),
with w the per-sample mean over its steps (loss_type=grpo). pi_old is the rollout's recorded
log-probability (Rollout.unmask_logprob). Only the small policy phi has gradients.

The steps themselves live in :mod:`diffrl.trainer.unmasking_policy` (the RL loop's estimators
score the dLLM, which this algorithm never trains).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffrl.algorithms.losses import clipped_policy_loss
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, register_algorithm
from diffrl.rollout.unmasking_policy import FEATURES, UnmaskingPolicy, UnmaskingPolicyConfig, decision_logprob

NAME = "unmasking_grpo"
SPEED_REWARDS = ("additive", "multiplicative")


@dataclass
class UnmaskingGRPOConfig(AlgorithmConfig):
    name: str = NAME
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    # Weight of the task's total reward and the cost of one forward (NFE) in the reward above.
    task_weight: float = 1.0
    nfe_cost: float = 0.01
    # additive or multiplicative (see the module docstring).
    speed_reward: str = "additive"
    # The policy network, and a policy folder to start from instead (null = a fresh one).
    policy: UnmaskingPolicyConfig = field(default_factory=UnmaskingPolicyConfig)
    init_policy: str | None = None

    def __post_init__(self) -> None:
        if self.speed_reward not in SPEED_REWARDS:
            raise ValueError(f"algorithm.speed_reward={self.speed_reward!r} is not one of {', '.join(SPEED_REWARDS)}")
        if self.nfe_cost < 0:
            raise ValueError(f"algorithm.nfe_cost={self.nfe_cost} must be >= 0")
        if self.beta:
            raise ValueError("algorithm.beta must be 0 for unmasking_grpo: the policy starts fresh, there is no reference to anchor to")


@register_algorithm(NAME, UnmaskingGRPOConfig)
def build(cfg: UnmaskingGRPOConfig) -> Algorithm:
    raise ValueError(
        "algorithm.name=unmasking_grpo trains the unmasking policy with the dLLM frozen; its steps run in "
        "diffrl.trainer.unmasking_policy (python -m diffrl.train dispatches there), not in the dLLM's RL step"
    )


def speed_reward(cfg: UnmaskingGRPOConfig, task: Tensor, nfe: Tensor) -> Tensor:
    """r per sample from the task reward R_task and the forwards NFE it took (module docstring)."""
    task, nfe = task.float(), nfe.float()
    if cfg.speed_reward == "additive":
        return cfg.task_weight * task - cfg.nfe_cost * nfe
    return cfg.task_weight * task * (1 - cfg.nfe_cost * nfe)


def step_logprobs(policy: UnmaskingPolicy, features: Tensor, commits: Tensor) -> Tensor:
    """log pi_phi(D_it | s_it) [B, S] of recorded decisions (0 on slots without a step)."""
    masked = features[..., FEATURES.index("masked")] > 0
    logits = policy(features.flatten(0, 1))
    return decision_logprob(logits, masked.flatten(0, 1), commits.flatten(0, 1)).view(commits.shape[:2])


@dataclass
class DecisionBatch:
    """The recorded decisions of a batch of samples: the policy's inputs [B, S, block, F], the
    commits [B, S, block], their log-probs at rollout time [B, S], advantages [B] and per-step
    loss weights [B, S] (S: the step slots any sample used)."""

    features: Tensor
    commits: Tensor
    old_logp: Tensor
    advantages: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return int(self.commits.shape[0])

    def select(self, index: slice) -> "DecisionBatch":
        return DecisionBatch(*(getattr(self, f)[index] for f in ("features", "commits", "old_logp", "advantages", "weights")))


@dataclass
class DecisionObjective:
    """The clipped surrogate (module docstring) on one micro-batch, as the trainer's Policy runs an
    objective: ``(policy, batch, seed) -> (loss, weighted metric sums)``."""

    epsilon: float
    epsilon_high: float | None = None

    def __call__(self, policy: UnmaskingPolicy, batch: DecisionBatch, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        logp = step_logprobs(policy, batch.features, batch.commits)
        return clipped_policy_loss(logp, batch.old_logp, batch.advantages, batch.weights, epsilon=self.epsilon, epsilon_high=self.epsilon_high)
