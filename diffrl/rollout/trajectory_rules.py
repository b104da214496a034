"""Decoding rules that look across a block's steps rather than at one step's scores:

- EOS Early Rejection (CJ-GRPO, arXiv 2509.23924): the score of a position whose decoded token is
  EOS is multiplied by gamma, rising linearly from ``eos_min_gamma`` to ``eos_max_gamma`` over the
  block's progress, so early steps rarely end the answer.
- Running-confidence remasking (MDPO, arXiv 2508.13148, ``rcr``): every step fills all masked
  positions, then remasks the decoded tokens of the block with the lowest confidence recorded when
  they were written, keeping as many masks as the schedule has left; a token committed early can
  be replaced later.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.rollout.selection import ranks


def block_progress(step: int, steps: int, ascending: bool) -> float:
    """How far a block's decoding is at in-block step ``step`` of ``steps``: the step fraction
    step / (steps - 1) (EOSER), or under the ascending schedule the share of tokens committed once
    the step is done, (2^(step+1) - 1) / 2^steps (EOSER-ASS)."""
    if steps <= 1:
        return 1.0
    if ascending:
        return (2 ** (step + 1) - 1) / 2**steps
    return min(step, steps - 1) / (steps - 1)


def reject_eos(scores: Tensor, tokens: Tensor, eos_id: int, gamma: float) -> Tensor:
    """``scores`` with the candidates whose decoded token is EOS multiplied by ``gamma``."""
    return torch.where(tokens == eos_id, scores * gamma, scores)


def running_confidence_remask(running: Tensor, written: Tensor, keep_masked: Tensor) -> Tensor:
    """Positions [rows, block] to mask again: the ``keep_masked[r]`` written positions of each row
    with the lowest running confidence (ties: the lower position goes first)."""
    lowest_first = ranks(torch.where(written, -running.double(), float("-inf")))
    return written & (lowest_first < keep_masked[:, None])
