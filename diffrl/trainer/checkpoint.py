"""Training checkpoints: model + optimizer, plus the trainer state (step, scheduler, data position,
every rank's RNG) - written atomically.

Model and optimizer go through ``torch.distributed.checkpoint`` (each rank writes its own shards
under FSDP2) or, under DeepSpeed, through the engine's own ZeRO checkpoint. Only trainable weights
are saved (a LoRA checkpoint holds the adapters, not the frozen base). A checkpoint is written into
a hidden temporary folder and renamed to ``step_NNNNNN`` by rank 0 only after every rank has
finished writing, so a crash mid-save never leaves a folder that looks complete. Ranks on several
nodes must share the output folder's file system.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from diffrl.trainer.strategy import Strategy

PREFIX = "step_"
COMPLETE = "COMPLETE"
META = "meta.json"
DS_TAG = "deepspeed"
# Frozen weights (a LoRA run's base) are not saved: they come back from the model folder.
_TRAINABLE = StateDictOptions(ignore_frozen_params=True, strict=False)


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


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _quiet_dcp(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # Without a process group DCP warns that it assumes one process, which is exactly our case.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(*args, **kwargs)


def save_checkpoint(root: str | Path, step: int, strategy: Strategy, trainer_state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``root/step_{step}``; every rank calls this (collective under a process group).

    ``meta`` (rank 0, JSON) says how to rebuild the model: its folder, strategy and LoRA settings.
    """
    root = Path(root)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if strategy.engine is not None:
        strategy.engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=True)
    else:
        model_sd, optim_sd = get_state_dict(strategy.root, strategy.optimizer, options=_TRAINABLE)  # type: ignore[arg-type]
        _quiet_dcp(dcp.save, {"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    torch.save({**trainer_state, "step": step, "world_size": _world_size(), "rng": rng_state()}, tmp / f"trainer_state_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
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


def load_checkpoint(path: str | Path, strategy: Strategy) -> dict[str, Any]:
    """Restore model and optimizer in place; return this rank's trainer state (RNG restored)."""
    path = Path(path)
    if not (path / COMPLETE).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    state_file = path / f"trainer_state_rank{_rank()}.pt"
    trainer_state = torch.load(state_file, weights_only=False) if state_file.exists() else {}
    if trainer_state.get("world_size") != _world_size():
        raise ValueError(
            f"{path} was written by {trainer_state.get('world_size', 'fewer')} ranks and this run has {_world_size()}; "
            "resume with the same number of ranks, or set trainer.resume=never"
        )
    if strategy.engine is not None:
        if not (path / DS_TAG).is_dir():
            raise FileNotFoundError(f"{path} was not written by trainer.strategy=deepspeed; resume it with the strategy that wrote it")
        strategy.engine.load_checkpoint(str(path), tag=DS_TAG, load_module_strict=False, load_lr_scheduler_states=False)
    else:
        if not (path / "dcp").is_dir():
            raise FileNotFoundError(f"{path} was written by trainer.strategy=deepspeed; resume it with that strategy")
        load_model_state(path, strategy.root, strategy.optimizer)
    set_rng_state(trainer_state.pop("rng"))
    return trainer_state


def load_model_state(path: str | Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a DCP checkpoint's trainable weights (and optimizer state) into ``module`` in place,
    whatever the number of ranks that wrote it or reads it (DCP reshards)."""
    optimizers = [optimizer] if optimizer is not None else []
    model_sd, optim_sd = get_state_dict(module, optimizers, options=_TRAINABLE)
    state = {"model": model_sd, **({"optim": optim_sd} if optimizer is not None else {})}
    _quiet_dcp(dcp.load, state, checkpoint_id=str(Path(path) / "dcp"))
    set_state_dict(module, optimizers, model_state_dict=state["model"], optim_state_dict=state.get("optim", {}), options=_TRAINABLE)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's record of how to rebuild its model (see :func:`save_checkpoint`)."""
    return json.loads((Path(path) / META).read_text())
