"""The metrics one RL step logs, over every rank's samples (verl's names).

Each rank holds its own samples; counts and weighted sums are all-reduced and per-sample values
gathered, so rank 0 logs numbers that describe the global batch.
"""

from __future__ import annotations

from typing import Any

import psutil
import torch
from torch import Tensor

from diffrl.rewards.registry import RewardBatch
from diffrl.models.base import DiffusionLM
from diffrl.trainer.build import Run
from diffrl.trainer.distributed import World, all_gather_rows, all_reduce_sum, all_reduce_sums
from diffrl.trainer.sampling import Samples


def gather_rewards(rewards: RewardBatch, device: Any) -> RewardBatch:
    """Every rank's rewards, for global metrics (reasons stay local)."""
    return RewardBatch(
        total=all_gather_rows(rewards.total.to(device), device),
        per_reward={k: all_gather_rows(v.to(device), device) for k, v in rewards.per_reward.items()},
        reasons={},
        errors=int(all_reduce_sum(rewards.errors, device).item()),
        out_of_range=int(all_reduce_sum(rewards.out_of_range, device).item()),
    )


def global_metrics(run: Run, samples: Samples, advantages: Tensor, weights: Tensor, sums: dict[str, float]) -> dict[str, float]:
    """The step's metrics over every rank's samples (``sums``: this rank's weighted actor sums),
    plus ``tokens`` and ``prompt_tokens``, the global completion- and prompt-token counts."""
    device, keep = run.world.device, samples.outcome.keep
    prompt_lengths = all_gather_rows(samples.rollout.prompt_mask.sum(1).double(), device)
    local = {
        **sums, "weight_total": weights.sum().item(), "tokens": samples.rollout.completion_mask.sum().item(),
        "truncated_prompts": samples.truncated_prompts, "kept": float(keep.sum()), "samples": float(keep.numel()),
    }
    totals = all_reduce_sums(local, device)
    weight_total = totals.pop("weight_total") or 1.0
    metrics = {k: v / weight_total for k, v in totals.items() if k.startswith("actor/")}
    metrics.update({k.removeprefix("normalized/"): v for k, v in totals.items() if k.startswith("normalized/")})
    metrics["critic/kept_ratio"] = totals["kept"] / max(totals["samples"], 1)
    metrics.update(gather_rewards(samples.rewards, device).metrics())
    metrics.update(samples.rollout.global_metrics(device))
    all_adv = all_gather_rows(advantages, device)
    metrics.update(
        {
            "critic/advantages/mean": all_adv.mean().item(),
            "critic/advantages/max": all_adv.max().item(),
            "critic/advantages/min": all_adv.min().item(),
            "prompt_length/mean": prompt_lengths.mean().item(),
            "prompt_length/max": prompt_lengths.max().item(),
            "prompt_length/min": prompt_lengths.min().item(),
            "prompt_length/clip_ratio": totals["truncated_prompts"] / run.cfg.trainer.batch_size,
            "tokens": totals["tokens"],
            "prompt_tokens": prompt_lengths.sum().item(),
        }
    )
    return metrics


# verl's per-token timings: generation per completion token, the rest per prompt+completion token.
PER_TOKEN_SECTIONS = {"gen": "completion", "ref": "all", "adv": "all", "update_actor": "all"}


def throughput(metrics: dict[str, float]) -> None:
    """Replace ``tokens`` and ``prompt_tokens`` by tokens per second of the step and of its
    generation, and verl's ``timing_per_token_ms/<section>`` (``timing_s/update`` is also
    logged as verl's ``timing_s/update_actor``)."""
    tokens, prompt_tokens = metrics.pop("tokens"), metrics.pop("prompt_tokens")
    metrics["perf/throughput"] = tokens / metrics["timing_s/step"]
    metrics["perf/gen_tokens_per_s"] = tokens / max(metrics["timing_s/gen"], 1e-9)
    metrics["timing_s/update_actor"] = metrics["timing_s/update"]
    counts = {"completion": tokens, "all": tokens + prompt_tokens}
    for section, counted in PER_TOKEN_SECTIONS.items():
        if f"timing_s/{section}" in metrics:
            metrics[f"timing_per_token_ms/{section}"] = metrics[f"timing_s/{section}"] * 1000 / max(counts[counted], 1)


def run_metrics(run: Run, step: int) -> dict[str, float]:
    """What every step logs besides its algorithm's metrics (every rank calls this: the router
    load is averaged over ranks): verl's ``training/*`` and ``perf/*`` memory, and the MoE router
    load of the policy's last forward (no extra forward)."""
    device = run.world.device
    metrics = {
        "training/global_step": float(step),
        "training/epoch": float(run.loader.epoch),
        "perf/cpu_memory_used_gb": psutil.virtual_memory().used / 1024**3,
    }
    if device.type == "cuda":
        metrics["perf/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    metrics.update(router_load(run.model, run.world))
    return metrics


def router_load(model: DiffusionLM, world: World) -> dict[str, float]:
    """``moe/load/expert_<e>``: expert e's share of the routed (token, slot) pairs, averaged over
    MoE layers and ranks; ``moe/load/max_over_mean``: the busiest expert's share over the mean
    share (1 = balanced); plus the model's ``moe/*`` router stats. {} for dense models."""
    load = model.expert_load()
    if load is None:
        return {}
    per_expert = all_gather_rows(load.mean(0, keepdim=True).double().to(world.device), world.device).mean(0)
    metrics = {f"moe/load/expert_{e}": share for e, share in enumerate(per_expert.tolist())}
    metrics["moe/load/max_over_mean"] = (per_expert.max() / per_expert.mean()).item()
    stats = all_reduce_sums(model.router_stats(), world.device)
    metrics.update({k: v / world.world_size for k, v in stats.items()})
    return metrics


def sample_rows(run: Run, samples: Samples) -> list[dict[str, Any]]:
    """A few of this rank's samples as text, for the W&B samples table."""
    rollout, count = samples.rollout, min(run.cfg.trainer.log_samples_count, len(samples.completions))
    prompts = run.tokenizer.batch_decode([row[mask].tolist() for row, mask in zip(rollout.prompt_ids[:count].cpu(), rollout.prompt_mask[:count].cpu())])
    return [
        {"prompt": prompts[i], "completion": samples.completions[i], "ground_truth": ground_truth(samples.rows[i]), "reward": float(samples.rewards.total[i])}
        for i in range(count)
    ]


def ground_truth(row: dict[str, Any]) -> str:
    """A verl row's ``reward_model.ground_truth`` as text ('' when the row has none)."""
    truth = (row.get("reward_model") or {}).get("ground_truth")
    return "" if truth is None else str(truth)


def reward_summary(rewards: list[float], seconds: float) -> dict[str, float]:
    """The run summary's reward over its first and last 10 steps."""
    head, tail = rewards[:10], rewards[-10:]
    if not rewards:
        return {"rl_minutes": seconds / 60}
    return {"reward/first_10": sum(head) / len(head), "reward/last_10": sum(tail) / len(tail), "rl_minutes": seconds / 60, "rl_steps": len(rewards)}
