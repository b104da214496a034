"""Supervised masked-diffusion training with the family's masking.

Bidirectional models (LLaDA, Dream; LLaDA's SFT objective, arXiv 2502.09992): per sample draw
t ~ U(eps, 1) and mask each response token with probability t (the prompt stays clean).

Block-causal models (SDAR, LLaDA2; block diffusion as in BD3-LM, arXiv 2503.09573): every block
of the sequence draws its own t ~ U(eps, 1) and masks its response tokens with that probability;
the model sees the two-stream layout ``[x_t ; x_0]`` (:func:`~diffrl.algorithms.estimators.denoiser_hidden`)
so noisy block k is denoised from the clean blocks before it. Blocks are counted on the grid that
starts at each row's first real token, as the attention mask counts them.

Both minimise  -(1/|y|) sum_{masked i} log p(y^i | x_t) / t_i  averaged over the batch, where t_i
is the masking rate of token i's sample (bidirectional) or block (block-causal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import completion_uniforms, score_noisy_rows
from diffrl.models.base import DiffusionLM
from diffrl.models.masks import block_ids
from diffrl.rng import STREAM_TIME, counter_uniform


def masking_rates(model: DiffusionLM, batch: PolicyBatch, seed: int, eps: float = 1e-3) -> Tensor:
    """t per completion token [B, Lc]: one draw per sample, or one per block for block-causal models."""
    ids = batch.sample_ids
    if model.facts.attention == "block_causal":
        assert model.facts.block_size is not None
        blocks = block_ids(batch.key_mask, model.facts.block_size)[:, batch.prompt_ids.shape[1] :]
        u = counter_uniform(STREAM_TIME, seed, ids[:, None], blocks)
    else:
        u = counter_uniform(STREAM_TIME, seed, ids)[:, None].expand(-1, batch.completion_ids.shape[1])
    return (eps + (1 - eps) * u).float()


def masked_diffusion_loss(model: DiffusionLM, batch: PolicyBatch, seed: int, eps: float = 1e-3) -> tuple[Tensor, dict[str, Tensor]]:
    """The SFT loss over ``batch.completion_mask`` positions (the response, including its EOS fill)."""
    t = masking_rates(model, batch, seed, eps)
    masked = (completion_uniforms(batch, seed) < t) & batch.completion_mask
    logp, _ = score_noisy_rows(model, batch, torch.arange(len(batch), device=masked.device), masked, masked)
    lengths = batch.completion_mask.sum(1).clamp_min(1)
    loss = -((logp / t).sum(1) / lengths).mean()
    return loss, {"sft/loss": loss.detach(), "sft/masked_frac": masked.float().sum() / batch.completion_mask.sum().clamp_min(1)}
