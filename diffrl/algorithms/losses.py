"""Policy losses and how per-token terms are aggregated into one scalar.

Aggregation is expressed as per-token weights computed once for the whole rollout batch, so the sum
of micro-batch losses equals the full-batch loss exactly whatever the micro-batch split.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def token_weights(
    mask: Tensor,
    loss_type: str,
    micro_batch_size: int,
    max_completion_length: int,
    global_tokens: float | None = None,
    global_sequences: float | Tensor | None = None,
    world_size: int = 1,
) -> Tensor:
    """Weights [B, L] whose dot product with per-token losses gives TRL's ``loss_type`` reductions.

    - ``grpo``: mean over sequences of each sequence's token mean.
    - ``bnpo``: token mean within each micro-batch, averaged over micro-batches (d1's reduction)
      and over the ``world_size`` ranks (each rank's micro-batches are its own).
    - ``dr_grpo``: token sum over (sequences x ``max_completion_length``) (Dr. GRPO).
    - ``dapo``: token mean over the whole (global) batch.
    ``global_tokens`` / ``global_sequences`` are the counts over all ranks (default: local);
    ``global_sequences`` may be a per-row count [B, 1] (each row normalised within its own set of
    sequences, e.g. JustGRPO's accumulation micro-steps).
    """
    m = mask.float()
    # A batch whose every sample was dropped (no group with reward variance) trains nothing:
    # its weights are zeros, not 0/0.
    if isinstance(global_sequences, Tensor):
        n_seq: float | Tensor = global_sequences.float().clamp_min(1.0)
    else:
        n_seq = max(float(global_sequences if global_sequences is not None else mask.shape[0]), 1.0)
    if loss_type == "grpo":
        return m / m.sum(1, keepdim=True).clamp_min(1) / n_seq
    if loss_type == "dapo":
        return m / max(float(global_tokens if global_tokens is not None else m.sum()), 1.0)
    if loss_type == "dr_grpo":
        return m / (n_seq * max_completion_length)
    if loss_type == "bnpo":
        chunks = m.split(micro_batch_size)
        return torch.cat([c / c.sum().clamp_min(1) / len(chunks) / world_size for c in chunks])
    raise ValueError(f"loss_type={loss_type!r} is not one of {', '.join(LOSS_TYPES)}")


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL estimate exp(r) - r - 1 with r = ref - current (Schulman's k3)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    weights: Tensor,
    *,
    epsilon: float,
    epsilon_high: float | None = None,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    ratio_level: str = "token",
    log_ratio_clamp: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate per token, plus ``beta`` x k3 to the reference.

    loss_t = -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A) + beta k3_t, with
    rho_t = exp(logp_t - old_logp_t), aggregated by ``weights`` (see :func:`token_weights`).
    The upper bound only binds when A > 0, so ``epsilon_high`` is LightningRL's "wider clip for
    positive advantages" too. ``ratio_level="sequence"`` uses one ratio per row (GSPO, IGPO, GDPO):
    exp of the mean of logp_t - old_logp_t over the row's weighted tokens. ``log_ratio_clamp``
    clamps the log-ratio first (LightningRL: 10).
    Returns the loss and detached weighted sums for metrics (divide by the weight total).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages[:, None]
    log_ratio = logp - old_logp
    if ratio_level == "sequence":
        counted = (weights != 0).to(log_ratio.dtype)
        log_ratio = ((log_ratio * counted).sum(1, keepdim=True) / counted.sum(1, keepdim=True).clamp_min(1)).expand_as(logp)
    elif ratio_level != "token":
        raise ValueError(f"ratio_level={ratio_level!r} is not one of token, sequence")
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    pg_loss = (per_token * weights).sum()
    loss = pg_loss
    w = weights.detach()
    metrics = {
        "actor/pg_loss": pg_loss.detach(),
        "actor/pg_clipfrac": ((clipped > unclipped).float() * w).sum(),
        # Clipped at the lower bound 1 - epsilon (A < 0). verl's name; its value there is the
        # dual-clip bound's, which this loss does not have.
        "actor/pg_clipfrac_lower": (((clipped > unclipped) & (adv < 0)).float() * w).sum(),
        "actor/ppo_kl": ((old_logp - logp).detach() * w).sum(),
    }
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = k3(logp, ref_logp)
        loss = loss + beta * (kl * weights).sum()
        metrics["actor/kl_loss"] = (kl.detach() * w).sum()
    return loss, metrics

