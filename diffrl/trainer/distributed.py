"""Process-group setup under torchrun, and the collectives the trainer needs.

The row gathers and sums live in :mod:`diffrl.collectives` (the rollout's ``gather`` uses them too)
and are imported here for the trainer's callers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from diffrl.collectives import all_gather_rows, all_reduce_sum, all_reduce_sums

__all__ = [
    "World", "all_gather_rows", "all_reduce_sum", "all_reduce_sums", "barrier", "init_distributed", "shutdown", "sync_gradients",
]


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> World:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on GPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
        return World(dist.get_rank(), dist.get_world_size(), local_rank, dev)
    return World(0, 1, 0, torch.device("cuda" if use_cuda else "cpu"))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sync_gradients(model: nn.Module) -> None:
    """Sum gradients over ranks (losses are already normalised by global counts)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
