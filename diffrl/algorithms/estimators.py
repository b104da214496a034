"""Likelihood estimators: per-token log-likelihood contributions of completions under a policy.

An estimator maps ``(model, batch, seed)`` to :class:`TokenScores`. It is deterministic given the
seed (masks are keyed by sample id and position, see :mod:`diffrl.rng`), so the old, reference and
current policy are scored under identical masks, and it runs with or without grad. Log-probs are
gathered at the target tokens from hidden states in chunks; no [batch, length, vocab] tensor is
ever kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from diffrl.algorithms.batch import PolicyBatch
from diffrl.kernels import selected_logprobs
from diffrl.models.base import DiffusionLM
from diffrl.models.masks import positions_from_mask, two_stream_block_mask
from diffrl.rng import STREAM_PROMPT_MASK, counter_uniform


@dataclass
class TokenScores:
    """``logp[b, i]``: the estimator's contribution of completion token i (0 where not scored);
    ``mask``: which positions carry signal; ``entropy``: the predictive entropy there."""

    logp: Tensor
    mask: Tensor
    entropy: Tensor

    def sequence(self) -> Tensor:
        """The sequence-level estimate: the masked sum over tokens."""
        return (self.logp * self.mask).sum(-1)


class LikelihoodEstimator(Protocol):
    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores: ...


def denoiser_hidden(model: DiffusionLM, noisy: Tensor, clean: Tensor, key_mask: Tensor) -> Tensor:
    """Hidden states [B, L, H] predicting ``clean`` at every position of the ``noisy`` sequence.

    Bidirectional models see the noisy sequence alone. Block-causal models see it in the
    two-stream layout ``[x_t ; x_0]``: noisy block k attends to itself and the clean blocks before
    it, as block-diffusion training does.
    """
    if model.facts.attention == "block_causal":
        assert model.facts.block_size is not None
        length = noisy.shape[1]
        mask = two_stream_block_mask(key_mask, model.facts.block_size)
        pos = positions_from_mask(key_mask)
        hidden = model(torch.cat((noisy, clean), dim=1), mask, torch.cat((pos, pos), dim=1))
        return hidden[:, :length]
    return model(noisy, key_mask)


def score_tokens(model: DiffusionLM, hidden: Tensor, targets: Tensor, where: Tensor) -> tuple[Tensor, Tensor]:
    """log p(target) and entropy at the ``where`` positions of ``hidden`` [B, L, H]; zeros elsewhere."""
    lp, ent = selected_logprobs(hidden[where], model.lm_head.weight, targets[where])
    logp = torch.zeros(where.shape, dtype=lp.dtype, device=lp.device)
    entropy = torch.zeros_like(logp)
    return logp.masked_scatter(where, lp), entropy.masked_scatter(where, ent.detach())


@dataclass
class OneStepMeanField:
    """d1's estimator: every completion token masked, each prompt token masked with probability
    ``p_mask_prompt``, one forward; log p(y) is approximated by the sum of per-token log-probs."""

    p_mask_prompt: float = 0.0

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        mask_id = model.facts.mask_token_id
        prompt = batch.prompt_ids
        if self.p_mask_prompt > 0:
            pos = positions_from_mask(batch.prompt_mask)
            u = counter_uniform(STREAM_PROMPT_MASK, seed, batch.sample_ids[:, None], pos)
            prompt = torch.where(u < self.p_mask_prompt, mask_id, prompt)
        noisy = torch.cat((prompt, torch.full_like(batch.completion_ids, mask_id)), dim=1)
        hidden = denoiser_hidden(model, noisy, batch.input_ids, batch.key_mask)[:, prompt.shape[1] :]
        logp, entropy = score_tokens(model, hidden, batch.completion_ids, batch.completion_mask)
        return TokenScores(logp=logp, mask=batch.completion_mask, entropy=entropy)
