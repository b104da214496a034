"""LightningRL (arXiv 2603.13319; SJTU-DENG-Lab/LightningRL train_policy_no_value.py, modeling_sdar.py).

Estimator: every completion token masked, one forward; block-causal models read it in the
two-stream layout (noisy blocks conditioned on the clean earlier blocks), as the reference does.
Advantage: "per-reward decoupled normalization": accuracy and tokens-per-forward (TPF, from the
rollout's step map and forward count) are normalised separately within each group and summed,
then normalised over the batch's kept samples: A = z_batch( z_g(acc) + norm_g(TPF) ).
Filter ("TPF-aware"): a group is dropped when all of it is wrong or its TPF range is below
filter_tpf_threshold; all-correct groups stay (their TPF still varies).
Loss: rho = exp(clamp(l - l_old, +-10)), clipped to [1 - eps, 1 + eps_high] (the upper bound only
binds for A > 0), sequence mean then batch mean (loss_type grpo), plus beta * k3, plus
nll_loss_weight * the token-mean NLL of the correct samples ("token-level NLL regularization").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from diffrl.algorithms.advantages import Outcome, min_max, z_score
from diffrl.algorithms.estimators import OneStepMeanField
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, Needs, NLLTerm, register_algorithm

TPF_NORMS = ("z_score", "minmax", "none")
ADV_NORMS = ("batch", "prompt_group", "prompt_group_center")


@dataclass
class LightningKnobs:
    # z-score the 0/1 accuracy within each group (else map it to -1/+1).
    acc_norm: bool = True
    # TPF normalisation within each group: z_score, minmax or none (tpf_coefficient x TPF).
    tpf_norm_mode: str = "z_score"
    tpf_coefficient: float = 1.0
    # Final normalisation of the summed reward: batch (z over kept samples), prompt_group (z per
    # group) or prompt_group_center (minus the group mean).
    adv_norm_mode: str = "batch"
    # Drop groups where every sample is wrong.
    filter_all_wrong: bool = True
    # Drop groups whose max TPF - min TPF is below this.
    filter_tpf_threshold: float = 0.01
    # Weight of the token-mean NLL over the correct samples' completions.
    nll_loss_weight: float = 0.1
    # The log-ratio is clamped to +- this before exp.
    log_ratio_clamp: float = 10.0


@dataclass
class LightningRLConfig(AlgorithmConfig):
    name: str = "lightning_rl"
    loss_type: str = "grpo"
    lightning_rl: LightningKnobs = field(default_factory=LightningKnobs)


def accurate(outcome: Outcome) -> Tensor:
    """Correct and finished: a completion that hit the length limit counts as wrong."""
    return outcome.correct & ~outcome.truncated


def decoupled_advantages(outcome: Outcome, knobs: LightningKnobs) -> Tensor:
    """A = norm_adv( norm_g(accuracy) + norm_g(TPF) ), each reward normalised within its group."""
    g = outcome.group_size
    acc = accurate(outcome).float().view(-1, g)
    acc_n = z_score(acc) if knobs.acc_norm else 2 * acc - 1
    tpf = outcome.tpf.float().view(-1, g)
    if knobs.tpf_norm_mode == "z_score":
        tpf_n = z_score(tpf)
    elif knobs.tpf_norm_mode == "minmax":
        tpf_n = min_max(tpf)
    else:
        tpf_n = knobs.tpf_coefficient * tpf
    reward = acc_n + tpf_n
    if knobs.adv_norm_mode == "prompt_group":
        return z_score(reward).reshape(-1)
    if knobs.adv_norm_mode == "prompt_group_center":
        return (reward - reward.mean(1, keepdim=True)).reshape(-1)
    flat, keep = reward.reshape(-1), outcome.keep
    adv = torch.zeros_like(flat)
    if keep.any():
        adv[keep] = z_score(flat[keep])
    return adv


def tpf_aware_keep(outcome: Outcome, knobs: LightningKnobs) -> Tensor:
    """Samples of the groups that are not all wrong and whose TPF range reaches the threshold."""
    g = outcome.group_size
    acc = accurate(outcome).view(-1, g)
    tpf = outcome.tpf.float().view(-1, g)
    keep = (tpf.amax(1) - tpf.amin(1)) >= knobs.filter_tpf_threshold
    if knobs.filter_all_wrong:
        keep &= acc.any(1)
    return keep.repeat_interleave(g) & outcome.keep


@register_algorithm("lightning_rl", LightningRLConfig)
def build(cfg: LightningRLConfig) -> Algorithm:
    knobs = cfg.lightning_rl
    for name, value, allowed in (("tpf_norm_mode", knobs.tpf_norm_mode, TPF_NORMS), ("adv_norm_mode", knobs.adv_norm_mode, ADV_NORMS)):
        if value not in allowed:
            raise ValueError(f"algorithm.lightning_rl.{name}={value!r} is not one of {', '.join(allowed)}")
    return Algorithm(
        config=cfg,
        # log pi(y|q) ~= sum_i log p(y^i | q, M...M) (two-stream on block-causal models)
        estimator=OneStepMeanField(p_mask_prompt=0.0),
        advantage=partial(decoupled_advantages, knobs=knobs),
        # -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) + beta k3, rho = exp(clamp(l - l_old, +-10))
        loss=cfg.clipped_loss(log_ratio_clamp=knobs.log_ratio_clamp),
        keep=partial(tpf_aware_keep, knobs=knobs),
        nll=NLLTerm(coef=knobs.nll_loss_weight, samples=accurate) if knobs.nll_loss_weight > 0 else None,
        # Accuracy and TPF are its two rewards; a group whose TPF never varies is filtered out.
        needs=Needs(correctness=True, varying_tpf=True),
    )
