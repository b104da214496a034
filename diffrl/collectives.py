"""Collectives over the ranks of a torchrun job, and their one-process fallbacks (identity).

Every function is a no-op without a process group, so the same code runs in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
