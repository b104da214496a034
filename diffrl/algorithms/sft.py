"""Supervised masked-diffusion training (LLaDA's SFT objective, arXiv 2502.09992).

Per sample, draw t ~ U(eps, 1), mask each response token with probability t (the prompt stays
clean), and minimise  -(1/|y|) sum_{masked i} log p(y^i | x_t) / t  averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import denoiser_hidden, score_tokens
from diffrl.models.base import DiffusionLM
from diffrl.rng import STREAM_COMPLETION_MASK, STREAM_TIME, counter_uniform


def masked_diffusion_loss(model: DiffusionLM, batch: PolicyBatch, seed: int, eps: float = 1e-3) -> tuple[Tensor, dict[str, Tensor]]:
    """The SFT loss over ``batch.completion_mask`` positions (the response, including its EOS fill)."""
    ids = batch.sample_ids
    t = (eps + (1 - eps) * counter_uniform(STREAM_TIME, seed, ids)).float()
    pos = torch.arange(batch.completion_ids.shape[1], device=ids.device)
    u = counter_uniform(STREAM_COMPLETION_MASK, seed, ids[:, None], pos[None, :])
    masked = (u < t[:, None]) & batch.completion_mask
    noisy = torch.where(masked, model.facts.mask_token_id, batch.completion_ids)
    noisy_input = torch.cat((batch.prompt_ids, noisy), dim=1)
    hidden = denoiser_hidden(model, noisy_input, batch.input_ids, batch.key_mask)[:, batch.prompt_ids.shape[1] :]
    logp, _ = score_tokens(model, hidden, batch.completion_ids, masked)
    lengths = batch.completion_mask.sum(1).clamp_min(1)
    loss = -((logp / t[:, None]).sum(1) / lengths).mean()
    return loss, {"sft/loss": loss.detach(), "sft/masked_frac": masked.float().sum() / batch.completion_mask.sum().clamp_min(1)}
