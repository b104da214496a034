"""Training checkpoints: model + optimizer through torch.distributed.checkpoint, plus the trainer
state (step, scheduler, data position, every rank's RNG) - written atomically.

A checkpoint is written into a hidden temporary folder and renamed to ``step_NNNNNN`` only once
every file is on disk, so a crash mid-save never leaves a folder that looks complete.
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

PREFIX = "step_"
COMPLETE = "COMPLETE"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _quiet_dcp(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # Without a process group DCP warns that it assumes one process, which is exactly our case.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(*args, **kwargs)


def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any]) -> Path:
    """Write ``root/step_{step}``; every rank calls this (collective under a process group)."""
    root = Path(root)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    _quiet_dcp(dcp.save, {"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / f"trainer_state_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        (tmp / COMPLETE).write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    _barrier()
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, if any."""
    root = Path(root)
    if not root.exists():
        return None
    done = [p for p in root.glob(f"{PREFIX}*") if (p / COMPLETE).exists()]
    return max(done, key=lambda p: int(p.name.removeprefix(PREFIX)), default=None)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place; return this rank's trainer state (RNG restored)."""
    path = Path(path)
    if not (path / COMPLETE).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    _quiet_dcp(dcp.load, state, checkpoint_id=str(path / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer_state = torch.load(path / f"trainer_state_rank{_rank()}.pt", weights_only=False)
    set_rng_state(trainer_state.pop("rng"))
    return trainer_state
