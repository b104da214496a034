"""Which masked positions a denoising step commits: a score per position, then a selection rule."""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels import DecodeResult
from diffrl.rng import STREAM_REMASK, counter_uniform

REMASKING = ("low_confidence", "random")


def remasking_scores(remasking: str, decoded: DecodeResult, keys: Tensor, seed: int) -> Tensor:
    """Score of each candidate (higher commits first): the model's probability of its choice for
    ``low_confidence``, a keyed uniform draw for ``random`` (LLaDA's two remasking rules)."""
    if remasking == "low_confidence":
        return decoded.prob.double()
    if remasking == "random":
        return counter_uniform(STREAM_REMASK, seed, keys)
    raise ValueError(f"rollout.remasking={remasking!r} is not one of {', '.join(REMASKING)}")


def commit_topk(scores: Tensor, k: Tensor) -> Tensor:
    """Commit the ``k[r]`` best-scored positions of each row; ``-inf`` marks non-candidates.

    Ties go to the lower position (a stable sort), so results do not depend on ``topk``'s
    unspecified tie order.
    """
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return (rank < k[:, None]) & torch.isfinite(scores)
