"""Validation during training: every ``trainer.val_every`` steps, the policy on a held-out slice.

The slice is the first ``trainer.val_size`` rows of ``task.val_files``, one sample each with the
training rollout recipe, scored by the task's rewards; a sample is correct by the definition
training uses (:func:`~diffrl.algorithms.correctness.is_correct` with
``algorithm.correctness_reward``). Rows are dealt to the ranks in turn, each rank generates its
share in one :meth:`~diffrl.trainer.policy.Policy.generate` call (sharded strategies gather
weights once per call, which every rank must join), and the sums are all-reduced, so every rank
returns the metrics of the whole slice. The per-sample measures are those ``diffrl.eval`` records.
"""

from __future__ import annotations

import time

import torch

from diffrl.algorithms.correctness import is_correct
from diffrl.errors import DiffrlConfigError
from diffrl.rollout.metrics import finalization_parallelism, kendall_tau
from diffrl.trainer.build import Run
from diffrl.trainer.distributed import all_reduce_sums

# Sample ids of validation samples start here, away from any training step's ids.
VAL_SAMPLE_OFFSET = 1 << 40


def validate(run: Run) -> dict[str, float]:
    """``val/<task>/{acc,score,tpf,nfe,afp,kendall_tau,response_length}`` and ``timing_s/val``."""
    cfg, world = run.cfg, run.world
    rows = run.task.val_rows[: cfg.trainer.val_size]
    if len(rows) < world.world_size:
        raise DiffrlConfigError(
            f"trainer.val_size={cfg.trainer.val_size} leaves {len(rows)} validation rows for {world.world_size} ranks; "
            "give every rank at least one row (raise trainer.val_size or add task.val_files)"
        )
    start = time.perf_counter()
    mine = list(range(world.rank, len(rows), world.world_size))
    batch_rows = [rows[i] for i in mine]
    prompt_ids, prompt_mask, _ = run.encoder(batch_rows)
    sample_ids = torch.tensor(mine, device=world.device) + VAL_SAMPLE_OFFSET
    rollout = run.policy.generate(
        prompt_ids.to(world.device), prompt_mask.to(world.device), cfg.rollout, sample_ids=sample_ids, chunk=cfg.trainer.rollout_batch_size
    )
    rewards = run.rewards(rollout.decode(run.tokenizer), batch_rows)
    step_map, mask = rollout.step_map.cpu(), rollout.completion_mask.cpu()
    tau = kendall_tau(step_map, mask)
    defined = ~torch.isnan(tau)
    sums = all_reduce_sums(
        {
            "count": float(len(mine)),
            "acc": is_correct(rewards, run.algorithm.config.correctness_reward).sum().item(),
            "score": rewards.total.double().sum().item(),
            "tpf": rollout.tokens_per_forward.double().sum().item(),
            "nfe": rollout.nfe.sum().item(),
            "afp": finalization_parallelism(step_map, mask).double().sum().item(),
            "response_length": rollout.lengths.sum().item(),
            "kendall_tau": tau[defined].sum().item(),
            "kendall_tau_count": float(defined.sum()),
        },
        world.device,
    )
    prefix = f"val/{cfg.task.name}/"
    count, tau_count = sums.pop("count"), sums.pop("kendall_tau_count")
    out = {prefix + name: value / count for name, value in sums.items() if name != "kendall_tau"}
    if tau_count:
        out[prefix + "kendall_tau"] = sums["kendall_tau"] / tau_count
    out["timing_s/val"] = time.perf_counter() - start
    return out
