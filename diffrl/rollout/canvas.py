"""The canvas a rollout denoises and where each row's blocks lie on it.

Layout: ``[left-padded prompt | completion | slack]``. Every row's completion starts at column
``P`` (the padded prompt width). Positions count real tokens only (``cumsum - 1``), so a padded row
sees exactly what it would alone. Bidirectional models decode blocks of ``block_length`` on a grid
that starts at the completion (LLaDA, Dream). Block-causal models decode the blocks of their own
attention grid, which starts at each row's first real token (SDAR, LLaDA2): the first block holds
the prompt's tail, and the last may reach past the completion into slack columns that are never
real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffrl.models.base import ModelFacts
from diffrl.models.masks import positions_from_mask
from diffrl.rollout.config import RolloutConfig


@dataclass
class Canvas:
    """Token ids, key padding mask and position ids of every row [B, W], plus the fixed tokens."""

    tokens: Tensor
    key_mask: Tensor
    positions: Tensor
    fixed: Tensor
    prompt_width: int
    completion_length: int

    @classmethod
    def start(cls, prompt_ids: Tensor, prompt_mask: Tensor, width: int, cfg: RolloutConfig, facts: ModelFacts, fixed_tokens: Tensor | None) -> "Canvas":
        """Prompts followed by masks (and fixed tokens), then pad columns up to ``width``."""
        bsz, plen = prompt_ids.shape
        glen, device = cfg.max_completion_length, prompt_ids.device
        completion = torch.full((bsz, glen), facts.mask_token_id, dtype=torch.long, device=device)
        fixed = torch.zeros(bsz, glen, dtype=torch.bool, device=device)
        if fixed_tokens is not None:
            fixed = fixed_tokens >= 0
            completion = torch.where(fixed, fixed_tokens, completion)
        slack = width - plen - glen
        tokens = torch.cat((prompt_ids, completion, torch.full((bsz, slack), facts.pad_token_id, device=device)), dim=1)
        real = torch.ones(bsz, glen, dtype=torch.bool, device=device)
        key_mask = torch.cat((prompt_mask.bool(), real, torch.zeros(bsz, slack, dtype=torch.bool, device=device)), dim=1)
        return cls(tokens, key_mask, positions_from_mask(key_mask), fixed, plen, glen)

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    @property
    def completion(self) -> Tensor:
        """The completion columns [B, G] (a view)."""
        return self.tokens[:, self.prompt_width : self.prompt_width + self.completion_length]


@dataclass
class BlockGrid:
    """Column of each row's block in each round: ``start[b] + round * block``."""

    start: Tensor
    block: int
    rounds: int
    canvas_width: int

    @classmethod
    def build(cls, prompt_mask: Tensor, cfg: RolloutConfig, facts: ModelFacts) -> "BlockGrid":
        plen, glen, blen = prompt_mask.shape[1], cfg.max_completion_length, cfg.block_length
        if facts.attention == "block_causal":
            if blen != facts.block_size:
                raise ValueError(
                    f"rollout.block_length={blen} must equal model.block_size={facts.block_size}: a block-causal model "
                    "decodes the blocks its attention was trained on; set rollout.block_length to the model's block size"
                )
            offset = prompt_mask.long().sum(1) % blen  # the prompt tail that shares the first block
        else:
            offset = torch.zeros(prompt_mask.shape[0], dtype=torch.long, device=prompt_mask.device)
        rounds = int(((offset + glen + blen - 1) // blen).max())
        start = plen - offset
        width = max(plen + glen, int(start.max()) + rounds * blen)
        return cls(start, blen, rounds, width)

    def columns(self, rnd: int) -> Tensor:
        """Canvas columns [B, block] of every row's block in round ``rnd``."""
        lo = self.start + rnd * self.block
        return lo[:, None] + torch.arange(self.block, device=lo.device)
