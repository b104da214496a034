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

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from diffrl.algorithms.batch import PolicyBatch
from diffrl.kernels import selected_logprobs
from diffrl.models.base import DiffusionLM
from diffrl.models.masks import positions_from_mask, two_stream_block_mask
from diffrl.rng import STREAM_COMPLETION_MASK, STREAM_PROMPT_MASK, STREAM_TIME, counter_uniform


@dataclass
class TokenScores:
    """``logp[b, i]``: the estimator's contribution of completion token i (0 where not scored);
    ``mask``: which positions carry signal; ``entropy``: the predictive entropy there.

    An estimator whose loss needs more than one value per token (SPG's two bounds, BGPO's Monte
    Carlo draws, CJ-GRPO's per-step shares) returns ``logp`` [B, Lc, C]: the trainer only slices
    rows, so the channels reach the algorithm's own loss intact."""

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
        prompt = masked_prompt(batch, seed, self.p_mask_prompt, mask_id)
        noisy = torch.cat((prompt, torch.full_like(batch.completion_ids, mask_id)), dim=1)
        hidden = denoiser_hidden(model, noisy, batch.input_ids, batch.key_mask)[:, prompt.shape[1] :]
        logp, entropy = score_tokens(model, hidden, batch.completion_ids, batch.completion_mask)
        return TokenScores(logp=logp, mask=batch.completion_mask, entropy=entropy)


def completion_uniforms(batch: PolicyBatch, seed: int, *draw: int) -> Tensor:
    """Keyed uniforms [B, Lc], one per completion position, for draw ``draw`` of an estimator."""
    pos = torch.arange(batch.completion_ids.shape[1], device=batch.completion_ids.device)
    return counter_uniform(STREAM_COMPLETION_MASK, seed, batch.sample_ids[:, None], *draw, pos[None, :])


def noisy_hidden(model: DiffusionLM, batch: PolicyBatch, rows: Tensor, masked: Tensor, prompt: Tensor | None = None) -> Tensor:
    """Hidden states [R, Lc, H] over the completions of noisy copies, all in one forward: row r is
    sample ``rows[r]`` with the completion tokens ``masked[r]`` replaced by M and the prompt
    ``prompt[r]`` (default: the clean prompt)."""
    mask_id = model.facts.mask_token_id
    prompt = batch.prompt_ids[rows] if prompt is None else prompt
    noisy = torch.cat((prompt, torch.where(masked, mask_id, batch.completion_ids[rows])), dim=1)
    return denoiser_hidden(model, noisy, batch.input_ids[rows], batch.key_mask[rows])[:, batch.prompt_ids.shape[1] :]


def score_noisy_rows(model: DiffusionLM, batch: PolicyBatch, rows: Tensor, masked: Tensor, scored: Tensor, prompt: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(logp, entropy) [R, Lc] of the noisy copies (see :func:`noisy_hidden`) at ``scored``, zero elsewhere."""
    return score_tokens(model, noisy_hidden(model, batch, rows, masked, prompt), batch.completion_ids[rows], scored)


def masked_prompt(batch: PolicyBatch, seed: int, p_mask_prompt: float, mask_id: int, *draw: int) -> Tensor:
    """The prompts [B, Lp] with each token replaced by M with probability ``p_mask_prompt`` (d1's
    prompt masking), keyed by sample id, position and ``draw``."""
    if p_mask_prompt <= 0:
        return batch.prompt_ids
    pos = positions_from_mask(batch.prompt_mask)
    u = counter_uniform(STREAM_PROMPT_MASK, seed, batch.sample_ids[:, None], *draw, pos)
    return torch.where(u < p_mask_prompt, mask_id, batch.prompt_ids)


def coupled_masks(batch: PolicyBatch, seed: int, t_low: float, t_high: float) -> tuple[Tensor, Tensor]:
    """coupled-GRPO's pair: t [B, 1] ~ U(t_low, t_high) per sample and the first mask [B, Lc]
    (u < t); its complement is the second. Keyed by sample id, so a row's masks do not depend on
    the batch it is scored in."""
    t = t_low + (t_high - t_low) * counter_uniform(STREAM_TIME, seed, batch.sample_ids)[:, None]
    return t.float(), completion_uniforms(batch, seed) < t


@dataclass
class CoupledComplementary:
    """DiffuCoder's coupled estimator: three forwards (completion all M; masked where u < t; masked
    where u >= t), the prompt clean;  l_i = 1/2 [ l_full + 1[u<t] l_b / t + 1[u>=t] l_c / (1-t) ],
    so every completion token is scored exactly once by the pair."""

    t_low: float = 0.2
    t_high: float = 0.8

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        t, first = coupled_masks(batch, seed, self.t_low, self.t_high)
        mask = batch.completion_mask
        rows = torch.arange(len(batch), device=mask.device).repeat(3)
        all_masked = torch.ones_like(first)
        logp, entropy = score_noisy_rows(
            model, batch, rows, torch.cat((all_masked, first, ~first)), torch.cat((mask, mask & first, mask & ~first))
        )
        full, pass_b, pass_c = logp.chunk(3)
        contribution = 0.5 * (full + pass_b / t + pass_c / (1 - t))
        return TokenScores(logp=contribution, mask=mask, entropy=entropy.chunk(3)[0])


def gauss_legendre(num_nodes: int) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes in (0, 1) and weights summing to 1: exact for polynomials of degree
    <= 2 num_nodes - 1, and no node at the 1/t singularity."""
    x, w = np.polynomial.legendre.leggauss(num_nodes)
    return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)


@dataclass
class MonteCarloELBO:
    """The masked-diffusion ELBO  E_t E_{y_t} [ (1/t) sum_i 1[y_t^i = M] log p(y^i | y_t, q) ].

    ``time_sampling="gauss"`` is GDPO's semi-deterministic Monte Carlo: fixed Gauss-Legendre nodes
    t_n with weights w_n, ``masks_per_node`` random masks at each; ``"uniform"`` is double Monte
    Carlo: t_n ~ U(0, 1) per sample, weights 1/N. Each of the N x K draws is one forward.
    """

    num_nodes: int = 3
    masks_per_node: int = 1
    time_sampling: str = "gauss"

    def __post_init__(self) -> None:
        if self.time_sampling not in ("gauss", "uniform"):
            raise ValueError(f"time_sampling={self.time_sampling!r} is not one of gauss, uniform")
        if self.num_nodes < 1 or self.masks_per_node < 1:
            raise ValueError("num_nodes and masks_per_node must be >= 1")

    def times(self, batch: PolicyBatch, seed: int) -> tuple[Tensor, Tensor]:
        """t [B, N] and the quadrature weights w [B, N]."""
        n = self.num_nodes
        if self.time_sampling == "gauss":
            nodes, weights = gauss_legendre(n)
            shape = (len(batch), n)
            return nodes.to(batch.sample_ids.device).expand(shape), weights.to(batch.sample_ids.device).expand(shape)
        node = torch.arange(n, device=batch.sample_ids.device)
        t = counter_uniform(STREAM_TIME, seed, batch.sample_ids[:, None], node[None, :])
        return t, torch.full_like(t, 1.0 / n)

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        t, w = self.times(batch, seed)
        mask = batch.completion_mask
        rows = torch.arange(len(batch), device=mask.device)
        total = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        entropy = torch.zeros_like(total)
        times_masked = torch.zeros_like(total)
        for n in range(self.num_nodes):
            tn = t[:, n : n + 1]
            for k in range(self.masks_per_node):
                masked = completion_uniforms(batch, seed, n, k) < tn
                logp, ent = score_noisy_rows(model, batch, rows, masked, masked & mask)
                total = total + (w[:, n : n + 1] / self.masks_per_node / tn).float() * logp
                entropy, times_masked = entropy + ent, times_masked + masked.float()
        # The entropy metric: the mean over the draws in which the token was masked.
        return TokenScores(logp=total, mask=mask, entropy=entropy / times_masked.clamp_min(1))


@dataclass
class AutoregressiveLikelihood:
    """The exact likelihood of a left-to-right decode: log p(y^i | q, y^{<i}, M ... M) per token.

    Each target needs its own input, so the inputs are rows of a batch, ``rows_per_forward`` at a
    time (under grad each chunk is recomputed in the backward, so memory holds one chunk). On a
    bidirectional model a row scores one position. On a block-causal model the noisy blocks of the
    two-stream layout are independent given the clean stream, so one row scores in-block offset j
    of every block at once: ``block_size`` rows per sample instead of one per token.
    """

    rows_per_forward: int = 64

    def rows(self, model: DiffusionLM, batch: PolicyBatch) -> tuple[Tensor, Tensor, Tensor]:
        """(sample of each row [R], masked [R, Lc], scored [R, Lc])."""
        mask = batch.completion_mask
        length = mask.shape[1]
        if model.facts.attention == "block_causal":
            assert model.facts.block_size is not None
            offset = positions_from_mask(batch.key_mask)[:, batch.prompt_ids.shape[1] :] % model.facts.block_size
            j = torch.arange(model.facts.block_size, device=mask.device)
            samples = torch.arange(len(batch), device=mask.device).repeat_interleave(j.numel())
            off = offset[samples]
            jj = j.repeat(len(batch))[:, None]
            return samples, off >= jj, (off == jj) & mask[samples]
        samples, target = mask.nonzero(as_tuple=True)
        pos = torch.arange(length, device=mask.device)[None, :]
        return samples, pos >= target[:, None], pos == target[:, None]

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        samples, masked, scored = self.rows(model, batch)
        logp, entropy = score_disjoint_rows(model, batch, samples, masked, scored, self.rows_per_forward)
        return TokenScores(logp=logp, mask=batch.completion_mask, entropy=entropy)


def score_disjoint_rows(model: DiffusionLM, batch: PolicyBatch, samples: Tensor, masked: Tensor, scored: Tensor, rows_per_forward: int) -> tuple[Tensor, Tensor]:
    """(logp, entropy) [B, Lc] from noisy rows that each score their own tokens: row r is sample
    ``samples[r]`` with ``masked[r]`` replaced by M, scored at ``scored[r]``; no token is scored by
    two rows of one sample. Rows go ``rows_per_forward`` at a time, and under grad each chunk is
    recomputed in the backward, so memory holds one chunk's activations."""
    parts = []
    for s in range(0, samples.numel(), rows_per_forward):
        chunk = slice(s, s + rows_per_forward)
        args = (batch, samples[chunk], masked[chunk], scored[chunk])
        if torch.is_grad_enabled():
            parts.append(checkpoint(_scored_hidden, model, *args, use_reentrant=False))
        else:
            parts.append(_scored_hidden(model, *args))
    hidden = torch.cat(parts)
    row, pos = scored.nonzero(as_tuple=True)
    sample = samples[row]
    lp, ent = selected_logprobs(hidden, model.lm_head.weight, batch.completion_ids[sample, pos])
    logp = torch.zeros(batch.completion_mask.shape, dtype=lp.dtype, device=lp.device).index_put((sample, pos), lp)
    return logp, torch.zeros_like(logp).index_put((sample, pos), ent.detach())


def _scored_hidden(model: DiffusionLM, batch: PolicyBatch, rows: Tensor, masked: Tensor, scored: Tensor) -> Tensor:
    """Hidden rows [n, H] at the ``scored`` positions of the noisy copies (row-major order)."""
    return noisy_hidden(model, batch, rows, masked)[scored]
