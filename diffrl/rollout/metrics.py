"""Per-rollout measures of cost, parallelism and decoding order, from the recorded trajectory.

Each function takes plain tensors (step map [B, G], completion mask [B, G], forward counts [B]) so
evaluation can compute the same numbers from any source. A token counts as decoded when it lies
within the completion mask (up to and including the first stop token) and a step wrote it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def decoded_tokens(step_map: Tensor, completion_mask: Tensor) -> Tensor:
    """Which completion tokens [B, G] were decoded by the model (not fixed, not fill after a stop)."""
    return completion_mask & (step_map >= 0)


def tokens_per_forward(step_map: Tensor, completion_mask: Tensor, nfe: Tensor) -> Tensor:
    """TPF per sample [B]: decoded tokens over the forwards the sample took part in."""
    return decoded_tokens(step_map, completion_mask).sum(1).float() / nfe.clamp_min(1).float()


def finalization_parallelism(step_map: Tensor, completion_mask: Tensor) -> Tensor:
    """AFP per sample [B]: tokens finalized per step, averaged over the steps that finalized one."""
    decoded = decoded_tokens(step_map, completion_mask)
    steps = torch.where(decoded, step_map, -1).sort(1).values
    distinct = torch.cat((steps[:, :1] >= 0, (steps[:, 1:] != steps[:, :-1]) & (steps[:, 1:] >= 0)), dim=1).sum(1)
    return decoded.sum(1).float() / distinct.clamp_min(1).float()


def kendall_tau(step_map: Tensor, completion_mask: Tensor) -> Tensor:
    """Kendall's tau-b per sample [B] between finalization step and left-to-right position.

    1 is strictly left to right, -1 right to left; tokens finalized in the same step are ties.
    NaN where it is undefined (fewer than two decoded tokens, or all in one step).
    """
    decoded = decoded_tokens(step_map, completion_mask)
    out = torch.full((step_map.shape[0],), math.nan, dtype=torch.float64)
    for b in range(step_map.shape[0]):
        steps = step_map[b][decoded[b]].double()
        n = steps.numel()
        if n < 2:
            continue
        # Pairs i < j by position: concordant when the earlier position was finalized earlier.
        sign = torch.sign(steps[None, :] - steps[:, None]).triu(1)
        pairs = n * (n - 1) / 2
        tied = (sign == 0).triu(1).sum().item()
        if tied == pairs:
            continue
        out[b] = sign.sum().item() / math.sqrt((pairs - tied) * pairs)
    return out


def rollout_metrics(step_map: Tensor, completion_mask: Tensor, nfe: Tensor, nfe_cache: Tensor, truncated: Tensor, num_edits: int = 0) -> dict[str, float]:
    """verl-style names: response_length/*, rollout/nfe (split into denoise-only and cache
    refresh/store forwards), rollout/tpf, rollout/afp, rollout/kendall_tau, rollout/edits."""
    lengths = completion_mask.sum(1).float()
    nfe_f = nfe.float()
    out = {
        "response_length/mean": lengths.mean().item(),
        "response_length/max": lengths.max().item(),
        "response_length/min": lengths.min().item(),
        "response_length/clip_ratio": truncated.float().mean().item(),
        "rollout/nfe": nfe_f.mean().item(),
        "rollout/nfe_denoise": (nfe - nfe_cache).float().mean().item(),
        "rollout/nfe_cache": nfe_cache.float().mean().item(),
        "rollout/tpf": tokens_per_forward(step_map, completion_mask, nfe).mean().item(),
        "rollout/afp": finalization_parallelism(step_map, completion_mask).mean().item(),
        "rollout/edits": num_edits / step_map.shape[0],
    }
    tau = kendall_tau(step_map, completion_mask)
    if not torch.isnan(tau).all():
        out["rollout/kendall_tau"] = tau.nanmean().item()
    return out
