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

import torch
from omegaconf import OmegaConf
from torch import Tensor

from diffrl.algorithms import PolicyBatch
from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.losses import token_weights
from diffrl.algorithms.objective import PolicyObjective, UpdateTargets
from diffrl.algorithms.unmasking_grpo import NAME as UNMASKING_GRPO
from diffrl.rng import SEED_UPDATE, counter_hash
from diffrl.trainer.banner import banner
from diffrl.trainer.build import Run, setup
from diffrl.trainer.config import Config
from diffrl.trainer.distributed import all_reduce_sum, init_distributed
from diffrl.trainer.export import checkpoint_meta, save_final
from diffrl.trainer.global_batch import global_advantages
from diffrl.trainer.logger import MetricLogger
from diffrl.trainer.optim import restart
from diffrl.trainer.plots import plot_reward_curve
from diffrl.trainer.resume import ResumePlan, finished_summary, plan_resume, save_config
from diffrl.trainer.sampling import generate_rollout, repair_samples, score_samples, step_scorer
from diffrl.trainer.schedule import mini_batch_rows, num_mini_batches, update_epochs
from diffrl.trainer.sft import run_warm_start, sft_train_step
from diffrl.trainer.step_metrics import global_metrics, reward_summary, run_metrics, sample_rows, throughput
from diffrl.trainer.stop import StopSignals
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
        outcome.keep, advantages = global_advantages(algo, outcome, run.world)

    trained_rollout = samples.rollout
    if algo.step_advantages is not None:
        with timed(timings, "step_adv"):
            trained_rollout, advantages = algo.step_advantages(trained_rollout, step_scorer(run, samples))
    batch = PolicyBatch.from_rollout(trained_rollout)
    mu = update_epochs(cfg)
    minis = mini_batch_rows(len(batch), algo.config.num_generations, num_mini_batches(cfg.trainer.batch_size, cfg.trainer.ppo_mini_batch_size, run.world.world_size), run.world.device)
    # Epoch k draws its estimator masks from its own seed, shared by old, ref and current.
    seeds = [int(counter_hash(cfg.trainer.seed, step, SEED_UPDATE + k)) for k in range(mu)]
    with timed(timings, "old_log_prob"):
        # Several optimizer steps per rollout: the ratio compares with the weights that rolled out.
        old = [policy.score(algo.estimator, batch, s) for s in seeds] if mu * len(minis) > 1 else None
    with timed(timings, "ref"):
        ref = [run.reference.score(algo.estimator, batch, s) for s in seeds] if run.reference is not None else None
    trained = batch.completion_mask & outcome.keep[:, None]
    if algo.token_filter is not None:
        with timed(timings, "token_filter"):
            trained = trained & algo.token_filter(old[0] if old else policy.score(algo.estimator, batch, seeds[0]), batch)
    weights, nll_weights = loss_weights(run, trained, outcome, minis)

    sums: dict[str, float] = defaultdict(float)
    grad_norm = 0.0
    mbs, steps = cfg.trainer.micro_batch_size, mu * len(minis)
    with timed(timings, "update"):
        if cfg.optim.reset_each_step:
            restart(run.policy.optimizer, run.scheduler)
        lr = run.scheduler.get_last_lr()[0]
        for k in range(mu):
            targets = UpdateTargets(advantages, weights, old[k].logp if old else None, ref[k].logp if ref else None, nll_weights)
            for rows in minis:
                mini, mini_targets = batch.select(rows), targets.select(rows)
                for s in range(0, len(mini), mbs):
                    micro = slice(s, s + mbs)
                    terms = policy.loss_and_backward(PolicyObjective(algo, mini_targets.select(micro)), mini.select(micro), seeds[k])
                    for name, value in terms.items():
                        # Weighted sums add up over mini-batches (their weights partition the
                        # batch); already-normalised terms are averaged over the steps.
                        sums[name] += value / (steps if name.startswith("normalized/") else mu)
                grad_norm += policy.step() / steps
                if cfg.optim.reset_each_step:
                    run.scheduler.step()
        if not cfg.optim.reset_each_step:
            run.scheduler.step()
        if run.reference is not None and algo.config.sync_ref_model and (step + 1) % algo.config.ref_model_sync_steps == 0:
            run.reference.mix_towards(policy, algo.config.ref_model_mixup_alpha)

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


def loss_weights(run: Run, trained: Tensor, outcome: Outcome, minis: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """Per-token loss weights [B, Lc] of the ``trained`` tokens, each mini-batch (rows ``minis``)
    normalised over every rank's tokens and kept samples of that mini-batch (see
    :func:`~diffrl.algorithms.losses.token_weights`), and the NLL term's token-mean weights over
    the samples it covers (None without an NLL term)."""
    cfg, device, nll = run.cfg, run.world.device, run.algorithm.nll
    mbs, length = cfg.trainer.micro_batch_size, cfg.rollout.max_completion_length
    nll_tokens = trained & nll.samples(outcome)[:, None] if nll is not None else None
    weights = torch.zeros(trained.shape, device=trained.device)
    nll_weights = torch.zeros_like(weights) if nll_tokens is not None else None
    for rows in minis:
        part = trained[rows]
        weights[rows] = token_weights(
            part, run.algorithm.config.loss_type, mbs, length,
            global_tokens=all_reduce_sum(part.sum(), device).item(),
            global_sequences=sequence_counts(run, outcome.keep, rows),
            world_size=run.world.world_size,
        )
        if nll_tokens is not None and nll_weights is not None:
            nll_part = nll_tokens[rows]
            nll_weights[rows] = token_weights(nll_part, "dapo", mbs, length, global_tokens=all_reduce_sum(nll_part.sum(), device).item())
    return weights, nll_weights


def sequence_counts(run: Run, keep: Tensor, rows: Tensor) -> float | Tensor:
    """The kept sequences over all ranks that normalise ``rows``: one count for the mini-batch, or
    per row [n, 1] the count of its normaliser set (global prompt p is in set p mod n_sets)."""
    per_set = run.algorithm.normaliser_prompts
    if per_set is None:
        return all_reduce_sum(keep[rows].sum(), run.world.device).item()
    n_sets = num_mini_batches(run.cfg.trainer.batch_size, per_set, run.world.world_size, f"algorithm={run.algorithm.config.name}'s loss normaliser set of")
    which = rows // run.algorithm.config.num_generations % n_sets
    counts = all_reduce_sum(torch.zeros(n_sets, dtype=torch.float64, device=keep.device).index_add_(0, which, keep[rows].double()), run.world.device)
    return counts[which][:, None].float()


def train(cfg: Config, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a recipe to completion; returns the summary also written to ``summary.json``.

    Where it starts is decided before anything is built (:func:`~diffrl.trainer.resume.plan_resume`):
    a finished run says so and returns its summary without work; ``trainer.resume=auto`` refuses a
    checkpoint of a different config. SIGTERM or Ctrl-C stops it at the next step boundary with a
    checkpoint (the summary then says ``stopped_at``).
    """
    world = init_distributed(cfg.trainer.device)
    plan = plan_resume(cfg)
    done = finished_summary(plan, Path(cfg.trainer.output_dir), world.is_main)
    if done is not None:
        return done
    if cfg.algorithm.name == UNMASKING_GRPO:
        from diffrl.trainer.unmasking_policy import train_unmasking_policy  # trains the unmasking policy, not the dLLM

        return train_unmasking_policy(cfg, world, plan, resolved)
    run = setup(cfg, world)
    if world.is_main:
        save_config(cfg)
    try:
        return _train(run, plan, resolved)
    finally:
        run.close()


def _train(run: Run, plan: ResumePlan, resolved: dict[str, Any] | None) -> dict[str, Any]:
    cfg, world = run.cfg, run.world
    start_step = 0
    ckpt_root = run.run_dir / "checkpoints"
    summary: dict[str, Any] = {}
    if plan.checkpoint is not None:
        state = run.policy.load_checkpoint(plan.checkpoint)
        run.scheduler.load_state_dict(state["scheduler"])
        run.loader.load_state_dict(state["loader"])
        start_step = state["step"]
        summary["resumed_from"] = str(plan.checkpoint)
    config_dict = resolved if resolved is not None else OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[arg-type]
    logger = MetricLogger(run.run_dir, cfg.trainer.wandb, config_dict, start_step=start_step, rank=world.rank, progress_bar=cfg.trainer.progress_bar)
    logger.write(banner(run, plan))

    def save(step: int) -> Path:
        trainer_state = {"scheduler": run.scheduler.state_dict(), "loader": run.loader.state_dict()}
        return run.policy.save_checkpoint(ckpt_root, step, trainer_state, checkpoint_meta(run), keep_last_n=cfg.trainer.keep_last_n)

    step_fn = rl_step if cfg.trainer.mode == "rl" else sft_train_step
    every = cfg.trainer.log_samples_every
    history: list[float] = []
    with StopSignals() as signals:
        if cfg.trainer.warm_start.steps and start_step == 0:
            warm = run_warm_start(run, logger, signals)
            if warm is None:
                logger.close()
                return {"stopped_at": 0, "signal": signals.name}
            summary.update(warm)
        t_train = time.perf_counter()
        logger.phase(cfg.trainer.mode, cfg.trainer.total_steps, initial=start_step)
        for step in range(start_step, cfg.trainer.total_steps):
            metrics = step_fn(run, step)
            metrics.update(run_metrics(run, step + 1))
            if cfg.trainer.val_every and (step + 1) % cfg.trainer.val_every == 0:
                metrics.update(validate(run))
            history.append(metrics.get("critic/score/mean", metrics.get("sft/loss", float("nan"))))
            logger.log(step + 1, metrics)
            if every and run.last_samples and (step == start_step or (step + 1) % every == 0):
                logger.log_samples(step + 1, run.last_samples)
            last = step + 1 == cfg.trainer.total_steps
            stop = signals.requested(world.device)
            if (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0) or last or stop:
                path = save(step + 1)
            if stop and not last:
                logger.write(signals.stopped(step + 1, cfg.trainer.total_steps, path))
                logger.close()
                return {"stopped_at": step + 1, "signal": signals.name, "checkpoint": str(path)}
    logger.end_phase()

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
