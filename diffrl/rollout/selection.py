"""The selection rules of a denoising step: a score per masked position, then which ones commit.

All rules work on block-local matrices [rows, block] of scores where ``-inf`` marks a position
that is not a candidate (not masked, outside the completion), so one call serves a whole batch
with different mask counts per row. Ties go to the lower position everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels import DecodeResult

# Scores read on the tempered, filtered sampling distribution (Dream's sample_tokens); the others on
# the model's own distribution (LLaDA).
_SAMPLING_STATS = ("maskgit_plus", "topk_margin", "entropy")


def decode_stats(remasking: str) -> str:
    """The ``stats`` argument of :func:`diffrl.kernels.decode_step` that a score reads."""
    return "sampling" if remasking in _SAMPLING_STATS else "model"


def remasking_scores(remasking: str, decoded: DecodeResult, uniforms: Tensor | None) -> Tensor:
    """Score of each candidate (higher commits first), float64. ``uniforms`` (the keyed draws) are
    read by the random score only."""
    if remasking in ("low_confidence", "maskgit_plus"):
        return decoded.prob.double()
    if remasking == "topk_margin":
        return decoded.margin.double()
    if remasking == "entropy":
        return -decoded.entropy.double()
    if remasking == "random":
        assert uniforms is not None, "the random score needs the keyed uniforms (UnmaskingRule.needs_uniforms)"
        return uniforms
    if remasking == "left_to_right":
        return torch.zeros_like(decoded.logprob, dtype=torch.float64)
    raise ValueError(f"rollout.remasking={remasking!r} is not a known score")


def ranks(scores: Tensor) -> Tensor:
    """0-based rank of every entry in its row, best first; ties go to the lower position."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return rank


def commit_topk(scores: Tensor, k: Tensor) -> Tensor:
    """Commit the ``k[r]`` best-scored candidates of each row."""
    return (ranks(scores) < k[:, None]) & torch.isfinite(scores)


def sample_topk(scores: Tensor, k: Tensor, alg_temp: float, uniforms: Tensor) -> Tensor:
    """Dream's ``multinomial(softmax(score / alg_temp), k)`` without replacement, as Gumbel-top-k:
    adding Gumbel noise to the logits and taking the top k draws exactly that distribution."""
    gumbel = -torch.log(-torch.log(uniforms))
    return commit_topk(scores / alg_temp + gumbel, k)


def threshold_commit(scores: Tensor, threshold: float) -> Tensor:
    """Fast-dLLM: the best candidate always, every other one with score >= threshold."""
    valid = torch.isfinite(scores)
    return valid & ((ranks(scores) == 0) | (scores >= threshold))


def dynamic_commit(scores: Tensor, k: Tensor, threshold: float) -> Tensor:
    """SDAR's low_confidence_dynamic / LLaDA2.0: every candidate with score > threshold when there
    are at least ``k`` of them, else the top ``k``."""
    high = torch.isfinite(scores) & (scores > threshold)
    enough = high.sum(-1) >= k
    return torch.where(enough[:, None], high, commit_topk(scores, k))


def factor_commit(scores: Tensor, factor: float) -> Tensor:
    """dInfer's factor rule: rank n (1-based, n >= 2) passes when its score is >= 1 - factor/(n+1);
    the ranks before the first failure are committed, and all of them when only the last fails
    (as dInfer's ``get_transfer_index_dynamic`` does)."""
    valid = torch.isfinite(scores)
    m = valid.sum(-1)
    rank = ranks(scores)
    sorted_scores = torch.sort(scores, dim=-1, descending=True, stable=True).values
    n = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=scores.dtype)
    passes = (sorted_scores >= 1 - factor / (n + 1)) | (n == 1)
    fails = ~passes & (n[None, :] <= m[:, None])
    first_fail = torch.where(fails.any(-1), fails.float().argmax(-1), m)
    count = torch.where(first_fail == m - 1, m, first_fail)
    return valid & (rank < count[:, None])
