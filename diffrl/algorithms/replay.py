"""Replaying a rollout's own decoding trace (``Rollout.step_map``) as training rows.

Round r of a sample is the canvas just before its r-th decode step: every token committed at that
step or later is M, every earlier one is clean, and the tokens committed at the step are the
targets. TraceRL's shrinkage merges ``shrink`` consecutive steps into one round. On block-causal
models steps are ranked within each block and round r holds the r-th step of every block at once:
in the two-stream layout a noisy block sees only itself and the clean blocks before it, so one
row replays one step of every block (TraceRL's "sliced block training").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import TokenScores, score_disjoint_rows
from diffrl.models.base import DiffusionLM
from diffrl.models.masks import positions_from_mask
from diffrl.rollout.config import RolloutConfig


def decode_rounds(step_map: Tensor, shrink: int, block: Tensor | None = None) -> Tensor:
    """Round [B, Lc] of every decoded token (-1 where ``step_map`` is -1).

    The distinct steps of a sample (of each block of it, when ``block`` [B, Lc] gives block
    indices) are ranked 0, 1, ... in order; rank // ``shrink`` is the round, so each round merges
    ``shrink`` consecutive steps (dLLM-RL's collapse_k_unique).
    """
    if shrink < 1:
        raise ValueError(f"shrink={shrink} must be >= 1")
    decoded = step_map >= 0
    rounds = torch.full_like(step_map, -1)
    span = int(step_map.max().clamp_min(0)) + 1
    for b in range(step_map.shape[0]):
        if not decoded[b].any():
            continue
        # Block-major keys: unique() sorts them, so each block's steps are consecutive ranks.
        key = step_map[b] if block is None else block[b] * span + step_map[b]
        distinct, rank = torch.unique(key[decoded[b]], return_inverse=True)
        if block is not None:
            # A block's first rank is where its smallest possible key would sort.
            rank = rank - torch.searchsorted(distinct, block[b][decoded[b]] * span)
        rounds[b, decoded[b]] = rank // shrink
    return rounds


def completion_blocks(model: DiffusionLM, batch: PolicyBatch) -> Tensor | None:
    """Block index [B, Lc] of each completion position on block-causal models, else None."""
    if model.facts.attention != "block_causal":
        return None
    assert model.facts.block_size is not None
    return positions_from_mask(batch.key_mask)[:, batch.prompt_ids.shape[1] :] // model.facts.block_size


def round_rows(batch: PolicyBatch, rounds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sample [R], masked [R, Lc], targets [R, Lc]): one row per round of each sample that has a
    target in its completion. Tokens never decoded are M in every row unless fixed (hints stay)."""
    targets_all = (rounds >= 0) & batch.completion_mask
    count = torch.where(targets_all, rounds + 1, torch.zeros_like(rounds)).amax(1)
    samples = torch.arange(len(batch), device=rounds.device).repeat_interleave(count)
    r = torch.cat([torch.arange(int(n), device=rounds.device) for n in count]) if samples.numel() else samples
    row_rounds = rounds[samples]
    never = (row_rounds < 0) & ~batch.fixed_mask[samples]
    masked = (row_rounds >= r[:, None]) | never
    targets = (row_rounds == r[:, None]) & batch.completion_mask[samples]
    keep = targets.any(1)
    return samples[keep], masked[keep], targets[keep]


def round_shares(rounds: Tensor, targets: Tensor) -> Tensor:
    """Per-token shares [B, Lc] that average each round's tokens, then a sample's rounds:
    1 / (R_b n_{b,r}) for a target of round r (n tokens, R_b rounds with targets), 0 elsewhere;
    each sample's shares sum to 1 (CJ-GRPO's per-step mean, then mean over steps)."""
    shares = torch.zeros(rounds.shape, dtype=torch.float32, device=rounds.device)
    for b in range(rounds.shape[0]):
        r = rounds[b][targets[b]]
        if r.numel() == 0:
            continue
        distinct, inverse, counts = torch.unique(r, return_inverse=True, return_counts=True)
        shares[b, targets[b]] = 1.0 / (distinct.numel() * counts[inverse].float())
    return shares


def replayable(cfg: RolloutConfig) -> RolloutConfig:
    """The rollout settings unchanged, if the step map records every token's canvas: decoders that
    rewrite committed tokens (running-confidence remasking, LLaDA2.1 edits) do not leave it."""
    if cfg.running_confidence:
        raise ValueError("rollout.running_confidence masks committed tokens again, which the decode-trace replay cannot rebuild; set rollout.running_confidence=false")
    if cfg.editing_threshold is not None:
        raise ValueError("rollout.editing_threshold rewrites committed tokens, which the decode-trace replay cannot rebuild; set rollout.editing_threshold=null")
    return cfg


@dataclass
class TraceReplay:
    """log pi of each decoded token given the canvas it was committed from:
    l_i = log p(y^i | q, y^{round < r_i}, M elsewhere), one noisy row per round, ``rows_per_forward``
    rows per forward. With ``step_shares`` the logp carries a second channel, the per-token shares
    of :func:`round_shares`."""

    shrink: int = 1
    rows_per_forward: int = 64
    step_shares: bool = False

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> TokenScores:
        rounds = decode_rounds(batch.step_map, self.shrink, completion_blocks(model, batch))
        samples, masked, targets = round_rows(batch, rounds)
        scored = (rounds >= 0) & batch.completion_mask
        if samples.numel() == 0:
            zeros = torch.zeros(scored.shape, device=scored.device, requires_grad=torch.is_grad_enabled())
            logp, entropy = zeros, zeros.detach()
        else:
            logp, entropy = score_disjoint_rows(model, batch, samples, masked, targets, self.rows_per_forward)
        if self.step_shares:
            logp = torch.stack((logp, round_shares(rounds, scored).to(logp.dtype)), dim=-1)
        return TokenScores(logp=logp, mask=scored, entropy=entropy)
