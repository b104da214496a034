"""Process-group setup under torchrun, and the few collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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


def all_reduce_sum(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value summed over ranks, in one collective."""
    if not values:
        return {}
    total = all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64), device)
    return dict(zip(values, total.tolist()))


def all_gather_rows(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0, rank order (same shape on every rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    # gloo gathers no bool tensors; bytes carry them.
    send = (t.to(torch.uint8) if t.dtype == torch.bool else t).to(device).contiguous()
    parts = [torch.empty_like(send) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, send)
    out = torch.cat(parts)
    return out.bool() if t.dtype == torch.bool else out


def all_gather_varying(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0, rank order, when ranks hold different numbers
    of rows (padded to the longest for the collective, then trimmed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    counts = all_gather_rows(torch.tensor([t.shape[0]], device=device), device).tolist()
    if max(counts) == 0:
        return t.to(device)
    padded = torch.cat((t.to(device), t.new_zeros((max(counts) - t.shape[0], *t.shape[1:])).to(device)))
    parts = all_gather_rows(padded, device).split(max(counts))
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def current_rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


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
