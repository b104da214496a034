"""The training loop: rollout -> rewards -> advantages -> num_iterations updates -> metrics -> checkpoint.

One readable loop for every algorithm and family. Parallelism and LoRA are applied to the model
before the loop starts; the loop itself only sums gradients over ranks.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from diffrl.algorithms import Algorithm, PolicyBatch, build_algorithm
from diffrl.algorithms.estimators import TokenScores
from diffrl.algorithms.losses import token_weights
from diffrl.algorithms.sft import masked_diffusion_loss
from diffrl.data import PromptEncoder, PromptLoader
from diffrl.models import DiffusionLM, load_pretrained, save_pretrained
from diffrl.rewards import RewardRunner
from diffrl.rng import counter_hash
from diffrl.rollout import RolloutConfig, generate
from diffrl.rollout.trajectory import Rollout
from diffrl.trainer.build import TaskData, load_tokenizer, prepare_model_folder, prepare_task
from diffrl.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from diffrl.trainer.config import Config
from diffrl.trainer.distributed import World, all_reduce_sum, init_distributed, sync_gradients
from diffrl.trainer.logger import MetricLogger
from diffrl.trainer.optim import build_optimizer
from diffrl.trainer.plots import plot_reward_curve

log = logging.getLogger(__name__)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[f"timing_s/{name}"] = timings.get(f"timing_s/{name}", 0.0) + time.perf_counter() - start


@dataclass
class Run:
    """Everything the loop touches, built once by :func:`setup`."""

    cfg: Config
    world: World
    run_dir: Path
    model_dir: Path
    model: DiffusionLM
    reference: DiffusionLM | None
    tokenizer: Any
    algorithm: Algorithm
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: PromptLoader
    encoder: PromptEncoder
    rewards: RewardRunner
    task: TaskData


def setup(cfg: Config, world: World) -> Run:
    run_dir = Path(cfg.trainer.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.trainer.seed + world.rank)
    task = prepare_task(cfg.task, run_dir, world)
    model_dir = prepare_model_folder(cfg.model, task, run_dir, world)
    tokenizer = load_tokenizer(model_dir)
    model = load_pretrained(model_dir, dtype=cfg.model.dtype, device=world.device, overrides=cfg.model.overrides())
    model.gradient_checkpointing = cfg.model.gradient_checkpointing
    algorithm = build_algorithm(cfg.algorithm)
    # The KL reference is the initial policy, frozen.
    reference = copy.deepcopy(model).eval().requires_grad_(False) if cfg.algorithm.beta > 0 else None
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.trainer.total_steps)
    loader = PromptLoader(task.train_rows, cfg.trainer.batch_size, seed=cfg.trainer.seed, rank=world.rank, world_size=world.world_size)
    encoder = PromptEncoder(
        tokenizer,
        pad_token_id=model.facts.pad_token_id,
        max_prompt_length=cfg.task.max_prompt_length,
        system_prompt=cfg.task.system_prompt,
        prompt_prefix=cfg.task.prompt_prefix,
    )
    return Run(cfg, world, run_dir, model_dir, model, reference, tokenizer, algorithm, optimizer, scheduler, loader, encoder, RewardRunner(cfg.task.rewards), task)


def decode_completions(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Completion text up to and including the first stop token, special tokens dropped."""
    ids = [row[mask].tolist() for row, mask in zip(rollout.completion_ids.cpu(), rollout.completion_mask.cpu())]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def rollout_batch(run: Run, rows: list[dict[str, Any]], step: int) -> tuple[Rollout, list[dict[str, Any]], int]:
    """``num_generations`` samples per prompt, generated in chunks of ``rollout_batch_size``."""
    group = run.cfg.algorithm.num_generations
    prompt_ids, prompt_mask, truncated = run.encoder(rows)
    prompt_ids = prompt_ids.repeat_interleave(group, 0).to(run.world.device)
    prompt_mask = prompt_mask.repeat_interleave(group, 0).to(run.world.device)
    local = prompt_ids.shape[0]
    # Globally unique sample ids key every random draw of this sample (rollout and estimator).
    first = (step * run.world.world_size + run.world.rank) * local
    sample_ids = torch.arange(first, first + local, device=run.world.device)
    chunk = run.cfg.trainer.rollout_batch_size or local
    parts = [
        generate(run.model, prompt_ids[s : s + chunk], prompt_mask[s : s + chunk], run.cfg.rollout, sample_ids=sample_ids[s : s + chunk])
        for s in range(0, local, chunk)
    ]
    return concat_rollouts(parts), [r for r in rows for _ in range(group)], truncated


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    if len(parts) == 1:
        return parts[0]
    width = max(p.prompt_ids.shape[1] for p in parts)
    pad = parts[0].prompt_ids.new_full

    def left_pad(t: Tensor, value: int | bool) -> Tensor:
        return torch.cat((pad((t.shape[0], width - t.shape[1]), value, dtype=t.dtype), t), dim=1)

    return Rollout(
        prompt_ids=torch.cat([left_pad(p.prompt_ids, int(p.prompt_ids[0, 0])) for p in parts]),
        prompt_mask=torch.cat([left_pad(p.prompt_mask, False) for p in parts]),
        **{k: torch.cat([getattr(p, k) for p in parts]) for k in ("completion_ids", "step_map", "confidence", "logprob", "fixed_mask", "nfe", "sample_ids")},
        stop_token_ids=parts[0].stop_token_ids,
    )


@torch.no_grad()
def score_all(algorithm: Algorithm, model: DiffusionLM, batch: PolicyBatch, seed: int, micro_batch_size: int) -> TokenScores:
    """The estimator over the whole batch, in micro-batches, without grad (old / reference)."""
    parts = [algorithm.estimator(model, mb, seed) for mb in batch.split(micro_batch_size)]
    return TokenScores(*(torch.cat([getattr(p, f) for p in parts]) for f in ("logp", "mask", "entropy")))


def rl_step(run: Run, step: int) -> dict[str, float]:
    cfg, model, algo = run.cfg, run.model, run.algorithm
    timings: dict[str, float] = {}
    start = time.perf_counter()

    with timed(timings, "gen"):
        model.eval()
        rollout, rows, truncated_prompts = rollout_batch(run, run.loader.next_batch(), step)
        model.train()
    with timed(timings, "reward"):
        rewards = run.rewards(decode_completions(run.tokenizer, rollout), rows)
    with timed(timings, "adv"):
        advantages = algo.advantage(rewards.total.to(run.world.device), algo.config.num_generations)

    batch = PolicyBatch.from_rollout(rollout)
    mbs = cfg.trainer.micro_batch_size
    global_tokens = all_reduce_sum(batch.completion_mask.sum(), run.world.device).item()
    weights = token_weights(
        batch.completion_mask, algo.config.loss_type, mbs, cfg.rollout.max_completion_length,
        global_tokens=global_tokens, global_sequences=len(batch) * run.world.world_size,
    ) / (run.world.world_size if algo.config.loss_type == "bnpo" else 1)
    mu = algo.config.num_iterations
    seeds = [int(counter_hash(cfg.trainer.seed, step, k)) for k in range(mu)]
    with timed(timings, "old_log_prob"):
        old = [score_all(algo, model, batch, s, mbs) for s in seeds] if mu > 1 else None
    with timed(timings, "ref"):
        ref = [score_all(algo, run.reference, batch, s, mbs) for s in seeds] if run.reference is not None else None

    sums: dict[str, float] = defaultdict(float)
    with timed(timings, "update"):
        for k in range(mu):
            for s in range(0, len(batch), mbs):
                idx = slice(s, s + mbs)
                scores = algo.estimator(model, batch.select(idx), seeds[k])
                old_logp = old[k].logp[idx] if old is not None else scores.logp.detach()
                loss, terms = algo.loss(scores.logp, old_logp, advantages[idx], weights[idx], ref_logp=ref[k].logp[idx] if ref else None)
                loss.backward()
                for name, value in terms.items():
                    sums[name] += value.item() / mu
                sums["actor/entropy"] += (scores.entropy * weights[idx]).sum().item() / mu
            sync_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm or float("inf"))
            sums["actor/grad_norm"] += grad_norm.item() / mu
            sums["actor/lr"] = run.scheduler.get_last_lr()[0]
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()

    weight_total = weights.sum().item() or 1.0
    metrics = {k: (v / weight_total if k.startswith("actor/") and k not in ("actor/grad_norm", "actor/lr") else v) for k, v in sums.items()}
    metrics.update(rewards.metrics())
    metrics.update(rollout.metrics())
    metrics.update(
        {
            "critic/advantages/mean": advantages.mean().item(),
            "critic/advantages/max": advantages.max().item(),
            "critic/advantages/min": advantages.min().item(),
            "prompt_length/clip_ratio": truncated_prompts / max(1, len(rows) // algo.config.num_generations),
        }
    )
    timings["timing_s/step"] = time.perf_counter() - start
    metrics.update(timings)
    tokens = batch.completion_mask.sum().item()
    metrics["perf/throughput"] = tokens / timings["timing_s/step"]
    metrics["perf/gen_tokens_per_s"] = tokens / max(timings["timing_s/gen"], 1e-9)
    return metrics


def warm_start(run: Run) -> dict[str, float]:
    """Supervised masked-diffusion steps on the task's reference responses before RL."""
    cfg, model, tok = run.cfg, run.model, run.tokenizer
    ws = cfg.trainer.warm_start
    # Warmup then cosine decay: a constant high rate leaves tiny models at uneven quality.
    schedule = replace(cfg.optim, lr=ws.lr, warmup_steps=max(1, ws.steps // 20), lr_schedule="cosine", min_lr_ratio=0.1)
    optimizer, scheduler = build_optimizer(model, schedule, ws.steps)
    loader = PromptLoader(run.task.train_rows, ws.batch_size, seed=cfg.trainer.seed + 1, rank=run.world.rank, world_size=run.world.world_size)
    field = cfg.task.sft_response_field.split(".")
    length = cfg.rollout.max_completion_length
    eos = model.facts.eos_token_id
    losses = []
    model.train()
    for step in range(ws.steps):
        rows = loader.next_batch()
        prompt_ids, prompt_mask, _ = run.encoder(rows)
        responses = []
        for row in rows:
            node: Any = row
            for part in field:
                node = node[part]
            ids = tok(str(node), add_special_tokens=False)["input_ids"][: length - 1]
            responses.append(ids + [eos] * (length - len(ids)))
        completion = torch.tensor(responses)
        dev = run.world.device
        batch = PolicyBatch(
            prompt_ids=prompt_ids.to(dev), prompt_mask=prompt_mask.to(dev), completion_ids=completion.to(dev),
            completion_mask=torch.ones_like(completion, dtype=torch.bool, device=dev),
            sample_ids=torch.arange(len(rows), device=dev) + (step * run.world.world_size + run.world.rank) * len(rows),
            step_map=torch.zeros_like(completion, device=dev), fixed_mask=torch.zeros_like(completion, dtype=torch.bool, device=dev),
            rollout_logprob=torch.zeros(completion.shape, device=dev),
        )
        loss, _ = masked_diffusion_loss(model, batch, seed=int(counter_hash(cfg.trainer.seed, step, 7)))
        (loss / run.world.world_size).backward()
        sync_gradients(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return {"warm_start/loss_first": losses[0], "warm_start/loss_last": sum(losses[-10:]) / len(losses[-10:])}


def train(cfg: Config, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a recipe to completion; returns the summary also written to ``summary.json``."""
    world = init_distributed(cfg.trainer.device)
    run = setup(cfg, world)
    start_step = 0
    ckpt_root = run.run_dir / "checkpoints"
    resume = cfg.trainer.resume
    path = latest_checkpoint(ckpt_root) if resume == "auto" else (None if resume == "never" else Path(resume))
    summary: dict[str, Any] = {}
    if path is not None:
        state = load_checkpoint(path, run.model, run.optimizer)
        run.scheduler.load_state_dict(state["scheduler"])
        run.loader.load_state_dict(state["loader"])
        start_step = state["step"]
        summary["resumed_from"] = str(path)
    config_dict = resolved if resolved is not None else OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[arg-type]
    logger = MetricLogger(run.run_dir, cfg.trainer.wandb, config_dict, cfg.trainer.total_steps, start_step=start_step, rank=world.rank, progress_bar=cfg.trainer.progress_bar)
    if cfg.trainer.warm_start.steps and start_step == 0:
        t0 = time.perf_counter()
        summary.update(warm_start(run))
        logger.write(f"warm start: {cfg.trainer.warm_start.steps} SFT steps, loss {summary['warm_start/loss_first']:.3f} -> {summary['warm_start/loss_last']:.3f} ({time.perf_counter() - t0:.1f}s)")

    t_rl = time.perf_counter()
    rewards: list[float] = []
    for step in range(start_step, cfg.trainer.total_steps):
        metrics = rl_step(run, step)
        rewards.append(metrics["critic/score/mean"])
        logger.log(step + 1, metrics)
        last = step + 1 == cfg.trainer.total_steps
        if (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0) or last:
            save_checkpoint(ckpt_root, step + 1, run.model, run.optimizer, {"scheduler": run.scheduler.state_dict(), "loader": run.loader.state_dict()})

    if world.is_main:
        summary.update(reward_summary(rewards, time.perf_counter() - t_rl))
        save_pretrained(run.model, run.run_dir / "final", source_folder=run.model_dir)
        if cfg.trainer.plot and rewards:
            summary["reward_plot"] = str(plot_reward_curve(run.run_dir))
        (run.run_dir / "summary.json").write_text(__import__("json").dumps(summary, indent=2) + "\n")
        if rewards:
            logger.write(
                f"reward {summary['reward/first_10']:.3f} (first 10 steps) -> {summary['reward/last_10']:.3f} (last 10) "
                f"over {len(rewards)} steps in {summary['rl_minutes']:.2f} min; run folder: {run.run_dir}"
            )
    logger.close(summary)
    return summary


def reward_summary(rewards: list[float], seconds: float) -> dict[str, float]:
    head, tail = rewards[:10], rewards[-10:]
    if not rewards:
        return {"rl_minutes": seconds / 60}
    return {"reward/first_10": sum(head) / len(head), "reward/last_10": sum(tail) / len(tail), "rl_minutes": seconds / 60, "rl_steps": len(rewards)}
