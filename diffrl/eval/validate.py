"""Validation during training: every ``trainer.val_every`` steps, the policy on a held-out slice.

The slice is the first ``trainer.val_size`` rows of ``task.val_files``, one sample each with the
training rollout recipe, scored by the task's rewards exactly as ``diffrl.eval`` scores them
(correct = full marks on the task's first reward). Rows are dealt to the ranks in turn, each rank
generates its share through the strategy in one call (sharded strategies gather weights once per
call, which every rank must join), and the sums are all-reduced, so every rank returns the
metrics of the whole slice.
"""

from __future__ import annotations

import time

import torch

from diffrl.errors import DiffrlConfigError
from diffrl.eval.metrics import means, totals
from diffrl.eval.samples import SampleScorer
from diffrl.trainer.distributed import all_reduce_sums
from diffrl.trainer.loop import Run, generate_in_chunks

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
    chunk = cfg.trainer.rollout_batch_size or len(mine)
    run.policy.train(False)
    rollout = run.policy.generate(generate_in_chunks, prompt_ids.to(world.device), prompt_mask.to(world.device), sample_ids, cfg.rollout, chunk)
    run.policy.train(True)
    scorer = SampleScorer(run.tokenizer, run.rewards, cfg.task.rewards[0].name, save_trajectory=False)
    records = scorer(rollout, batch_rows, [(i, 0) for i in mine], gen_s=0.0)
    sums = all_reduce_sums(totals(records), world.device)
    values = means(sums)
    prefix = f"val/{cfg.task.name}/"
    out = {prefix + "acc": sums["correct/count"] / sums["all/count"]}
    for name, key in (("score", "score"), ("tpf", "tpf"), ("nfe", "nfe"), ("afp", "afp"), ("kendall_tau", "kendall_tau"), ("response_length", "length")):
        if values[key] is not None:
            out[prefix + name] = values[key]
    out["timing_s/val"] = time.perf_counter() - start
    return out
