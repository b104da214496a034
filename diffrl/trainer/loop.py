"""The training loop: rollout -> rewards -> advantages -> old/ref scores -> num_iterations updates
-> metrics -> checkpoint.

One readable loop for every algorithm, family and strategy (``trainer.mode=sft`` swaps the RL
step for a supervised one, :mod:`diffrl.trainer.sft`). :func:`~diffrl.trainer.build.setup` builds
the run; the step calls the model only through the typed :class:`~diffrl.trainer.policy.Policy`
(``generate``, ``score``, ``loss_and_backward``, ``step``) and the KL
:class:`~diffrl.trainer.policy.Reference` (``score``). The objective each update minimises is
:class:`~diffrl.algorithms.objective.PolicyObjective`: the algorithm's estimator, loss and terms.

Losses are normalised by global token/sequence counts and gradients summed over ranks, so N ranks
take the one-process step on the same global batch. Logged metrics describe the global batch.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import Tensor

from diffrl.algorithms import PolicyBatch
from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.losses import token_weights
from diffrl.algorithms.objective import PolicyObjective, UpdateTargets
from diffrl.algorithms.unmasking_grpo import NAME as UNMASKING_GRPO
from diffrl.rng import SEED_UPDATE, counter_hash
from diffrl.trainer.build import Run, setup
from diffrl.trainer.checkpoint import latest_checkpoint
from diffrl.trainer.config import Config
from diffrl.trainer.distributed import all_reduce_sum, init_distributed
from diffrl.trainer.export import checkpoint_meta, save_final
from diffrl.trainer.logger import MetricLogger
from diffrl.trainer.plots import plot_reward_curve
from diffrl.trainer.sampling import generate_rollout, repair_samples, score_samples, step_scorer
from diffrl.trainer.sft import sft_train_step, warm_start
from diffrl.trainer.step_metrics import global_metrics, reward_summary, sample_rows, throughput
from diffrl.trainer.validate import validate


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[f"timing_s/{name}"] = timings.get(f"timing_s/{name}", 0.0) + time.perf_counter() - start


def rl_step(run: Run, step: int) -> dict[str, float]:
    """One RL step on this rank's share of the global batch; returns the global batch's metrics."""
    cfg, algo, policy = run.cfg, run.algorithm, run.policy
    timings: dict[str, float] = {}
    start = time.perf_counter()

    with timed(timings, "gen"):
        rollout, rows, truncated_prompts = generate_rollout(run, run.loader.next_batch(), step)
    with timed(timings, "reward"):
        samples = score_samples(run, rollout, rows, truncated_prompts)
    if algo.repair is not None:
        with timed(timings, "repair"):
            samples, replaced, regenerations = repair_samples(run, samples, step)
    outcome = samples.outcome
    with timed(timings, "adv"):
        if algo.keep is not None:
            outcome.keep = algo.keep(outcome)
        advantages = algo.advantage(outcome)

    trained_rollout = samples.rollout
    if algo.step_advantages is not None:
        with timed(timings, "step_adv"):
            trained_rollout, advantages = algo.step_advantages(trained_rollout, step_scorer(run, samples))
    batch = PolicyBatch.from_rollout(trained_rollout)
    mu = algo.config.num_iterations
    # Inner update k draws its estimator masks from its own seed, shared by old, ref and current.
    seeds = [int(counter_hash(cfg.trainer.seed, step, SEED_UPDATE + k)) for k in range(mu)]
    with timed(timings, "old_log_prob"):
        old = [policy.score(algo.estimator, batch, s) for s in seeds] if mu > 1 else None
    with timed(timings, "ref"):
        ref = [run.reference.score(algo.estimator, batch, s) for s in seeds] if run.reference is not None else None
    trained = batch.completion_mask & outcome.keep[:, None]
    if algo.token_filter is not None:
        with timed(timings, "token_filter"):
            trained = trained & algo.token_filter(old[0] if old else policy.score(algo.estimator, batch, seeds[0]), batch)
    weights, nll_weights = loss_weights(run, trained, outcome)

    sums: dict[str, float] = defaultdict(float)
    grad_norm = 0.0
    mbs = cfg.trainer.micro_batch_size
    with timed(timings, "update"):
        for k in range(mu):
            targets = UpdateTargets(advantages, weights, old[k].logp if old else None, ref[k].logp if ref else None, nll_weights)
            for s in range(0, len(batch), mbs):
                micro = slice(s, s + mbs)
                terms = policy.loss_and_backward(PolicyObjective(algo, targets.select(micro)), batch.select(micro), seeds[k])
                for name, value in terms.items():
                    sums[name] += value / mu
            grad_norm += policy.step() / mu
        lr = run.scheduler.get_last_lr()[0]
        run.scheduler.step()

    metrics = global_metrics(run, samples, advantages, weights, sums)
    metrics.update({"actor/grad_norm": grad_norm, "actor/lr": lr})
    if algo.repair is not None:
        metrics["rollout/repaired"] = all_reduce_sum(replaced.numel(), run.world.device).item()
        metrics["rollout/repair_rollouts"] = float(regenerations)
    timings["timing_s/step"] = time.perf_counter() - start
    metrics.update(timings)
    throughput(metrics)
    run.last_samples = sample_rows(run, samples)
    return metrics


def loss_weights(run: Run, trained: Tensor, outcome: Outcome) -> tuple[Tensor, Tensor | None]:
    """Per-token loss weights [B, Lc] of the ``trained`` tokens, normalised over every rank's
    tokens and kept samples (see :func:`~diffrl.algorithms.losses.token_weights`), and the NLL
    term's token-mean weights over the samples it covers (None without an NLL term)."""
    cfg, device, nll = run.cfg, run.world.device, run.algorithm.nll
    mbs, length = cfg.trainer.micro_batch_size, cfg.rollout.max_completion_length
    weights = token_weights(
        trained, run.algorithm.config.loss_type, mbs, length,
        global_tokens=all_reduce_sum(trained.sum(), device).item(),
        global_sequences=all_reduce_sum(outcome.keep.sum(), device).item(),
        world_size=run.world.world_size,
    )
    if nll is None:
        return weights, None
    nll_tokens = trained & nll.samples(outcome)[:, None]
    return weights, token_weights(nll_tokens, "dapo", mbs, length, global_tokens=all_reduce_sum(nll_tokens.sum(), device).item())


def train(cfg: Config, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a recipe to completion; returns the summary also written to ``summary.json``."""
    if cfg.algorithm.name == UNMASKING_GRPO:
        from diffrl.trainer.unmasking_policy import train_unmasking_policy  # trains the unmasking policy, not the dLLM

        return train_unmasking_policy(cfg, resolved)
    run = setup(cfg, init_distributed(cfg.trainer.device))
    try:
        return _train(run, resolved)
    finally:
        run.close()


def _train(run: Run, resolved: dict[str, Any] | None) -> dict[str, Any]:
    cfg, world = run.cfg, run.world
    start_step = 0
    ckpt_root = run.run_dir / "checkpoints"
    resume = cfg.trainer.resume
    path = latest_checkpoint(ckpt_root) if resume == "auto" else (None if resume == "never" else Path(resume))
    summary: dict[str, Any] = {}
    if path is not None:
        state = run.policy.load_checkpoint(path)
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

    step_fn = rl_step if cfg.trainer.mode == "rl" else sft_train_step
    every = cfg.trainer.log_samples_every
    t_train = time.perf_counter()
    history: list[float] = []
    for step in range(start_step, cfg.trainer.total_steps):
        metrics = step_fn(run, step)
        if cfg.trainer.val_every and (step + 1) % cfg.trainer.val_every == 0:
            metrics.update(validate(run))
        history.append(metrics.get("critic/score/mean", metrics.get("sft/loss", float("nan"))))
        logger.log(step + 1, metrics)
        if every and (step + 1) % every == 0 and run.last_samples:
            logger.log_samples(step + 1, run.last_samples)
        last = step + 1 == cfg.trainer.total_steps
        if (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0) or last:
            trainer_state = {"scheduler": run.scheduler.state_dict(), "loader": run.loader.state_dict()}
            run.policy.save_checkpoint(ckpt_root, step + 1, trainer_state, checkpoint_meta(run))

    save_final(run)
    if world.is_main:
        if cfg.trainer.mode == "rl":
            summary.update(reward_summary(history, time.perf_counter() - t_train))
        else:
            summary.update({"sft/loss_last": history[-1] if history else float("nan"), "train_minutes": (time.perf_counter() - t_train) / 60})
        if cfg.trainer.plot and cfg.trainer.mode == "rl" and history:
            summary["reward_plot"] = str(plot_reward_curve(run.run_dir))
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.trainer.mode == "rl" and history:
            logger.write(
                f"reward {summary['reward/first_10']:.3f} (first 10 steps) -> {summary['reward/last_10']:.3f} (last 10) "
                f"over {len(history)} steps in {summary['rl_minutes']:.2f} min; run folder: {run.run_dir}"
            )
    logger.close(summary)
    return summary
