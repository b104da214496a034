"""The samples of one RL step: this rank's prompts rolled out by the policy, scored by the task's
rewards, and (for algorithms with a group repair) partly regenerated.

Rollout under sharding: every rank generates its own prompts' samples with the current weights
(:meth:`~diffrl.trainer.policy.Policy.generate`); the ``num_generations`` samples of a prompt stay
on one rank, so group advantages need no communication.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.correctness import is_correct
from diffrl.algorithms.registry import RolloutContext
from diffrl.rewards.registry import RewardBatch
from diffrl.rng import SEED_REGENERATE, SEED_REPAIR, counter_hash
from diffrl.rollout import Rollout, RolloutConfig
from diffrl.rollout.trajectory import decode_completions
from diffrl.trainer.build import Run
from diffrl.trainer.distributed import all_gather_rows
from diffrl.trainer.sft import response_text


@dataclass
class Samples:
    """This rank's samples of the step: ``num_generations`` consecutive rows per prompt, each with
    its task row, completion text, rewards and what the advantage rule sees of it."""

    rollout: Rollout
    rows: list[dict[str, Any]]
    completions: list[str]
    rewards: RewardBatch
    outcome: Outcome
    # Prompts cut to task.max_prompt_length on this rank.
    truncated_prompts: int


def rollout_config(run: Run) -> RolloutConfig:
    """The recipe's rollout settings, as the algorithm needs them (e.g. JustGRPO's decode order)."""
    hook = run.algorithm.rollout_config
    return hook(run.cfg.rollout) if hook is not None else run.cfg.rollout


def generate_rollout(run: Run, rows: list[dict[str, Any]], step: int) -> tuple[Rollout, list[dict[str, Any]], int]:
    """``num_generations`` samples per prompt of this rank's ``rows``, generated in chunks of
    ``trainer.rollout_batch_size``; returns the rollout, each sample's row and the number of
    prompts cut to ``task.max_prompt_length``."""
    world, group = run.world, run.algorithm.config.num_generations
    prompt_ids, prompt_mask, truncated = run.encoder(rows)
    prompt_ids = prompt_ids.repeat_interleave(group, 0).to(world.device)
    prompt_mask = prompt_mask.repeat_interleave(group, 0).to(world.device)
    local = prompt_ids.shape[0]
    # Globally unique sample ids key every random draw of this sample (rollout and estimator).
    first = (step * world.world_size + world.rank) * local
    sample_ids = torch.arange(first, first + local, device=world.device)
    rollout = run.policy.generate(prompt_ids, prompt_mask, rollout_config(run), sample_ids=sample_ids, chunk=run.cfg.trainer.rollout_batch_size)
    return rollout, [r for r in rows for _ in range(group)], truncated


def score_samples(run: Run, rollout: Rollout, rows: list[dict[str, Any]], truncated_prompts: int) -> Samples:
    """The rollout's completions as text, their rewards, and the outcome the advantage rule reads."""
    completions = rollout.decode(run.tokenizer)
    rewards = run.rewards(completions, rows)
    device = run.world.device
    outcome = Outcome(
        rewards=rewards.total.to(device),
        correct=is_correct(rewards, run.algorithm.config.correctness_reward).to(device),
        tpf=rollout.tokens_per_forward.to(device),
        truncated=rollout.truncated.to(device),
        keep=torch.ones(len(rewards.total), dtype=torch.bool, device=device),
        group_size=run.algorithm.config.num_generations,
    )
    return Samples(rollout, rows, completions, rewards, outcome, truncated_prompts)


def step_scorer(run: Run, samples: Samples) -> Callable[[Tensor], Tensor]:
    """The score an :attr:`~diffrl.algorithms.registry.Algorithm.step_advantages` hook calls:
    token rows [B, T, Lc] (row b of sample b) -> the task's total reward [B, T], the texts decoded
    as the completions are."""
    rollout = samples.rollout

    def score(tokens: Tensor) -> Tensor:
        b, t, _ = tokens.shape
        texts = decode_completions(tokens.reshape(b * t, -1), rollout.stop_token_ids, run.tokenizer)
        rewards = run.rewards(texts, [row for row in samples.rows for _ in range(t)])
        return rewards.total.to(run.world.device).view(b, t)

    return score


def repair_samples(run: Run, samples: Samples, step: int) -> tuple[Samples, Tensor, int]:
    """The algorithm's group repair: the samples (rescored when rows were replaced), the rows it
    replaced and the rounds of regeneration the ranks ran.

    A sharded strategy gathers the weights collectively in every rollout, so ranks regenerate in
    lockstep: before each regeneration every rank says whether it is about to regenerate, and a
    rank with nothing (more) to regenerate joins each round without generating.
    """
    assert run.algorithm.repair is not None
    rounds = [0]

    def any_rank(busy: bool) -> bool:
        flags = all_gather_rows(torch.tensor([busy], device=run.world.device), run.world.device)
        rounds[0] += int(flags.any())
        return bool(flags.any())

    rollout, replaced = run.algorithm.repair(samples.rollout, samples.outcome, repair_context(run, samples, step, any_rank))
    while any_rank(False):
        run.policy.keep_in_lockstep()
    if replaced.numel():
        samples = score_samples(run, rollout, samples.rows, samples.truncated_prompts)
    return samples, replaced, rounds[0]


def repair_context(run: Run, samples: Samples, step: int, any_rank: Callable[[bool], bool]) -> RolloutContext:
    """The group-repair hook's access to generation (announced to the other ranks through
    ``any_rank``), correctness, and the rows' reference texts."""
    cfg, rollout, rows = run.cfg, samples.rollout, samples.rows
    # Regenerated samples keep their slot's sample id, so they need draws of their own.
    regen_cfg = replace(rollout_config(run), seed=int(counter_hash(cfg.rollout.seed, step, SEED_REGENERATE)))
    chunk = cfg.trainer.rollout_batch_size or len(rows)

    def regenerate(index: Tensor, fixed_tokens: Tensor) -> Rollout:
        any_rank(True)
        return run.policy.generate(
            rollout.prompt_ids[index], rollout.prompt_mask[index], regen_cfg, sample_ids=rollout.sample_ids[index], chunk=chunk, fixed_tokens=fixed_tokens
        )

    def correct(new: Rollout, index: Tensor) -> Tensor:
        return is_correct(run.rewards(new.decode(run.tokenizer), [rows[i] for i in index.tolist()]), run.algorithm.config.correctness_reward)

    return RolloutContext(
        regenerate=regenerate,
        correct=correct,
        reference_text=lambda i: response_text(rows[i], cfg.task.sft_response_field),
        tokenize=lambda text: run.tokenizer(text, add_special_tokens=False)["input_ids"],
        seed=int(counter_hash(cfg.trainer.seed, step, SEED_REPAIR)),
    )
