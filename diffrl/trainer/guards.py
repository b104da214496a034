"""Start-up checks for settings that would run but silently void what an algorithm learns.

Each check reads the algorithm's :class:`~diffrl.algorithms.registry.Needs`, never its name, so an
algorithm added later is guarded by declaring what it needs. A mistake raises
:class:`~diffrl.errors.DiffrlConfigError` naming the field and the fix; a setting that is replaced
on purpose gets a start-up warning naming the field.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from diffrl.algorithms.registry import Algorithm
from diffrl.errors import DiffrlConfigError
from diffrl.trainer.schedule import num_mini_batches

if TYPE_CHECKING:
    from diffrl.trainer.config import Config


def check_algorithm(cfg: Config, algorithm: Algorithm) -> None:
    """Refuse algorithm settings that cannot learn what the algorithm is meant to learn."""
    a, needs, name = cfg.algorithm, algorithm.needs, cfg.algorithm.name
    for knob in ("beta", "epsilon", "epsilon_high"):
        value = getattr(a, knob)
        if value is not None and value < 0:
            raise DiffrlConfigError(f"algorithm.{knob}={value} must be >= 0")
    if needs.groups and a.num_generations < 2:
        raise DiffrlConfigError(
            f"algorithm.num_generations={a.num_generations}: algorithm={name} normalises rewards within groups of "
            "num_generations samples per prompt, and a group of one has advantage 0 (nothing trains); set it to 2 or more"
        )
    if a.beta > 0 and not needs.kl:
        raise DiffrlConfigError(f"algorithm.beta={a.beta}: algorithm={name} defines no KL term on its likelihood estimate (its paper forbids one); set algorithm.beta=0")
    check_correctness_reward(cfg, algorithm)
    if algorithm.normaliser_prompts is not None:
        num_mini_batches(cfg.trainer.batch_size, algorithm.normaliser_prompts, 1, f"algorithm={name}'s loss normaliser set of")
    if needs.varying_tpf and cfg.rollout.threshold is None and cfg.rollout.factor is None:
        # A warning, not an error: with its TPF filter off (threshold 0) the run still learns accuracy.
        warnings.warn(
            f"rollout.threshold=null: algorithm={name} rewards tokens per forward, but without a confidence threshold "
            "(rollout.threshold or rollout.factor) every step decodes the same number of tokens, so every group's TPF is "
            "equal and a TPF-range filter drops every group; set rollout.threshold (e.g. 0.9, the reference's)",
            UserWarning,
            stacklevel=2,
        )
    if needs.left_to_right:
        check_left_to_right(cfg, algorithm)
    check_schedule(cfg)
    if a.sync_ref_model and a.beta == 0:
        warnings.warn("algorithm.sync_ref_model=true with algorithm.beta=0: there is no KL reference, so nothing is synced", UserWarning, stacklevel=2)
    if a.sync_ref_model and (a.ref_model_sync_steps < 1 or not 0 <= a.ref_model_mixup_alpha <= 1):
        raise DiffrlConfigError(f"algorithm.ref_model_sync_steps={a.ref_model_sync_steps} must be >= 1 and algorithm.ref_model_mixup_alpha={a.ref_model_mixup_alpha} in [0, 1]")
    if a.sync_ref_model and cfg.trainer.lora.enabled:
        # A warning, as in d1's LoRA runs (train.yaml syncs every 64 steps; the sync never changes the base).
        warnings.warn(
            "algorithm.sync_ref_model=true with trainer.lora.enabled=true: a LoRA run's reference is the base model "
            "with the adapters off, which the sync leaves as it is; use full fine-tuning for a moving reference",
            UserWarning,
            stacklevel=2,
        )


def check_schedule(cfg: Config) -> None:
    """The update schedule's counts are one each, and the optimizer reset runs where it can."""
    t, o = cfg.trainer, cfg.optim
    if t.ppo_epochs is not None and cfg.algorithm.num_iterations != 1 and t.ppo_epochs != cfg.algorithm.num_iterations:
        raise DiffrlConfigError(
            f"trainer.ppo_epochs={t.ppo_epochs} and algorithm.num_iterations={cfg.algorithm.num_iterations} both count the passes "
            "over a rollout; set only one of them"
        )
    num_mini_batches(t.batch_size, t.ppo_mini_batch_size, 1)
    if (t.ppo_epochs is not None and t.ppo_epochs < 1) or cfg.algorithm.num_iterations < 1:
        raise DiffrlConfigError("trainer.ppo_epochs and algorithm.num_iterations must be >= 1")
    if o.reset_each_step and t.strategy == "deepspeed":
        raise DiffrlConfigError("optim.reset_each_step=true is not supported under trainer.strategy=deepspeed (its engine owns the optimizer state); use single or fsdp2")
    if o.reset_each_step and o.lr_schedule != "constant":
        raise DiffrlConfigError(
            f"optim.reset_each_step=true with optim.lr_schedule={o.lr_schedule}: the schedule restarts every RL step, so only "
            "warmup then constant is meaningful; set optim.lr_schedule=constant"
        )


def check_correctness_reward(cfg: Config, algorithm: Algorithm) -> None:
    """An algorithm that reads correctness must not take the total reward for it when the task
    has several rewards (a well-formatted wrong answer would count as correct)."""
    chosen, rewards = cfg.algorithm.correctness_reward, [spec.name for spec in cfg.task.rewards]
    if chosen is not None and rewards and chosen not in rewards:
        raise DiffrlConfigError(f"algorithm.correctness_reward={chosen!r} is not one of task {cfg.task.name}'s rewards ({', '.join(rewards)}); set it to one of them")
    if algorithm.needs.correctness and chosen is None and len(rewards) > 1:
        weights = ", ".join(f"{spec.name} {spec.weight:g}" for spec in cfg.task.rewards)
        raise DiffrlConfigError(
            f"algorithm.correctness_reward is unset, but algorithm={cfg.algorithm.name} decides which samples are correct and "
            f"task {cfg.task.name} has several rewards ({weights}): the total reward > 0 would count a sample that earns only a "
            f"secondary reward as correct; set algorithm.correctness_reward to the one that checks the answer (one of {', '.join(rewards)})"
        )


def check_left_to_right(cfg: Config, algorithm: Algorithm) -> None:
    """The training rollout must commit one token per step, leftmost first."""
    rollout = algorithm.rollout_config(cfg.rollout) if algorithm.rollout_config is not None else cfg.rollout
    if rollout.remasking != "left_to_right" or rollout.steps != rollout.max_completion_length:
        raise DiffrlConfigError(
            f"rollout.remasking={rollout.remasking} with rollout.steps={rollout.steps}: algorithm={cfg.algorithm.name}'s likelihood "
            f"is exact only for a left-to-right decode of one token per step; set rollout.remasking=left_to_right and "
            f"rollout.steps=rollout.max_completion_length ({rollout.max_completion_length})"
        )
    if cfg.rollout.remasking != "left_to_right":
        warnings.warn(
            f"rollout.remasking={cfg.rollout.remasking} is replaced by left_to_right (one token per step) for training rollouts: "
            f"algorithm={cfg.algorithm.name}'s likelihood is exact only for that order; validation and evaluation keep the recipe's decoding",
            UserWarning,
            stacklevel=2,
        )


def check_reference_answers(rows: list[dict[str, Any]], field: str, path: str) -> None:
    """Every row of ``path`` holds the reference answer at the dotted ``field``."""
    missing = []
    for i, row in enumerate(rows):
        node: Any = row
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or node == "":
            missing.append(i)
    if missing:
        raise DiffrlConfigError(
            f"{path}: {len(missing)} of {len(rows)} row(s) (first: row {missing[0]}) have no reference answer at "
            f"task.sft_response_field={field!r}, which this algorithm inpaints; point task.sft_response_field at the field holding it"
        )
