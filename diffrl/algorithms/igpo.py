"""IGPO (Inpainting-Guided Policy Optimization, arXiv 2509.10396; facebookresearch/igpo trainer_igpo.py,
utils/generate.py).

Rollout repair: when every sample of a group is wrong, the group is generated again with chunks of
the ground-truth reasoning inpainted (fixed tokens, never remasked), each slot revealing a
fraction ~ U[ratio_low, ratio_high] (sorted over the slots) of the trace's chunks; up to
max_replacements correct inpainted samples replace the first slots of the group, and rewards are
computed again on the mixed group. Groups with any correct sample are left untouched.
Estimator: d1's (all completion tokens masked, prompt clean); hint tokens are scored like
generated ones, and inpainted samples are treated as on-policy.
Token filter: of the hint tokens only the top entropy_clipping_ratio fraction (at least one) by
entropy under the policy before the update trains; every generated token trains.
Advantage: A_i = r_i - mean(r_group). Loss: with use_gspo one ratio per sequence,
exp(mean_t (l_t - l_old,t)) (GSPO), clipped with (epsilon, epsilon_high), plus beta * k3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from diffrl.algorithms.advantages import Outcome, reward_advantages
from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import OneStepMeanField, TokenScores
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, Needs, RolloutContext, register_algorithm
from diffrl.rollout.selection import ranks
from diffrl.rollout.trajectory import Rollout


@dataclass
class IGPOKnobs:
    # Trace chunk sizes are drawn from U{min_chunk_size .. max_chunk_size}; a shorter tail is dropped.
    min_chunk_size: int = 5
    max_chunk_size: int = 10
    # Each gap between placed hint chunks is at most this many tokens.
    max_spacing: int = 100
    # Fraction of chunks revealed per slot ~ U[inpaint_ratio_low, inpaint_ratio_high].
    inpaint_ratio_low: float = 0.2
    inpaint_ratio_high: float = 0.6
    # Correct inpainted samples that may replace slots of a failed group.
    max_replacements: int = 4
    # Fraction (at least one token) of the hint tokens kept in the loss, highest entropy first.
    entropy_clipping_ratio: float = 0.2
    # The last free_tail completion positions never hold hints, so the model writes the answer.
    free_tail: int = 30
    # One sequence-level ratio (GSPO) instead of per-token ratios.
    use_gspo: bool = True


@dataclass
class IGPOConfig(AlgorithmConfig):
    name: str = "igpo"
    igpo: IGPOKnobs = field(default_factory=IGPOKnobs)


def hint_tokens(trace: list[int], length: int, ratio: float, knobs: IGPOKnobs, gen: torch.Generator) -> Tensor:
    """Fixed tokens [length] (-1 = free) revealing chunks of ``trace``.

    The trace is cut into consecutive chunks; int(n x (1 - ratio)) random chunks are hidden, the
    last one never; the revealed ones keep their order and offsets stretched by
    clamp(room / len(trace), 1, 1.5) (each gap at most max_spacing) within the first
    length - free_tail positions.
    """
    chunks: list[tuple[int, list[int]]] = []
    start = 0
    while start < len(trace):
        size = int(torch.randint(knobs.min_chunk_size, knobs.max_chunk_size + 1, (1,), generator=gen))
        piece = trace[start : start + size]
        if len(piece) < knobs.min_chunk_size:
            break
        chunks.append((start, piece))
        start += size
    out = torch.full((length,), -1, dtype=torch.long)
    if not chunks:
        return out
    hidden_count = min(int(len(chunks) * (1 - ratio)), len(chunks) - 1)
    hidden = set(torch.randperm(len(chunks) - 1, generator=gen)[:hidden_count].tolist())
    room = length - knobs.free_tail
    stretch = min(max(room / len(trace), 1.0), 1.5)
    placed_end, source_end = 0, 0
    for i, (offset, piece) in enumerate(chunks):
        if i in hidden:
            continue
        at = placed_end + min(int((offset - source_end) * stretch), knobs.max_spacing)
        if at + len(piece) > room:
            break
        out[at : at + len(piece)] = torch.tensor(piece)
        placed_end, source_end = at + len(piece), offset + len(piece)
    return out


def group_key(rollout: Rollout, group: int, group_size: int) -> int:
    """A group's draws are keyed by its first sample id (global), not its index on this rank, so a
    group gets the same hints whichever rank holds it."""
    return int(rollout.sample_ids[group * group_size])


def inpaint_failed_groups(rollout: Rollout, outcome: Outcome, ctx: RolloutContext, knobs: IGPOKnobs) -> tuple[Rollout, Tensor]:
    """Regenerate every all-wrong group with hints; up to max_replacements correct inpainted
    samples overwrite the group's first slots. Returns the rollout and the replaced rows."""
    g = outcome.group_size
    failed = (~outcome.correct.view(-1, g).any(1)).nonzero().squeeze(1).tolist()
    device = rollout.completion_ids.device
    if not failed:
        return rollout, torch.zeros(0, dtype=torch.long, device=device)
    length = rollout.completion_ids.shape[1]
    rows, hints = [], []
    for group in failed:
        gen = torch.Generator().manual_seed(ctx.seed + group_key(rollout, group, g))
        trace = ctx.tokenize(ctx.reference_text(group * g))
        ratios = (knobs.inpaint_ratio_low + (knobs.inpaint_ratio_high - knobs.inpaint_ratio_low) * torch.rand(g, generator=gen)).sort().values
        hints += [hint_tokens(trace, length, float(r), knobs, gen) for r in ratios]
        rows += range(group * g, (group + 1) * g)
    index = torch.tensor(rows, device=device)
    new = ctx.regenerate(index, torch.stack(hints).to(device))
    correct = ctx.correct(new, index).view(len(failed), g)
    source, dest = [], []
    for i, group in enumerate(failed):
        gen = torch.Generator().manual_seed(ctx.seed + group_key(rollout, group, g))
        wins = correct[i].nonzero().squeeze(1)
        chosen = wins[torch.randperm(wins.numel(), generator=gen)[: knobs.max_replacements].to(wins.device)]
        source += (i * g + chosen).tolist()
        dest += range(group * g, group * g + chosen.numel())
    src, dst = torch.tensor(source, dtype=torch.long, device=device), torch.tensor(dest, dtype=torch.long, device=device)
    return rollout.replace_rows(dst, new, src), dst


def entropy_filter(scores: TokenScores, batch: PolicyBatch, ratio: float) -> Tensor:
    """Tokens that train [B, Lc]: every generated one, and of each row's hint tokens the
    max(1, floor(ratio x n)) with the highest entropy."""
    hints = batch.fixed_mask & scores.mask
    n = hints.sum(1, keepdim=True)
    quota = torch.where(n > 0, (ratio * n).floor().clamp_min(1), torch.zeros_like(n))
    rank = ranks(torch.where(hints, scores.entropy.double(), float("-inf")))
    return (scores.mask & ~hints) | (hints & (rank < quota))


@register_algorithm("igpo", IGPOConfig)
def build(cfg: IGPOConfig) -> Algorithm:
    knobs = cfg.igpo
    if not 0 <= knobs.inpaint_ratio_low <= knobs.inpaint_ratio_high <= 1:
        raise ValueError("algorithm.igpo.inpaint_ratio_low <= inpaint_ratio_high must both lie in [0, 1]")
    if not 0 < knobs.min_chunk_size <= knobs.max_chunk_size:
        raise ValueError("algorithm.igpo needs 0 < min_chunk_size <= max_chunk_size")
    return Algorithm(
        config=cfg,
        # log pi(y|q) ~= sum_i log p(y^i | q, M...M) (d1_masking: the prompt stays clean)
        estimator=OneStepMeanField(p_mask_prompt=0.0),
        # A_i = r_i - mean_j r_j over the (repaired) group
        advantage=reward_advantages("group_mean", cfg.scale_rewards),
        # -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) + beta k3, rho per sequence with use_gspo
        loss=cfg.clipped_loss(ratio_level="sequence" if knobs.use_gspo else "token"),
        repair=partial(inpaint_failed_groups, knobs=knobs),
        token_filter=partial(entropy_filter, ratio=knobs.entropy_clipping_ratio),
        # Inpaints failed (all-wrong) groups with the row's reference answer.
        needs=Needs(correctness=True, reference_answer=True),
    )
