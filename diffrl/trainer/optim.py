"""AdamW and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from diffrl.errors import DiffrlConfigError
from diffrl.trainer.config import OptimConfig

SCHEDULES = ("constant", "cosine", "linear")


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Linear warmup, then constant, cosine or linear decay to ``min_lr_ratio``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)
    raise DiffrlConfigError(f"optim.lr_schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int, lr: float | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over trainable parameters (norms and biases without weight decay) and its scheduler."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr or cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    lam = lambda step: lr_multiplier(step, warmup_steps=cfg.warmup_steps, total_steps=total_steps, schedule=cfg.lr_schedule, min_lr_ratio=cfg.min_lr_ratio)  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lam)


def restart(optimizer: torch.optim.Optimizer | None, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """A fresh optimizer state and the schedule back at its first step (``optim.reset_each_step``:
    LightningRL launches a new trainer, so a new AdamW and warmup, for every rollout)."""
    if optimizer is not None:
        optimizer.state.clear()
    scheduler.last_epoch = 0
    lrs = [base * multiplier(0) for base, multiplier in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr reports
