"""Supervised steps: masked-diffusion cross-entropy on the task's reference responses.

``trainer.mode=sft`` trains on them for a whole run (:func:`sft_train_step`) and
``trainer.warm_start`` runs a few of them before RL (:func:`warm_start`); both build batches with
:func:`sft_batch` and update with :func:`sft_step`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffrl.algorithms import PolicyBatch
from diffrl.algorithms.sft import masked_diffusion_loss
from diffrl.data import DataError, PromptEncoder, PromptLoader
from diffrl.models.base import DiffusionLM
from diffrl.rng import SEED_SUPERVISED, counter_hash
from diffrl.trainer.build import Run
from diffrl.trainer.distributed import all_reduce_sum, all_reduce_sums
from diffrl.trainer.logger import MetricLogger
from diffrl.trainer.optim import lr_multiplier
from diffrl.trainer.policy import Policy
from diffrl.trainer.stop import StopSignals


def response_text(row: dict[str, Any], field: str) -> str:
    """The row's reference response at the dotted ``field`` (``task.sft_response_field``)."""
    node: Any = row
    for part in field.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            index = row.get("extra_info", {}).get("index", "?")
            raise DataError(f"row {index}: field {field!r} is missing; point task.sft_response_field at the reference response")
        node = node[part]
    return str(node)


def sft_batch(
    rows: list[dict[str, Any]],
    encoder: PromptEncoder,
    tokenizer: Any,
    *,
    field: str,
    length: int,
    eos_token_id: int,
    first_sample_id: int,
    device: torch.device,
) -> PolicyBatch:
    """Prompts and reference responses as a batch: each response keeps at most ``length - 1``
    tokens and is filled with EOS to ``length`` (the rollout's completion length), as LLaDA's SFT
    pads, so the model learns to end. Sample ids key every mask drawn for a row."""
    prompt_ids, prompt_mask, _ = encoder(rows)
    responses = []
    for row in rows:
        ids = tokenizer(response_text(row, field), add_special_tokens=False)["input_ids"][: length - 1]
        responses.append(ids + [eos_token_id] * (length - len(ids)))
    completion = torch.tensor(responses, device=device)
    none = torch.zeros_like(completion, dtype=torch.bool)
    return PolicyBatch(
        prompt_ids=prompt_ids.to(device),
        prompt_mask=prompt_mask.to(device),
        completion_ids=completion,
        completion_mask=~none,
        sample_ids=torch.arange(first_sample_id, first_sample_id + len(rows), device=device),
        step_map=torch.zeros_like(completion),
        fixed_mask=none,
        rollout_logprob=torch.zeros(completion.shape, device=device),
    )


@dataclass
class SupervisedObjective:
    """The masked-diffusion loss of a micro-batch weighted by its ``share`` of the global batch."""

    share: float

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        loss, terms = masked_diffusion_loss(model, batch, seed)
        return loss * self.share, {k: v * self.share for k, v in terms.items()}


def sft_step(policy: Policy, batch: PolicyBatch, seed: int, *, micro_batch_size: int, global_size: int) -> dict[str, float]:
    """One optimizer update on this rank's ``batch`` of a global batch of ``global_size`` examples.

    Each micro-batch's mean loss is weighted by its share of the global batch, so the gradients
    summed over micro-batches and ranks are those of the global mean. Returns global metrics.
    """
    sums: dict[str, float] = defaultdict(float)
    for micro in batch.split(micro_batch_size):
        for name, value in policy.loss_and_backward(SupervisedObjective(len(micro) / global_size), micro, seed).items():
            sums[name] += value
    metrics = all_reduce_sums(dict(sums), batch.prompt_ids.device)
    metrics["actor/grad_norm"] = policy.step()
    return metrics


def supervised_batch(run: Run, rows: list[dict[str, Any]], step: int) -> PolicyBatch:
    """This rank's rows with their reference responses, completion length as the rollout's."""
    world = run.world
    return sft_batch(
        rows, run.encoder, run.tokenizer, field=run.cfg.task.sft_response_field, length=run.cfg.rollout.max_completion_length,
        eos_token_id=run.model.facts.eos_token_id, first_sample_id=(step * world.world_size + world.rank) * len(rows), device=world.device,
    )


def sft_train_step(run: Run, step: int) -> dict[str, float]:
    """``trainer.mode=sft``: one supervised update on the task's reference responses."""
    cfg, world = run.cfg, run.world
    start = time.perf_counter()
    batch = supervised_batch(run, run.loader.next_batch(), step)
    seed = int(counter_hash(cfg.trainer.seed, step, SEED_SUPERVISED))
    metrics = sft_step(run.policy, batch, seed, micro_batch_size=cfg.trainer.micro_batch_size, global_size=cfg.trainer.batch_size)
    metrics["actor/lr"] = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    metrics["timing_s/step"] = time.perf_counter() - start
    tokens = all_reduce_sum(batch.completion_mask.sum(), world.device).item()
    metrics["perf/throughput"] = tokens / metrics["timing_s/step"]
    return metrics


def warm_start(run: Run, on_step: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Supervised masked-diffusion steps on the task's reference responses before RL.

    They run through the RL strategy and optimizer (a DeepSpeed engine owns its optimizer) on
    their own learning rate, warmup then cosine decay; afterwards the optimizer state is cleared
    and the RL rates restored, so RL starts exactly as with a fresh optimizer. The KL reference is
    then anchored to the warm-started policy (a LoRA run's stays the base). ``on_step(step,
    loss)`` runs after each step (progress, W&B, stop requests: every rank calls it).
    """
    cfg, world = run.cfg, run.world
    ws = cfg.trainer.warm_start
    optimizer = run.policy.optimizer
    assert optimizer is not None
    rl_rates = [group["lr"] for group in optimizer.param_groups]
    loader = PromptLoader(run.task.train_rows, ws.batch_size, seed=cfg.trainer.seed + 1, rank=world.rank, world_size=world.world_size)
    losses = []
    run.policy.train(True)
    for step in range(ws.steps):
        # Warmup then cosine decay: a constant high rate leaves tiny models at uneven quality.
        lr = ws.lr * lr_multiplier(step, warmup_steps=max(1, ws.steps // 20), total_steps=ws.steps, schedule="cosine", min_lr_ratio=0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = supervised_batch(run, loader.next_batch(), step)
        seed = int(counter_hash(cfg.trainer.seed, step, SEED_SUPERVISED))
        metrics = sft_step(run.policy, batch, seed, micro_batch_size=cfg.trainer.micro_batch_size, global_size=ws.batch_size)
        losses.append(metrics["sft/loss"])
        if on_step is not None:
            on_step(step + 1, metrics["sft/loss"])
    optimizer.state.clear()
    for group, rate in zip(optimizer.param_groups, rl_rates):
        group["lr"] = rate
    if run.reference is not None:
        run.reference.anchor_to(run.policy)
    return {"warm_start/loss_first": losses[0], "warm_start/loss_last": sum(losses[-10:]) / len(losses[-10:])}


class _Stopped(Exception):
    """A stop signal arrived during the warm start."""


def run_warm_start(run: Run, logger: MetricLogger, signals: StopSignals) -> dict[str, float] | None:
    """The warm start with its progress, its losses in W&B (at step 0) and the console; None
    when a signal stopped it (nothing is saved: a resume from step 0 runs it again)."""
    cfg = run.cfg
    steps = cfg.trainer.warm_start.steps
    bar = logger.phase("warm start", steps)
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        bar.update(1, loss=loss)
        if signals.requested(run.world.device):
            raise _Stopped

    t0 = time.perf_counter()
    try:
        result = warm_start(run, on_step)
    except _Stopped:
        logger.write(f"stopped by {signals.name or 'a signal to another rank'} during the warm start (step {len(losses)} of {steps}); nothing saved, a new run starts it again")
        return None
    seconds = time.perf_counter() - t0
    logger.end_phase()
    logger.log_before_training({**result, "warm_start/steps": float(steps), "timing_s/warm_start": seconds}, curve=losses)
    logger.write(f"warm start: {steps} SFT steps, loss {result['warm_start/loss_first']:.3f} -> {result['warm_start/loss_last']:.3f} ({seconds:.1f}s)")
    return result
