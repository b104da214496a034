"""The metrics one RL step logs, over every rank's samples (verl's names).

Each rank holds its own samples; counts and weighted sums are all-reduced and per-sample values
gathered, so rank 0 logs numbers that describe the global batch.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diffrl.rewards.registry import RewardBatch
from diffrl.trainer.build import Run
from diffrl.trainer.distributed import all_gather_rows, all_reduce_sum, all_reduce_sums
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
    plus ``tokens``, the global completion-token count."""
    device, keep = run.world.device, samples.outcome.keep
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
    metrics.update(samples.rollout.gather(device).metrics())
    all_adv = all_gather_rows(advantages, device)
    metrics.update(
        {
            "critic/advantages/mean": all_adv.mean().item(),
            "critic/advantages/max": all_adv.max().item(),
            "critic/advantages/min": all_adv.min().item(),
            "prompt_length/clip_ratio": totals["truncated_prompts"] / run.cfg.trainer.batch_size,
            "tokens": totals["tokens"],
        }
    )
    return metrics


def throughput(metrics: dict[str, float]) -> None:
    """Replace ``tokens`` by tokens per second of the step and of its generation."""
    tokens = metrics.pop("tokens")
    metrics["perf/throughput"] = tokens / metrics["timing_s/step"]
    metrics["perf/gen_tokens_per_s"] = tokens / max(metrics["timing_s/gen"], 1e-9)


def sample_rows(run: Run, samples: Samples) -> list[dict[str, Any]]:
    """A few of this rank's samples as text, for the W&B samples table."""
    rollout, count = samples.rollout, min(run.cfg.trainer.log_samples_count, len(samples.completions))
    prompts = run.tokenizer.batch_decode([row[mask].tolist() for row, mask in zip(rollout.prompt_ids[:count].cpu(), rollout.prompt_mask[:count].cpu())])
    return [{"prompt": prompts[i], "completion": samples.completions[i], "reward": float(samples.rewards.total[i])} for i in range(count)]


def reward_summary(rewards: list[float], seconds: float) -> dict[str, float]:
    """The run summary's reward over its first and last 10 steps."""
    head, tail = rewards[:10], rewards[-10:]
    if not rewards:
        return {"rl_minutes": seconds / 60}
    return {"reward/first_10": sum(head) / len(head), "reward/last_10": sum(tail) / len(tail), "rl_minutes": seconds / 60, "rl_steps": len(rewards)}
