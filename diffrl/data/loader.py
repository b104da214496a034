"""An endless, resumable, rank-aware stream of prompt batches over a list of rows."""

from __future__ import annotations

from typing import Any

import torch

from diffrl.errors import DiffrlConfigError


class PromptLoader:
    """Shuffles once per epoch from ``seed``; each rank takes its share of every global batch.

    ``state_dict`` holds (epoch, position), which is all that exact resume needs.
    """

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise DiffrlConfigError(f"trainer.batch_size={batch_size} prompts must divide evenly over {world_size} ranks")
        if len(rows) < batch_size:
            raise DiffrlConfigError(f"the dataset has {len(rows)} rows, fewer than trainer.batch_size={batch_size}")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.rows), generator=gen).tolist()

    def next_batch(self) -> list[dict[str, Any]]:
        """This rank's rows of the next global batch (an epoch's incomplete tail is dropped)."""
        if self.position + self.batch_size > len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        per_rank = self.batch_size // self.world_size
        return [self.rows[i] for i in idx[self.rank * per_rank : (self.rank + 1) * per_rank]]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
