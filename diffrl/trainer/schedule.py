"""The update schedule of one rollout: epochs over mini-batches, one optimizer step each (verl's
``ppo_epochs`` x ``ppo_mini_batch_size``; TRL's ``num_iterations`` is the epoch count).

Mini-batches are sets of whole prompt groups. Global prompt p goes to mini-batch
p mod n_mini, which on a rank holding a contiguous share of the prompts is its local prompt index
mod n_mini, so N ranks split the global batch into the same mini-batches as one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffrl.errors import DiffrlConfigError

if TYPE_CHECKING:
    from diffrl.trainer.config import Config


def update_epochs(cfg: Config) -> int:
    """Passes over the rollout: ``trainer.ppo_epochs`` (verl's name) or, unset, TRL's
    ``algorithm.num_iterations``; each pass draws its own estimator masks."""
    return cfg.trainer.ppo_epochs if cfg.trainer.ppo_epochs is not None else cfg.algorithm.num_iterations


def num_mini_batches(batch_size: int, mini_batch_size: int | None, world_size: int, field: str = "trainer.ppo_mini_batch_size") -> int:
    """How many optimizer steps one epoch over the rollout takes (``mini_batch_size``: prompts
    over all ranks per step; None = the whole batch). ``field`` names the setting in errors."""
    if mini_batch_size is None or mini_batch_size >= batch_size:
        return 1
    n = batch_size // mini_batch_size
    if mini_batch_size <= 0 or batch_size % mini_batch_size or (batch_size // world_size) % n:
        raise DiffrlConfigError(
            f"{field}={mini_batch_size} must divide trainer.batch_size={batch_size}, and the number of such "
            f"sets must divide each rank's {batch_size // world_size} prompts ({world_size} rank(s)); choose such a size, "
            "or null for one step on the whole batch"
        )
    return n


def mini_batch_rows(num_rows: int, group_size: int, n_mini: int, device: torch.device) -> list[Tensor]:
    """This rank's row indices of each mini-batch: the groups of local prompts i with i mod n_mini = j."""
    prompt = torch.arange(num_rows, device=device) // group_size
    return [(prompt % n_mini == j).nonzero().squeeze(1) for j in range(n_mini)]
