"""The start-up banner: what this run trains, on what, how wide, and where it starts."""

from __future__ import annotations

from diffrl.trainer.build import Run
from diffrl.trainer.resume import ResumePlan


def count(n: float) -> str:
    """``1234567`` -> ``1.23M``."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def parameter_counts(run: Run) -> tuple[int, int]:
    """All parameters of the policy model and the trained ones (global counts under sharding)."""
    params = list(run.model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def banner(run: Run, plan: ResumePlan) -> str:
    """The lines printed before the first step (also kept in ``train.log``)."""
    cfg, world = run.cfg, run.world
    total, trained = parameter_counts(run)
    source = cfg.model.path or f"fresh from model.init_config ({run.model_dir})"
    group = cfg.algorithm.num_generations if cfg.trainer.mode == "rl" else 1
    samples = cfg.trainer.batch_size * group
    per_rank = samples // world.world_size
    micro = cfg.trainer.micro_batch_size
    accumulation = -(-per_rank // micro)
    lora = f", LoRA r={cfg.trainer.lora.r}" if cfg.trainer.lora.enabled else ""
    warm = f", warm start {cfg.trainer.warm_start.steps} SFT steps" if cfg.trainer.warm_start.steps and plan.step == 0 else ""
    return "\n".join(
        [
            f"diffrl {cfg.trainer.mode} run in {run.run_dir}",
            f"  model:     {run.model.facts.family} from {source}",
            f"  params:    {count(total)} ({total:,}), trained {count(trained)} ({trained:,}){lora}",
            f"  data:      task {cfg.task.name}: {len(run.task.train_rows):,} train rows, {len(run.task.val_rows):,} val rows",
            f"  world:     {world.world_size} rank(s), strategy {cfg.trainer.strategy}, device {world.device}",
            f"  batch:     {cfg.trainer.batch_size} prompts x {group} = {samples} samples per step (effective batch), "
            f"{per_rank} per rank in {accumulation} micro-batch(es) of {micro}",
            f"  algorithm: {cfg.algorithm.name}, {cfg.trainer.total_steps} steps{warm}",
            f"  start:     {plan.describe()}",
        ]
    )
