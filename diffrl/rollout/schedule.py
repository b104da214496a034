"""How many masked tokens each denoising step commits."""

from __future__ import annotations

import torch
from torch import Tensor


def transfer_counts(num_masked: Tensor, steps: int) -> Tensor:
    """LLaDA's linear schedule [B, steps]: each step commits ``m // steps`` tokens and the first
    ``m % steps`` steps one more, so a block with ``m`` masks is finished after ``steps`` steps."""
    base = (num_masked // steps)[:, None].expand(-1, steps)
    extra = torch.arange(steps, device=num_masked.device)[None, :] < (num_masked % steps)[:, None]
    return base + extra.long()
