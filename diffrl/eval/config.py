"""The typed schema of an evaluation: the training recipe's model, task and rollout groups plus ``eval``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffrl.errors import DiffrlConfigError
from diffrl.kernels.dispatch import BACKENDS
from diffrl.rollout.config import RolloutConfig
from diffrl.trainer.config import ModelConfig, TaskConfig, check_task, typed


@dataclass
class EvalConfig:
    # Results folder: samples.jsonl, summary.json, plots (and sweep/<setting>/ for a sweep).
    output_dir: str = "evals/default"
    # Samples per prompt (the n of pass@k).
    num_samples: int = 1
    # pass@k values to report; those above num_samples are left out.
    pass_k: list[int] = field(default_factory=lambda: [1])
    # Evaluate only the first rows of the test set (null = every row).
    limit: int | None = None
    # Samples per generate call on each rank.
    batch_size: int = 16
    # The reward whose score decides correctness (null = the task's first reward, its correctness
    # reward by the recipes' convention) and the score that counts as correct.
    correct_reward: str | None = None
    correct_threshold: float = 1.0
    # Continue from the samples already in output_dir (false: start over, discarding them).
    resume: bool = True
    # Decoding settings to compare, {rollout field: [values]}: one evaluation per combination in
    # sweep/<setting>/, and the accuracy-vs-TPF plot over them.
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    # A dotted row field written into each completion instead of model output (inpainted, never
    # decoded), e.g. reward_model.ground_truth: checks that the task's rewards give references full
    # marks (null = the model generates).
    reference_field: str | None = None
    # Reward worker processes (null = the cores, at most 4; 0 = in this process).
    reward_workers: int | None = None
    # auto (cuda if available), cpu, cuda.
    device: str = "auto"
    # Kernel backend of every decode step: auto (Triton on CUDA when installed), torch, triton.
    kernels: str = "auto"
    # Write PNG plots (finalization heat map; accuracy vs TPF for a sweep).
    plot: bool = True
    # Keep each sample's step map (the 0-based step that finalized each completion token) in samples.jsonl.
    save_trajectory: bool = True


@dataclass
class EvalRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = ("model", "task", "rollout", "eval")


def to_eval_config(cfg: DictConfig | dict[str, Any]) -> EvalRecipe:
    """Validate a composed ``recipes/eval.yaml`` (unknown keys are errors) and return typed objects."""
    container = OmegaConf.to_container(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, resolve=True)
    raw = {k: container[k] for k in SECTIONS if k in container}  # type: ignore[index]
    recipe: EvalRecipe = typed(EvalRecipe, raw)
    check_eval(recipe)
    check_task(recipe.task)
    return recipe


def check_eval(recipe: EvalRecipe) -> None:
    """Reject settings that cannot run, naming the field and the fix."""
    cfg = recipe.eval
    if cfg.kernels not in BACKENDS:
        raise DiffrlConfigError(f"eval.kernels={cfg.kernels!r} is not one of {', '.join(BACKENDS)}")
    if cfg.num_samples < 1:
        raise DiffrlConfigError(f"eval.num_samples={cfg.num_samples} must be >= 1")
    if cfg.batch_size < 1:
        raise DiffrlConfigError(f"eval.batch_size={cfg.batch_size} must be >= 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise DiffrlConfigError(f"eval.limit={cfg.limit} must be >= 1 (or null for every row)")
    if not cfg.pass_k or any(k < 1 for k in cfg.pass_k):
        raise DiffrlConfigError(f"eval.pass_k={cfg.pass_k} must list positive k values, e.g. [1, 5, 10]")
    names = [spec.name for spec in recipe.task.rewards]
    if cfg.correct_reward is not None and cfg.correct_reward not in names:
        raise DiffrlConfigError(f"eval.correct_reward={cfg.correct_reward!r} is not one of the task's rewards ({', '.join(names)})")
    known = set(RolloutConfig.__dataclass_fields__)
    for key, values in cfg.sweep.items():
        if key not in known:
            raise DiffrlConfigError(f"eval.sweep key {key!r} is not a rollout field; use one of {', '.join(sorted(known))}")
        if not isinstance(values, list) or not values:
            raise DiffrlConfigError(f"eval.sweep.{key} must be a non-empty list of values, e.g. [0.9, 0.7, 0.5]")


def correct_reward(recipe: EvalRecipe) -> str:
    """The reward whose score decides correctness."""
    if recipe.eval.correct_reward is not None:
        return recipe.eval.correct_reward
    if not recipe.task.rewards:
        raise DiffrlConfigError("task.rewards is empty; name at least one reward")
    return recipe.task.rewards[0].name
