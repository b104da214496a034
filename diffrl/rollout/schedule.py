"""How many masked tokens each denoising step of a block commits (when no threshold rule decides)."""

from __future__ import annotations

import torch
from torch import Tensor


def transfer_counts(num_masked: Tensor, steps: int) -> Tensor:
    """LLaDA's linear schedule [B, steps]: each step commits ``m // steps`` tokens and the first
    ``m % steps`` steps one more, so a block with ``m`` masks is finished after ``steps`` steps."""
    base = (num_masked // steps)[:, None].expand(-1, steps)
    extra = torch.arange(steps, device=num_masked.device)[None, :] < (num_masked % steps)[:, None]
    return base + extra.long()


def proportional_counts(num_masked: Tensor, step: int, steps: int, eps: float) -> Tensor:
    """Dream's count for step ``step`` of ``steps`` [B]: ``int(m * (1 - s/t))`` with
    ``t, s = ts[step], ts[step + 1]`` of ``ts = linspace(1, eps, steps + 1)`` and ``m`` the masks
    left now; the last step takes them all.

    Dream computes this in float32 from the batch's mean mask count; here ``m`` is each row's own
    count, so a sample's schedule does not depend on the rest of the batch (equal for batch 1).
    """
    if step >= steps - 1:
        return num_masked
    ts = torch.linspace(1, eps, steps + 1)
    frac = (1 - ts[step + 1] / ts[step]).to(num_masked.device)
    return (num_masked.to(torch.float32) * frac).long()


class BlockSchedule:
    """Per-step commit counts of one block for every row, by the configured rule."""

    def __init__(self, kind: str, num_masked: Tensor, steps: int, eps: float) -> None:
        self.kind, self.steps, self.eps = kind, steps, eps
        # The linear and ascending schedules fix every step's count when the block starts.
        planned = {"linear": transfer_counts, "ascending": ascending_counts}.get(kind)
        self.planned = planned(num_masked, steps) if planned is not None else None

    def counts(self, step: int, num_masked: Tensor) -> Tensor:
        """Tokens to commit at ``step`` (0-based within the block) given the masks left now [B]."""
        if step >= self.steps:
            return torch.zeros_like(num_masked)
        if self.planned is not None:
            return self.planned[:, step]
        return proportional_counts(num_masked, step, self.steps, self.eps)


def ascending_counts(num_masked: Tensor, steps: int) -> Tensor:
    """CJ-GRPO's Ascending Step-Size schedule [B, steps]: step i commits 2^i tokens and the last
    step all that are left (EOSER-ASS-RL get_num_transfer_tokens_ass); a block with fewer masks
    than the doubling asks for runs out early (its later steps commit 0)."""
    doubling = 2 ** torch.arange(steps, device=num_masked.device)
    done = torch.minimum(doubling.cumsum(0)[None, :], num_masked[:, None])
    done[:, -1] = num_masked
    return torch.diff(done, dim=1, prepend=torch.zeros_like(done[:, :1]))
