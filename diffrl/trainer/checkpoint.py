"""Training checkpoints: model + optimizer, plus the trainer state (step, scheduler, data position,
every rank's RNG) - written atomically.

Model and optimizer go through ``torch.distributed.checkpoint`` (each rank writes its own shards
under FSDP2) or, under DeepSpeed, through the engine's own ZeRO checkpoint. Only trainable weights
are saved (a LoRA checkpoint holds the adapters, not the frozen base). A checkpoint is written into
a hidden temporary folder and renamed to ``step_NNNNNN`` by rank 0 only after every rank has
finished writing, so a crash mid-save never leaves a folder that looks complete. Ranks on several
nodes must share the output folder's file system.

A save that fails (a full disk on any rank) removes its temporary folder and leaves every complete
checkpoint as it was; a full disk is reported with the space a checkpoint needs. ``keep_last_n``
deletes the oldest complete checkpoints once a new one is in place. :func:`latest_checkpoint`
checks each candidate's files (readable trainer states and metadata, shards as long as the metadata
says) and falls back to the previous complete checkpoint, naming the one it skipped and why.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from diffrl.errors import DiffrlConfigError
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


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank calls this)."""
    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


class CheckpointLoadError(DiffrlConfigError):
    """A checkpoint folder whose files cannot be read back; the message names the folder."""


class CheckpointSpaceError(DiffrlConfigError):
    """The disk filled up while a checkpoint was written."""


def _quiet_dcp(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # Without a process group DCP warns that it assumes one process, which is exactly our case.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(*args, **kwargs)


def save_checkpoint(
    root: str | Path, step: int, strategy: Strategy, trainer_state: dict[str, Any], meta: dict[str, Any], *, keep_last_n: int = 0
) -> Path:
    """Write ``root/step_{step}``; every rank calls this (collective under a process group).

    ``meta`` (rank 0, JSON) says how to rebuild the model: its folder, strategy and LoRA settings.
    ``keep_last_n`` > 0 then deletes all but the newest ``keep_last_n`` complete checkpoints. If
    writing fails on any rank, the temporary folder is removed on every path out, so the complete
    checkpoints are all that remain; a full disk raises :class:`CheckpointSpaceError`.
    """
    root = Path(root)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    failure: BaseException | None = None
    need = 0
    try:
        if strategy.engine is not None:
            need = _estimated_bytes(strategy)
            strategy.engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=True)
        else:
            model_sd, optim_sd = get_state_dict(strategy.root, strategy.optimizer, options=_TRAINABLE)  # type: ignore[arg-type]
            need = _tensor_bytes((model_sd, optim_sd))
            _quiet_dcp(dcp.save, {"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
        torch.save({**trainer_state, "step": step, "world_size": _world_size(), "rng": rng_state()}, tmp / f"trainer_state_rank{_rank()}.pt")
        if _rank() == 0:
            (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
        failure = err
    if _any_rank(failure is not None):
        # Every rank learns whether some rank's disk filled up, so all report the same error.
        full = _any_rank(failure is not None and _disk_full(failure))
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        if full:
            raise CheckpointSpaceError(_space_message(root, final, need)) from failure
        raise failure or RuntimeError(f"another rank failed to write checkpoint {final}; see its output")
    if _rank() == 0:
        (tmp / COMPLETE).write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if keep_last_n > 0:
            for old in complete_checkpoints(root)[:-keep_last_n]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps: a cause, DCP's per-rank failures) is a full disk or quota."""
    seen: list[BaseException] = [err]
    while seen:
        e = seen.pop()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, CheckpointException):
            seen.extend(exc for exc, _ in e.failures.values() if isinstance(exc, BaseException))
        seen.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return "No space left on device" in str(err)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested state dict (a DTensor counts its full size)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _estimated_bytes(strategy: Strategy) -> int:
    """A DeepSpeed checkpoint's size: trainable weights, plus fp32 master weights and Adam's two
    fp32 moments."""
    return sum(p.numel() * (p.element_size() + 12) for p in strategy.root.parameters() if p.requires_grad)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def _space_message(root: Path, final: Path, need: int) -> str:
    done = complete_checkpoints(root)
    # The last complete checkpoint measures what one takes on disk; the tensors estimate it otherwise.
    need = _folder_bytes(done[-1]) if done else need
    kept = f"the last complete checkpoint, {done[-1]}, is intact" if done else "no complete checkpoint exists yet"
    return (
        f"disk full while writing checkpoint {final.name} under {root}: a checkpoint needs about {_human(need)} and "
        f"{_human(shutil.disk_usage(root).free)} is free; {kept}.\nFree space, point trainer.output_dir at a larger disk, "
        "or set trainer.keep_last_n to keep fewer checkpoints"
    )


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Every complete checkpoint under ``root``, oldest first."""
    root = Path(root)
    if not root.exists():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if (p / COMPLETE).exists()]
    return sorted(done, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` whose files pass :func:`verify_checkpoint`.

    A checkpoint that fails is named on stderr (rank 0) with the reason, and the previous one is
    tried; every rank reads the same files, so every rank picks the same checkpoint.
    """
    for path in reversed(complete_checkpoints(root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointLoadError as err:
            if _rank() == 0:
                print(f"warning: {err}; falling back to the previous complete checkpoint", file=sys.stderr, flush=True)
    return None


def verify_checkpoint(path: str | Path) -> None:
    """Check a complete checkpoint's files without loading its tensors: every trainer state and
    torch file is a whole zip archive, the DCP metadata unpickles, and each shard file is as long
    as the metadata says. Raises :class:`CheckpointLoadError` naming the file."""
    path = Path(path)
    for pt in sorted(path.rglob("*.pt")):
        try:
            with zipfile.ZipFile(pt):
                pass
        except (zipfile.BadZipFile, OSError) as err:
            raise CheckpointLoadError(f"checkpoint {path} cannot be loaded: {pt.name} is damaged ({err})") from None
    if not (path / "dcp").is_dir():
        return
    try:
        metadata = dcp.FileSystemReader(str(path / "dcp")).read_metadata()
        ends: dict[str, int] = {}
        for info in metadata.storage_data.values():
            ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    except Exception as err:  # unpickling garbage can raise almost anything
        raise CheckpointLoadError(f"checkpoint {path} cannot be loaded: dcp/.metadata is unreadable ({type(err).__name__}: {err})") from None
    for name, end in ends.items():
        shard = path / "dcp" / name
        size = shard.stat().st_size if shard.exists() else -1
        if size < end:
            found = "missing" if size < 0 else f"{size} bytes, {end} expected"
            raise CheckpointLoadError(f"checkpoint {path} cannot be loaded: shard dcp/{name} is truncated ({found})")


def load_checkpoint(path: str | Path, strategy: Strategy) -> dict[str, Any]:
    """Restore model and optimizer in place; return this rank's trainer state (RNG restored)."""
    path = Path(path)
    if not (path / COMPLETE).exists():
        raise CheckpointLoadError(f"{path} is not a complete checkpoint (no {COMPLETE} marker); point trainer.resume at a checkpoints/step_N folder, or use trainer.resume=auto")
    state_file = path / f"trainer_state_rank{_rank()}.pt"
    try:
        trainer_state = torch.load(state_file, weights_only=False) if state_file.exists() else {}
    except Exception as err:
        raise CheckpointLoadError(f"checkpoint {path} cannot be loaded: {state_file.name}: {err}; resume from an earlier one with trainer.resume=<its folder>") from None
    if trainer_state.get("world_size") != _world_size():
        raise DiffrlConfigError(
            f"{path} was written by {trainer_state.get('world_size', 'fewer')} ranks and this run has {_world_size()}; "
            "resume with the same number of ranks, or start a new run with trainer.resume=never and a new trainer.output_dir"
        )
    if strategy.engine is not None:
        if not (path / DS_TAG).is_dir():
            raise CheckpointLoadError(f"{path} was not written by trainer.strategy=deepspeed; resume it with the strategy that wrote it")
        strategy.engine.load_checkpoint(str(path), tag=DS_TAG, load_module_strict=False, load_lr_scheduler_states=False)
    else:
        if not (path / "dcp").is_dir():
            raise CheckpointLoadError(f"{path} was written by trainer.strategy=deepspeed; resume it with that strategy")
        try:
            load_model_state(path, strategy.root, strategy.optimizer)
        except (Exception, CheckpointException) as err:
            reason = str(err).splitlines()[0]
            raise CheckpointLoadError(f"checkpoint {path} cannot be loaded: {reason}; resume from an earlier one with trainer.resume=<its folder>") from None
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
