"""Sequence-likelihood bounds that the newer ELBO-based algorithms train on.

- :class:`SandwichedBounds` (SPG): block-wise masked draws giving an ELBO-type lower bound and the
  EUBO upper bound (or their mixture), both per token.
- :class:`StratifiedCoupledELBO` (ESPO): the ELBO with stratified mask counts and the
  complementary ("coupled") pass.
- :class:`PerDrawELBO` (BGPO): the double Monte Carlo ELBO kept per draw, each draw's forward
  recomputed in the backward so memory holds one draw's activations.

All masks are keyed by sample id (see :mod:`diffrl.rng`), like the estimators in
:mod:`diffrl.algorithms.estimators`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import MonteCarloELBO, TokenScores, completion_uniforms, masked_prompt, score_noisy_rows
from diffrl.models.base import DiffusionLM
from diffrl.models.masks import positions_from_mask
from diffrl.rng import STREAM_TIME, counter_uniform
from diffrl.rollout.selection import ranks

NEGATIVE_BOUNDS = ("eubo", "mix", "elbo", "zero")


def draw_uniform(batch: PolicyBatch, seed: int, *keys: int) -> Tensor:
    """Keyed uniforms [B], one per sample, for an estimator's per-sample choice ``keys`` (the
    leading -1 keeps them apart from MonteCarloELBO's times on the same stream)."""
    return counter_uniform(STREAM_TIME, seed, batch.sample_ids, -1, *keys)


def random_subset(u: Tensor, eligible: Tensor, k: Tensor) -> Tensor:
    """The ``k[b]`` eligible positions of each row with the largest keyed uniforms ``u``."""
    return (ranks(torch.where(eligible, u, -1.0)) < k[:, None]) & eligible


@dataclass
class SandwichedBounds:
    """SPG's per-token bounds with ``block_random`` masking; ``logp`` [B, Lc, 2] carries the
    positive-sample bound (channel 0) and the negative-sample one (channel 1).

    Draw j: a block b_j of the completion (distinct over the draws while there are enough blocks),
    earlier blocks clean, later blocks and everything past the completion M, and k_j tokens of b_j
    M with k_j ~ U{max(1, floor(m min_t)) .. floor(m max_t)} (m: b_j's completion tokens); the
    prompt masked at ``p_mask_prompt``. With m_ij the masked completion tokens, n_j = sum_i m_ij and
    t_j = n_j / |y|:
      ELBO  = (1/J) sum_j sum_i m_ij l_ij / n_j
      EUBO  = (1 / (beta |V|)) sum_{i in V} log( (1/J) sum_j m_ij p_ij^beta / t_j ),  V = tokens masked in some draw
      mix   = w EUBO + (1 - w) ELBO
    """

    num_t: int = 2
    block_length: int = 32
    min_t: float = 0.0
    max_t: float = 1.0
    p_mask_prompt: float = 0.15
    eubo_beta: float = 1.5
    mix_weight: float = 0.5
    negative: str = "mix"

    def __post_init__(self) -> None:
        if self.negative not in NEGATIVE_BOUNDS:
            raise ValueError(f"logp_estimation={self.negative!r} is not one of {', '.join(NEGATIVE_BOUNDS)}")
        if not 0 <= self.min_t <= self.max_t <= 1:
            raise ValueError(f"min_t={self.min_t} and max_t={self.max_t} must satisfy 0 <= min_t <= max_t <= 1")

    def blocks(self, model: DiffusionLM, batch: PolicyBatch) -> Tensor:
        """Completion block index [B, Lc], from 0 at the completion's first block."""
        if model.facts.attention == "block_causal":
            assert model.facts.block_size is not None
            block = positions_from_mask(batch.key_mask)[:, batch.prompt_ids.shape[1] :] // model.facts.block_size
            return block - block[:, :1]
        return torch.arange(batch.completion_ids.shape[1], device=batch.completion_ids.device).expand_as(batch.completion_ids) // self.block_length

    def masks(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> Tensor:
        """Masked positions [J, B, Lc] of the J draws."""
        block = self.blocks(model, batch)
        c = batch.completion_mask
        n_blocks = int(block.max()) + 1
        if self.num_t > n_blocks:
            raise ValueError(f"algorithm.spg.num_t={self.num_t} exceeds the {n_blocks} blocks of the completion; lower num_t")
        last = torch.where(c, block, torch.zeros_like(block)).amax(1)
        # A random permutation of the blocks per sample, folded onto the completion's own blocks.
        u = torch.stack([draw_uniform(batch, seed, 0, i) for i in range(n_blocks)], 1)
        chosen = u.argsort(1, descending=True)[:, : self.num_t] % (last + 1)[:, None]
        out = []
        for j in range(self.num_t):
            b = chosen[:, j : j + 1]
            in_block = (block == b) & c
            m = in_block.sum(1)
            lo = (m * self.min_t).floor().clamp_min(1)
            hi = torch.minimum((m * self.max_t).floor(), m).clamp_min(lo)
            k = lo + (draw_uniform(batch, seed, 1, j) * (hi - lo + 1)).floor().clamp_max(hi - lo)
            picked = random_subset(completion_uniforms(batch, seed, j), in_block, k.long())
            out.append(picked | (block > b) | ~c)
        return torch.stack(out)

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        c = batch.completion_mask
        masked = self.masks(model, batch, seed)
        J, B = masked.shape[:2]
        rows = torch.arange(B, device=c.device).repeat(J)
        prompt = torch.cat([masked_prompt(batch, seed, self.p_mask_prompt, model.facts.mask_token_id, j) for j in range(J)])
        m = masked & c
        logp, ent = score_noisy_rows(model, batch, rows, masked.flatten(0, 1), m.flatten(0, 1), prompt)
        logp, ent = logp.view(J, B, -1), ent.view(J, B, -1)
        n = m.sum(2, keepdim=True).clamp_min(1)
        elbo = (logp / n).mean(0)
        t_hat = n / c.sum(1).clamp_min(1)[None, :, None]
        # log (1/J) sum_j m_ij p_ij^beta / t_j, in log space; unmasked draws drop out.
        terms = torch.where(m, self.eubo_beta * logp - t_hat.log(), torch.full_like(logp, -1e4))
        log_avg = torch.logsumexp(terms, 0) - math.log(J)
        seen = m.any(0)
        eubo = torch.where(seen, log_avg, torch.zeros_like(log_avg)) / (self.eubo_beta * seen.sum(1, keepdim=True).clamp_min(1))
        negative = {"eubo": eubo, "mix": self.mix_weight * eubo + (1 - self.mix_weight) * elbo, "elbo": elbo, "zero": torch.zeros_like(elbo)}[self.negative]
        entropy = ent.sum(0) / m.sum(0).clamp_min(1)
        return TokenScores(logp=torch.stack((elbo, negative), -1), mask=c, entropy=entropy)


@dataclass
class StratifiedCoupledELBO:
    """ESPO's ELBO: draw d of ``num_mc`` masks x_d = round(k + d (L + 1) / num_mc) mod (L + 1) of
    the L buffer positions (k ~ U{0..L} per sample, so the draws are stratified over the mask
    ratio), t_d = x_d / (L + 1); with ``coupled`` the complement is scored too:
      l_i = (1/D) sum_d 1/2 [ 1[masked] l_i^(d) / t_d + 1[unmasked] l_i^(d,c) / ((L - x_d) / (L + 1)) ]
    (without ``coupled``: (1/D) sum_d 1[masked] l_i^(d) / t_d). The prompt stays clean.
    """

    num_mc: int = 1
    coupled: bool = True

    def __post_init__(self) -> None:
        if self.num_mc < 1:
            raise ValueError(f"num_mc={self.num_mc} must be >= 1")

    def masks(self, batch: PolicyBatch, seed: int) -> tuple[Tensor, Tensor]:
        """(masked [D, B, L], mask counts x [D, B])."""
        length = batch.completion_ids.shape[1]
        k = (draw_uniform(batch, seed, 0) * (length + 1)).floor().clamp_max(length)
        d = torch.arange(self.num_mc, device=k.device)
        x = torch.round(k[None, :] + d[:, None] * (length + 1) / self.num_mc).long() % (length + 1)
        everywhere = torch.ones_like(batch.completion_mask)
        masked = torch.stack([random_subset(completion_uniforms(batch, seed, i), everywhere, x[i]) for i in range(self.num_mc)])
        return masked, x

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        c = batch.completion_mask
        length = c.shape[1]
        masked, x = self.masks(batch, seed)
        D, B = x.shape
        t = (x.float() / (length + 1))[..., None]
        passes = [masked] + ([~masked] if self.coupled else [])
        noisy = torch.cat(passes).flatten(0, 1)
        rows = torch.arange(B, device=c.device).repeat(len(passes) * D)
        logp, ent = score_noisy_rows(model, batch, rows, noisy, noisy & c.repeat(len(passes) * D, 1))
        logp, ent = logp.view(len(passes), D, B, -1), ent.view(len(passes), D, B, -1)
        first = torch.where(masked, logp[0] / t.clamp_min(1e-12), torch.zeros_like(logp[0]))
        if self.coupled:
            second = torch.where(~masked, logp[1] / ((length - x.float()) / (length + 1)).clamp_min(1e-12)[..., None], torch.zeros_like(logp[1]))
            per_draw = 0.5 * (first + second)
        else:
            per_draw = first
        return TokenScores(logp=per_draw.mean(0), mask=c, entropy=ent.sum(0).mean(0))


@dataclass
class PerDrawELBO:
    """The ELBO of :class:`~diffrl.algorithms.estimators.MonteCarloELBO` (one mask per time, the
    same keyed draws) kept per draw: ``logp`` [B, Lc, K], channel k = K w_k 1[masked] l / t_k, so
    the channel mean is the ELBO and each channel alone an estimate of it. Under grad each draw's
    forward runs under activation checkpointing (``checkpointed``): memory holds one draw's graph,
    not K, for one more forward per draw in the backward."""

    num_draws: int = 16
    time_sampling: str = "uniform"
    checkpointed: bool = True

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        base = MonteCarloELBO(num_nodes=self.num_draws, masks_per_node=1, time_sampling=self.time_sampling)
        t, w = base.times(batch, seed)
        c = batch.completion_mask
        rows = torch.arange(len(batch), device=c.device)
        channels, entropy, times_masked = [], torch.zeros(c.shape, device=c.device), torch.zeros(c.shape, device=c.device)
        for k in range(self.num_draws):
            masked = completion_uniforms(batch, seed, k, 0) < t[:, k : k + 1]
            args = (model, batch, rows, masked, masked & c)
            logp, ent = checkpoint(score_noisy_rows, *args, use_reentrant=False) if self.checkpointed and torch.is_grad_enabled() else score_noisy_rows(*args)
            channels.append((self.num_draws * w[:, k : k + 1] / t[:, k : k + 1]).float() * logp)
            entropy, times_masked = entropy + ent, times_masked + masked.float()
        return TokenScores(logp=torch.stack(channels, -1), mask=c, entropy=entropy / times_masked.clamp_min(1))
