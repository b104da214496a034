"""The training loop: rollout -> rewards -> advantages -> num_iterations updates -> metrics -> checkpoint.

One readable loop for every algorithm, family and strategy (``trainer.mode=sft`` swaps the RL
step for a supervised one). Parallelism and LoRA are applied to the model in :func:`setup`; the
steps call the model only through ``run.policy`` (:class:`~diffrl.trainer.strategy.Strategy`):
``run.policy(fn, *args)`` runs ``fn(model, *args)``, ``backward`` and ``step`` finish the update.

Rollout under sharding: every rank generates its own prompts' samples with the current weights
(``Strategy.generate``); the ``num_generations`` samples of a prompt stay on one rank, so group
advantages need no communication. Losses are normalised by global token/sequence counts and
gradients summed over ranks, so N ranks take the one-process step on the same global batch.
Logged metrics describe the global batch (gathered or all-reduced before rank 0 logs them).
"""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from diffrl.algorithms import Algorithm, PolicyBatch, build_algorithm
from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.estimators import TokenScores
from diffrl.algorithms.losses import token_weights
from diffrl.algorithms.registry import RolloutContext
from diffrl.algorithms.unmasking_grpo import NAME as UNMASKING_GRPO
from diffrl.data import PromptEncoder, PromptLoader
from diffrl.kernels import set_backend
from diffrl.models import DiffusionLM, load_pretrained, save_pretrained
from diffrl.rewards import RewardRunner
from diffrl.rewards.registry import RewardBatch
from diffrl.rng import counter_hash
from diffrl.rollout import RolloutConfig, generate_chunked
from diffrl.rollout.trajectory import Rollout
from diffrl.trainer.build import TaskData, load_tokenizer, prepare_model_folder, prepare_task, prompt_encoder
from diffrl.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from diffrl.trainer.config import Config
from diffrl.trainer.distributed import World, all_gather_rows, all_reduce_sum, all_reduce_sums, init_distributed
from diffrl.trainer.logger import MetricLogger
from diffrl.trainer.lora import apply_lora, lora_targets, merge_adapter, save_adapter
from diffrl.trainer.optim import lr_multiplier
from diffrl.trainer.plots import plot_reward_curve
from diffrl.trainer.sft import response_text, sft_batch, sft_step
from diffrl.trainer.strategy import Strategy, build_strategy, copy_weights


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
    policy: Strategy
    # Calls fn(model, *args) under the KL reference's weights (None when beta = 0).
    reference: Callable[..., Any] | None
    # The PeftModel owning the adapters of a LoRA run.
    peft: Any | None
    tokenizer: Any
    algorithm: Algorithm
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: PromptLoader
    encoder: PromptEncoder
    rewards: RewardRunner
    task: TaskData
    # A few of the latest step's samples as text (RL), for the W&B samples table.
    last_samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> DiffusionLM:
        return self.policy.model


def setup(cfg: Config, world: World) -> Run:
    run_dir = Path(cfg.trainer.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.trainer.seed + world.rank)
    set_backend(cfg.trainer.kernels)
    task = prepare_task(cfg.task, run_dir, world)
    model_dir = prepare_model_folder(cfg.model, task, run_dir, world)
    tokenizer = load_tokenizer(model_dir)
    model = load_pretrained(model_dir, dtype=cfg.model.dtype, device=world.device, overrides=cfg.model.overrides())
    algorithm = build_algorithm(cfg.algorithm)
    needs_reference = cfg.trainer.mode == "rl" and cfg.algorithm.beta > 0
    peft = None
    frozen = None
    if cfg.trainer.lora.enabled:
        # Every rank must draw the same initial adapters (they are sharded or replicated from
        # each rank's own copy), so the draw ignores the per-rank seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.trainer.seed)
            peft = apply_lora(model, cfg.trainer.lora, lora_targets(model, cfg.model.lora_target_modules), model_dir)
    elif needs_reference:
        # Full fine-tuning keeps a frozen copy of the initial policy as the KL reference.
        frozen = copy.deepcopy(model).requires_grad_(False)
    policy, scheduler = build_strategy(model, cfg, optim=cfg.optim, total_steps=cfg.trainer.total_steps)
    reference: Callable[..., Any] | None = None
    if needs_reference and peft is not None:
        reference = _adapter_disabled(peft, policy)
    elif frozen is not None:
        reference, _ = build_strategy(frozen, cfg, optim=None)
    loader = PromptLoader(task.train_rows, cfg.trainer.batch_size, seed=cfg.trainer.seed, rank=world.rank, world_size=world.world_size)
    encoder = prompt_encoder(tokenizer, cfg.task, model.facts.pad_token_id)
    assert scheduler is not None
    return Run(cfg, world, run_dir, model_dir, policy, reference, peft, tokenizer, algorithm, scheduler, loader, encoder, RewardRunner(cfg.task.rewards), task)


def _adapter_disabled(peft: Any, policy: Strategy) -> Callable[..., Any]:
    """The LoRA reference: the policy's own call with the adapter switched off (the frozen base)."""

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        with peft.disable_adapter():
            return policy(fn, *args)

    return call


def decode_completions(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Completion text up to and including the first stop token, special tokens dropped."""
    ids = [row[mask].tolist() for row, mask in zip(rollout.completion_ids.cpu(), rollout.completion_mask.cpu())]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def generate_in_chunks(
    model: DiffusionLM, prompt_ids: Tensor, prompt_mask: Tensor, sample_ids: Tensor, cfg: RolloutConfig, chunk: int, fixed_tokens: Tensor | None = None
) -> Rollout:
    """``generate`` over the batch in chunks of ``chunk`` samples (``fixed_tokens``: inpainting)."""
    return generate_chunked(model, prompt_ids, prompt_mask, cfg, chunk=chunk, sample_ids=sample_ids, fixed_tokens=fixed_tokens)


def rollout_config(run: Run) -> RolloutConfig:
    """The recipe's rollout settings, as the algorithm needs them (e.g. JustGRPO's decode order)."""
    hook = run.algorithm.rollout_config
    return hook(run.cfg.rollout) if hook is not None else run.cfg.rollout


def rollout_batch(run: Run, rows: list[dict[str, Any]], step: int) -> tuple[Rollout, list[dict[str, Any]], int]:
    """``num_generations`` samples per prompt of this rank's rows, generated in chunks of ``rollout_batch_size``."""
    group = run.cfg.algorithm.num_generations
    prompt_ids, prompt_mask, truncated = run.encoder(rows)
    prompt_ids = prompt_ids.repeat_interleave(group, 0).to(run.world.device)
    prompt_mask = prompt_mask.repeat_interleave(group, 0).to(run.world.device)
    local = prompt_ids.shape[0]
    # Globally unique sample ids key every random draw of this sample (rollout and estimator).
    first = (step * run.world.world_size + run.world.rank) * local
    sample_ids = torch.arange(first, first + local, device=run.world.device)
    chunk = run.cfg.trainer.rollout_batch_size or local
    rollout = run.policy.generate(generate_in_chunks, prompt_ids, prompt_mask, sample_ids, rollout_config(run), chunk)
    return rollout, [r for r in rows for _ in range(group)], truncated


def gather_rewards(rewards: RewardBatch, device: torch.device) -> RewardBatch:
    """Every rank's rewards, for global metrics (reasons stay local)."""
    return RewardBatch(
        total=all_gather_rows(rewards.total.to(device), device),
        per_reward={k: all_gather_rows(v.to(device), device) for k, v in rewards.per_reward.items()},
        reasons={},
        errors=int(all_reduce_sum(rewards.errors, device).item()),
    )


def outcome_of(run: Run, rollout: Rollout, rewards: RewardBatch) -> Outcome:
    """What the advantage rule and the filters see of this rank's samples."""
    device = run.world.device
    return Outcome(
        rewards=rewards.total.to(device),
        correct=correctness(run, rewards).to(device),
        tpf=rollout.tokens_per_forward.to(device),
        truncated=rollout.truncated.to(device),
        keep=torch.ones(len(rewards.total), dtype=torch.bool, device=device),
        group_size=run.algorithm.config.num_generations,
    )


def correctness(run: Run, rewards: RewardBatch) -> Tensor:
    """Samples whose ``algorithm.correctness_reward`` (default: the total reward) is positive."""
    name = run.algorithm.config.correctness_reward
    if name is None:
        return rewards.total > 0
    if name not in rewards.per_reward:
        raise ValueError(f"algorithm.correctness_reward={name!r} is not one of this task's rewards: {', '.join(rewards.per_reward)}")
    return rewards.per_reward[name] > 0


def repair_rollout(run: Run, rollout: Rollout, outcome: Outcome, rows: list[dict[str, Any]], step: int) -> tuple[Rollout, Tensor, int]:
    """The algorithm's group repair; returns the rollout, the rows it replaced and the rounds of
    regeneration the ranks ran.

    A sharded strategy gathers the weights collectively in every rollout, so ranks regenerate in
    lockstep: before each regeneration every rank says whether it is about to regenerate, and a
    rank with nothing (more) to regenerate joins each round with an empty rollout.
    """
    assert run.algorithm.repair is not None
    rounds = [0]

    def any_rank(busy: bool) -> bool:
        flags = all_gather_rows(torch.tensor([busy], device=run.world.device), run.world.device)
        rounds[0] += int(flags.any())
        return bool(flags.any())

    rollout, replaced = run.algorithm.repair(rollout, outcome, rollout_context(run, rollout, rows, step, any_rank))
    while any_rank(False):
        run.policy.generate(lambda model: None)
    return rollout, replaced, rounds[0]


def rollout_context(run: Run, rollout: Rollout, rows: list[dict[str, Any]], step: int, any_rank: Callable[[bool], bool]) -> RolloutContext:
    """The group-repair hook's access to generation (announced to the other ranks through
    ``any_rank``), rewards and the rows' reference texts."""
    cfg = run.cfg
    # Regenerated samples keep their slot's sample id, so they need draws of their own.
    regen_cfg = replace(rollout_config(run), seed=int(counter_hash(cfg.rollout.seed, step, 1)))
    chunk = cfg.trainer.rollout_batch_size or len(rows)

    def regenerate(index: Tensor, fixed_tokens: Tensor) -> Rollout:
        any_rank(True)
        return run.policy.generate(
            generate_in_chunks, rollout.prompt_ids[index], rollout.prompt_mask[index], rollout.sample_ids[index], regen_cfg, chunk, fixed_tokens
        )

    def correct(new: Rollout, index: Tensor) -> Tensor:
        return correctness(run, run.rewards(decode_completions(run.tokenizer, new), [rows[i] for i in index.tolist()]))

    return RolloutContext(
        regenerate=regenerate,
        correct=correct,
        reference_text=lambda i: response_text(rows[i], cfg.task.sft_response_field),
        tokenize=lambda text: run.tokenizer(text, add_special_tokens=False)["input_ids"],
        seed=int(counter_hash(cfg.trainer.seed, step, 2)),
    )


def score_all(model: DiffusionLM, algorithm: Algorithm, batch: PolicyBatch, seed: int, micro_batch_size: int) -> TokenScores:
    """The estimator over the whole batch, in micro-batches (old / reference; call without grad)."""
    parts = [algorithm.estimator(model, mb, seed) for mb in batch.split(micro_batch_size)]
    return TokenScores(*(torch.cat([getattr(p, f) for p in parts]) for f in ("logp", "mask", "entropy")))


def policy_loss(
    model: DiffusionLM,
    algorithm: Algorithm,
    batch: PolicyBatch,
    seed: int,
    old_logp: Tensor | None,
    advantages: Tensor,
    weights: Tensor,
    ref_logp: Tensor | None,
    nll_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch's weighted loss and the weighted sums its metrics need (``normalized/``
    terms are already global means)."""
    scores = algorithm.estimator(model, batch, seed)
    old = old_logp if old_logp is not None else scores.logp.detach()
    loss, terms = algorithm.loss(scores.logp, old, advantages, weights, ref_logp=ref_logp)
    terms["actor/entropy"] = (scores.entropy * weights).sum()
    if algorithm.nll is not None and nll_weights is not None:
        nll = -(scores.logp * nll_weights).sum()
        loss = loss + algorithm.nll.coef * nll
        terms["normalized/actor/nll_loss"] = nll.detach()
    return loss, terms


def rl_step(run: Run, step: int) -> dict[str, float]:
    cfg, algo, world = run.cfg, run.algorithm, run.world
    timings: dict[str, float] = {}
    start = time.perf_counter()

    with timed(timings, "gen"):
        run.policy.train(False)
        rollout, rows, truncated_prompts = rollout_batch(run, run.loader.next_batch(), step)
    with timed(timings, "reward"):
        completions = decode_completions(run.tokenizer, rollout)
        rewards = run.rewards(completions, rows)
        outcome = outcome_of(run, rollout, rewards)
    if algo.repair is not None:
        with timed(timings, "repair"):
            rollout, replaced, regenerations = repair_rollout(run, rollout, outcome, rows, step)
            if replaced.numel():
                completions = decode_completions(run.tokenizer, rollout)
                rewards = run.rewards(completions, rows)
                outcome = outcome_of(run, rollout, rewards)
    run.policy.train(True)
    with timed(timings, "adv"):
        if algo.keep is not None:
            outcome.keep = algo.keep(outcome)
        advantages = algo.advantage(outcome)

    batch = PolicyBatch.from_rollout(rollout)
    mbs = cfg.trainer.micro_batch_size
    mu = algo.config.num_iterations
    seeds = [int(counter_hash(cfg.trainer.seed, step, k)) for k in range(mu)]
    with timed(timings, "old_log_prob"), torch.no_grad():
        old = [run.policy(score_all, algo, batch, s, mbs) for s in seeds] if mu > 1 else None
    with timed(timings, "ref"), torch.no_grad():
        ref = [run.reference(score_all, algo, batch, s, mbs) for s in seeds] if run.reference is not None else None
    trained = batch.completion_mask & outcome.keep[:, None]
    if algo.token_filter is not None:
        with timed(timings, "token_filter"), torch.no_grad():
            before = old[0] if old else run.policy(score_all, algo, batch, seeds[0], mbs)
            trained = trained & algo.token_filter(before, batch)
    weights = loss_weights(run, trained, outcome.keep)
    nll_weights = None
    if algo.nll is not None:
        nll_tokens = trained & algo.nll.samples(outcome)[:, None]
        nll_weights = token_weights(nll_tokens, "dapo", mbs, cfg.rollout.max_completion_length, global_tokens=all_reduce_sum(nll_tokens.sum(), world.device).item())

    sums: dict[str, float] = defaultdict(float)
    grad_norm = 0.0
    with timed(timings, "update"):
        for k in range(mu):
            for s in range(0, len(batch), mbs):
                idx = slice(s, s + mbs)
                loss, terms = run.policy(
                    policy_loss, algo, batch.select(idx), seeds[k], old[k].logp[idx] if old else None,
                    advantages[idx], weights[idx], ref[k].logp[idx] if ref else None, nll_weights[idx] if nll_weights is not None else None,
                )
                run.policy.backward(loss)
                for name, value in terms.items():
                    sums[name] += value.item() / mu
            grad_norm += run.policy.step() / mu
        lr = run.scheduler.get_last_lr()[0]
        run.scheduler.step()

    metrics = global_metrics(run, rollout, rewards, advantages, weights, outcome.keep, truncated_prompts, sums)
    metrics.update({"actor/grad_norm": grad_norm, "actor/lr": lr})
    if algo.repair is not None:
        metrics["rollout/repaired"] = all_reduce_sum(replaced.numel(), world.device).item()
        metrics["rollout/repair_rollouts"] = float(regenerations)
    timings["timing_s/step"] = time.perf_counter() - start
    metrics.update(timings)
    tokens = metrics.pop("tokens")
    metrics["perf/throughput"] = tokens / timings["timing_s/step"]
    metrics["perf/gen_tokens_per_s"] = tokens / max(timings["timing_s/gen"], 1e-9)
    run.last_samples = sample_rows(run, rollout, completions, rewards)
    return metrics


def loss_weights(run: Run, trained: Tensor, keep: Tensor) -> Tensor:
    """Per-token loss weights [B, Lc] for the ``trained`` tokens, normalised over every rank's
    tokens and kept samples (see :func:`~diffrl.algorithms.losses.token_weights`)."""
    cfg, world = run.cfg, run.world
    loss_type = run.algorithm.config.loss_type
    weights = token_weights(
        trained, loss_type, cfg.trainer.micro_batch_size, cfg.rollout.max_completion_length,
        global_tokens=all_reduce_sum(trained.sum(), world.device).item(),
        global_sequences=all_reduce_sum(keep.sum(), world.device).item(),
    )
    return weights / (world.world_size if loss_type == "bnpo" else 1)


def global_metrics(
    run: Run, rollout: Rollout, rewards: RewardBatch, advantages: Tensor, weights: Tensor, keep: Tensor, truncated_prompts: int, sums: dict[str, float]
) -> dict[str, float]:
    """The step's metrics over every rank's samples (``sums``: this rank's weighted actor sums),
    plus ``tokens``, the global completion-token count."""
    device = run.world.device
    local = {
        **sums, "weight_total": weights.sum().item(), "tokens": rollout.completion_mask.sum().item(), "truncated_prompts": truncated_prompts,
        "kept": float(keep.sum()), "samples": float(keep.numel()),
    }
    totals = all_reduce_sums(local, device)
    weight_total = totals.pop("weight_total") or 1.0
    metrics = {k: v / weight_total for k, v in totals.items() if k.startswith("actor/")}
    metrics.update({k.removeprefix("normalized/"): v for k, v in totals.items() if k.startswith("normalized/")})
    metrics["critic/kept_ratio"] = totals["kept"] / max(totals["samples"], 1)
    metrics.update(gather_rewards(rewards, device).metrics())
    metrics.update(rollout.gather(device).metrics())
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


def sample_rows(run: Run, rollout: Rollout, completions: list[str], rewards: RewardBatch) -> list[dict[str, Any]]:
    """A few of this rank's samples as text, for the W&B samples table."""
    count = min(run.cfg.trainer.log_samples_count, len(completions))
    prompts = run.tokenizer.batch_decode([row[mask].tolist() for row, mask in zip(rollout.prompt_ids[:count].cpu(), rollout.prompt_mask[:count].cpu())])
    return [{"prompt": prompts[i], "completion": completions[i], "reward": float(rewards.total[i])} for i in range(count)]


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
    metrics = sft_step(run.policy, batch, int(counter_hash(cfg.trainer.seed, step, 7)), micro_batch_size=cfg.trainer.micro_batch_size, global_size=cfg.trainer.batch_size)
    metrics["actor/lr"] = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    metrics["timing_s/step"] = time.perf_counter() - start
    tokens = all_reduce_sum(batch.completion_mask.sum(), world.device).item()
    metrics["perf/throughput"] = tokens / metrics["timing_s/step"]
    return metrics


def warm_start(run: Run) -> dict[str, float]:
    """Supervised masked-diffusion steps on the task's reference responses before RL.

    They run through the RL strategy and optimizer (a DeepSpeed engine owns its optimizer) on
    their own learning rate, warmup then cosine decay; afterwards the optimizer state is cleared
    and the RL rates restored, so RL starts exactly as with a fresh optimizer.
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
        metrics = sft_step(run.policy, batch, int(counter_hash(cfg.trainer.seed, step, 7)), micro_batch_size=cfg.trainer.micro_batch_size, global_size=ws.batch_size)
        losses.append(metrics["sft/loss"])
    optimizer.state.clear()
    for group, rate in zip(optimizer.param_groups, rl_rates):
        group["lr"] = rate
    return {"warm_start/loss_first": losses[0], "warm_start/loss_last": sum(losses[-10:]) / len(losses[-10:])}


def checkpoint_meta(run: Run) -> dict[str, Any]:
    """What export needs to rebuild the model of a checkpoint (see scripts/export_hf.py)."""
    lora = run.cfg.trainer.lora
    return {
        "model_dir": str(run.model_dir.resolve()),
        "dtype": run.cfg.model.dtype,
        "strategy": run.cfg.trainer.strategy,
        "lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "targets": _json_targets(run.peft)} if run.peft else None,
    }


def _json_targets(peft: Any) -> list[str] | str:
    targets = peft.peft_config["default"].target_modules  # peft keeps a list as a set
    return targets if isinstance(targets, str) else sorted(targets)


def save_final(run: Run) -> None:
    """The trained model in the published layout in ``final/`` (rank 0 writes; every rank gathers).
    A LoRA run also writes its adapter as a standard peft folder in ``final_adapter/`` and merges it."""
    main, folder = run.world.is_main, run.run_dir / "final"
    if run.peft is not None:
        adapter = run.policy.full_state_dict(trainable_only=True)
        if main:
            save_adapter(run.peft, run.run_dir / "final_adapter", adapter)
            merged = merge_adapter(run.run_dir / "final_adapter", run.model_dir, dtype=run.cfg.model.dtype)
            save_pretrained(merged, folder, source_folder=run.model_dir)
        return
    state = run.policy.full_state_dict()
    if main:
        save_pretrained(run.model, folder, state_dict=state, source_folder=run.model_dir)


def train(cfg: Config, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a recipe to completion; returns the summary also written to ``summary.json``."""
    if cfg.algorithm.name == UNMASKING_GRPO:
        from diffrl.trainer.unmasking_policy import train_unmasking_policy  # trains the unmasking policy, not the dLLM

        return train_unmasking_policy(cfg, resolved)
    world = init_distributed(cfg.trainer.device)
    run = setup(cfg, world)
    try:
        return _train(run, resolved)
    finally:
        run.policy.close()
        if isinstance(run.reference, Strategy):
            run.reference.close()


def _train(run: Run, resolved: dict[str, Any] | None) -> dict[str, Any]:
    cfg, world = run.cfg, run.world
    start_step = 0
    ckpt_root = run.run_dir / "checkpoints"
    resume = cfg.trainer.resume
    path = latest_checkpoint(ckpt_root) if resume == "auto" else (None if resume == "never" else Path(resume))
    summary: dict[str, Any] = {}
    if path is not None:
        state = load_checkpoint(path, run.policy)
        run.scheduler.load_state_dict(state["scheduler"])
        run.loader.load_state_dict(state["loader"])
        start_step = state["step"]
        summary["resumed_from"] = str(path)
    config_dict = resolved if resolved is not None else OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[arg-type]
    logger = MetricLogger(run.run_dir, cfg.trainer.wandb, config_dict, cfg.trainer.total_steps, start_step=start_step, rank=world.rank, progress_bar=cfg.trainer.progress_bar)
    if cfg.trainer.warm_start.steps and start_step == 0:
        t0 = time.perf_counter()
        summary.update(warm_start(run))
        if isinstance(run.reference, Strategy):
            # RL starts from the warm-started policy, so that is what the KL term anchors to. (A
            # LoRA run's reference stays the base: the warm start trained the adapter.)
            copy_weights(run.policy, run.reference)
        logger.write(f"warm start: {cfg.trainer.warm_start.steps} SFT steps, loss {summary['warm_start/loss_first']:.3f} -> {summary['warm_start/loss_last']:.3f} ({time.perf_counter() - t0:.1f}s)")

    step_fn = rl_step if cfg.trainer.mode == "rl" else sft_train_step
    every = cfg.trainer.log_samples_every
    t_train = time.perf_counter()
    history: list[float] = []
    for step in range(start_step, cfg.trainer.total_steps):
        metrics = step_fn(run, step)
        if cfg.trainer.val_every and (step + 1) % cfg.trainer.val_every == 0:
            from diffrl.eval.validate import validate  # diffrl.eval builds on this module

            metrics.update(validate(run))
        history.append(metrics.get("critic/score/mean", metrics.get("sft/loss", float("nan"))))
        logger.log(step + 1, metrics)
        if every and (step + 1) % every == 0 and run.last_samples:
            logger.log_samples(step + 1, run.last_samples)
        last = step + 1 == cfg.trainer.total_steps
        if (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0) or last:
            trainer_state = {"scheduler": run.scheduler.state_dict(), "loader": run.loader.state_dict()}
            save_checkpoint(ckpt_root, step + 1, run.policy, trainer_state, checkpoint_meta(run))

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


def reward_summary(rewards: list[float], seconds: float) -> dict[str, float]:
    head, tail = rewards[:10], rewards[-10:]
    if not rewards:
        return {"rl_minutes": seconds / 60}
    return {"reward/first_10": sum(head) / len(head), "reward/last_10": sum(tail) / len(tail), "rl_minutes": seconds / 60, "rl_steps": len(rewards)}
