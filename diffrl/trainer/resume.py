"""Deciding whether a run starts fresh or resumes, before anything is built (:func:`plan_resume`).

``trainer.resume=auto`` resumes the latest complete checkpoint in ``trainer.output_dir`` only when
the config saved there (``resolved_config.json``, written at every start) agrees with this one in
everything that changes the math: every setting except :data:`FREE_KEYS` (logging, output and
step-count settings). Otherwise it refuses, naming the differing keys and the two ways on.
``trainer.resume=force`` resumes whatever differs, ``never`` starts fresh (and refuses a folder that
holds another run's checkpoints), and a checkpoint path resumes that checkpoint. A run whose
checkpoint already reached ``trainer.total_steps`` is finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from diffrl.errors import DiffrlConfigError
from diffrl.trainer.checkpoint import PREFIX, complete_checkpoints, latest_checkpoint
from diffrl.trainer.config import Config

SAVED_CONFIG = "resolved_config.json"
# Settings that may change between a run and its resume: where and how often it logs and saves,
# how long it runs, validation. Every other setting changes what is trained, so it must match.
FREE_KEYS = (
    "trainer.output_dir",
    "trainer.resume",
    "trainer.total_steps",
    "trainer.save_every",
    "trainer.keep_last_n",
    "trainer.progress_bar",
    "trainer.log_samples_every",
    "trainer.log_samples_count",
    "trainer.plot",
    "trainer.val_every",
    "trainer.val_size",
    "trainer.wandb",
)


@dataclass(frozen=True)
class ResumePlan:
    """Where a run starts: ``checkpoint`` (None = fresh) at ``step``; ``finished`` when that
    checkpoint already reached ``total_steps``; ``differs`` lists the keys a forced resume changed."""

    checkpoint: Path | None
    step: int
    total_steps: int
    finished: bool = False
    differs: tuple[str, ...] = ()

    def describe(self) -> str:
        """The console line announcing it (``resuming from step N of M``)."""
        if self.checkpoint is None:
            return f"starting fresh: step 0 of {self.total_steps}"
        forced = f" (forced; changed: {', '.join(self.differs)})" if self.differs else ""
        return f"resuming from step {self.step} of {self.total_steps} ({self.checkpoint}){forced}"


def config_dict(cfg: Config) -> dict[str, Any]:
    """The typed config as plain JSON-able data (defaults filled in, whatever the composition)."""
    return json.loads(json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg)), default=str))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def math_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys outside :data:`FREE_KEYS` whose values differ (or exist on one side only)."""
    a, b = flatten(saved), flatten(current)
    free_prefixes = tuple(f"{key}." for key in FREE_KEYS)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>") and k not in FREE_KEYS and not k.startswith(free_prefixes))


def checkpoint_step(path: Path) -> int:
    """The step a ``step_NNNNNN`` checkpoint folder was written after."""
    try:
        return int(path.name.removeprefix(PREFIX))
    except ValueError:
        raise DiffrlConfigError(f"trainer.resume={path} is not a checkpoints/{PREFIX}N folder; point it at one, or use trainer.resume=auto") from None


def plan_resume(cfg: Config) -> ResumePlan:
    """Where this run starts; raises :class:`DiffrlConfigError` when ``auto`` finds a checkpoint
    of a different config (naming the keys) or the saved config is missing."""
    run_dir, total, mode = Path(cfg.trainer.output_dir), cfg.trainer.total_steps, cfg.trainer.resume
    if mode == "never":
        earlier = complete_checkpoints(run_dir / "checkpoints")
        if earlier:
            # Starting over beside them would mix two runs' checkpoints: the next auto resume (or
            # keep_last_n) would pick by step number, whichever run wrote it.
            raise DiffrlConfigError(
                f"trainer.resume=never: {run_dir} already holds checkpoints of a run (newest {earlier[-1].name}); "
                f"start the new run in a new trainer.output_dir, delete {run_dir / 'checkpoints'} to start over in this one, "
                "or continue that run with trainer.resume=auto"
            )
        return ResumePlan(None, 0, total)
    if mode not in ("auto", "force"):
        path = Path(mode)
        step = checkpoint_step(path)
        return ResumePlan(path, step, total, finished=step >= total)
    path = latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        return ResumePlan(None, 0, total)
    saved_file = run_dir / SAVED_CONFIG
    if not saved_file.exists():
        if mode == "force":
            return ResumePlan(path, checkpoint_step(path), total, finished=checkpoint_step(path) >= total, differs=("<no saved config>",))
        raise DiffrlConfigError(
            f"{run_dir} holds checkpoint {path.name} but no {SAVED_CONFIG} to check this config against; "
            "start over with trainer.resume=never and a new trainer.output_dir, or resume anyway with trainer.resume=force"
        )
    differs = math_differences(json.loads(saved_file.read_text()), config_dict(cfg))
    if differs and mode == "auto":
        shown = ", ".join(differs[:8]) + (f" (+{len(differs) - 8} more)" if len(differs) > 8 else "")
        raise DiffrlConfigError(
            f"trainer.resume=auto: {run_dir} holds a run at {path.name} whose config differs in {shown}; "
            "start a new run with trainer.resume=never and a new trainer.output_dir, or resume it with these changes with trainer.resume=force"
        )
    step = checkpoint_step(path)
    return ResumePlan(path, step, total, finished=step >= total, differs=tuple(differs))


def save_config(cfg: Config) -> None:
    """Record the config this start runs with, for the next start's check (rank 0 only)."""
    (Path(cfg.trainer.output_dir) / SAVED_CONFIG).write_text(json.dumps(config_dict(cfg), indent=2) + "\n")


def finished_summary(plan: ResumePlan, run_dir: Path, is_main: bool) -> dict[str, Any] | None:
    """The saved summary of a run that already reached ``trainer.total_steps`` (said on rank 0),
    or None when there is work to do."""
    summary_file = run_dir / "summary.json"
    if not (plan.finished and summary_file.exists()):
        return None
    if is_main:
        print(
            f"{run_dir} already finished: step {plan.step} of {plan.total_steps} ({plan.checkpoint}); nothing to do. "
            "Raise trainer.total_steps to train further, or use a new trainer.output_dir",
            flush=True,
        )
    return json.loads(summary_file.read_text())
