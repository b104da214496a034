"""One real training step (the loop's ``rl_step``: rollout, rewards, hooks, advantages, update) of
every algorithm on every family's tiny architecture: finite loss, every weight moved, metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffrl.algorithms.registry import registered_algorithms
from tests.distributed_worker import recipe

# Overrides that make one tiny step train; every registered algorithm runs (empty = defaults).
OVERRIDES = {
    "coupled_grpo": ["algorithm.num_generations=4"],
    "igpo": ["algorithm.igpo.min_chunk_size=1", "algorithm.igpo.max_chunk_size=2", "algorithm.igpo.free_tail=2", "algorithm.correctness_reward=exact_match"],
    "gdpo": ["algorithm.gdpo.num_nodes=2"],
    # The filter has its own tests; here no group may be dropped, so the step always trains.
    "lightning_rl": ["algorithm.lightning_rl.filter_tpf_threshold=0", "algorithm.lightning_rl.filter_all_wrong=false", "algorithm.beta=0.01",
                     "algorithm.correctness_reward=exact_match"],
    "just_grpo": ["algorithm.just_grpo.rows_per_forward=16"],
    "spg": ["algorithm.spg.block_length=4", "algorithm.beta=0"],
    "espo": ["algorithm.espo.num_mc=1"],
    "bgpo": ["algorithm.bgpo.num_draws=3"],
    # No group may fall outside the accuracy band, so the step always trains.
    "trace_rl": ["algorithm.trace_rl.accuracy_low=0", "algorithm.trace_rl.accuracy_high=1", "algorithm.beta=0.01", "algorithm.correctness_reward=exact_match"],
}
ALGORITHMS = {name: OVERRIDES.get(name, []) for name in sorted(registered_algorithms())}
FAMILIES = ("llada", "dream", "sdar", "sdar_moe", "llada2_moe")
# Both rewards: exact_match marks correctness (IGPO's trigger), digit_overlap is graded so a random
# policy's groups have reward variance and the step a gradient; two prompts, in case one group's
# samples all score alike.
STEP = [
    "trainer.batch_size=2",
    "algorithm.num_generations=4",
    "trainer.micro_batch_size=8",
    "algorithm.num_iterations=1",
    "algorithm.beta=0.0",
    "model.gradient_checkpointing=false",
    "task.rewards=[{name: exact_match, weight: 1.0}, {name: digit_overlap, weight: 1.0}]",
    "rollout.max_completion_length=8",
    "rollout.block_length=4",
    "rollout.steps=8",
    "optim.weight_decay=0.0",
    "task.synthetic.num_train=16",
    "task.synthetic.num_val=4",
    # Three frequent word ids of the sort task's vocabulary also stop a sample, so samples stop at
    # different lengths: TPF and truncation vary and LightningRL's rewards carry signal.
    "model.stop_tokens=[3,4,5]",
]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_one_step_of_every_algorithm_on_every_family(tmp_path: Path, tiny_checkpoint, family: str, algorithm: str) -> None:
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.build import setup
    from diffrl.trainer.loop import rl_step

    ckpt = tiny_checkpoint(family)
    # The family's tiny architecture, rebuilt on the sort task's vocabulary (the loop writes it).
    arch = json.loads((ckpt.folder / "config.json").read_text())
    arch.update({k: v for k, v in ckpt.fact_overrides.items() if k == "block_size"})
    arch.pop("auto_map", None)  # the sort task's tokenizer is a local one
    cfg = recipe(f"trainer.output_dir={tmp_path}", f"algorithm={algorithm}", *STEP, *ALGORITHMS[algorithm])
    cfg.model.init_config = arch
    run = setup(cfg, init_distributed("cpu"))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    metrics = rl_step(run, 0)
    for name in ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "critic/score/mean", "response_length/mean", "timing_s/update"):
        assert math.isfinite(metrics[name]), (name, metrics[name])
    assert metrics["actor/grad_norm"] > 0, {k: v for k, v in metrics.items() if k.startswith(("critic", "response", "rollout"))}
    moved = {n: not torch.equal(p, before[n]) for n, p in run.model.named_parameters()}
    # A mixture-of-experts step only trains the experts some token was routed to.
    unchanged = [n for n, m in moved.items() if not m and ".experts." not in n]
    assert not unchanged, f"{algorithm} on {family}: parameters that did not move: {unchanged[:5]}"
    experts = [m for n, m in moved.items() if ".experts." in n]
    assert not experts or any(experts)


@pytest.mark.slow
@pytest.mark.distributed
def test_igpo_repair_on_one_rank_does_not_stall_a_sharded_run(tmp_path: Path) -> None:
    """FSDP2 on 2 real ranks: only rank 0 regenerates, rank 1 joins its weight gathers."""
    from tests.torchrun import REPO, run_torchrun

    out = tmp_path / "out"
    out.mkdir()
    run_torchrun(str(REPO / "tests" / "igpo_rank_worker.py"), str(out), tmp=tmp_path, timeout=300)
    metrics = [json.loads((out / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    # Rank 0's group failed and was regenerated with hints; the step finished on both ranks.
    assert all(math.isfinite(m["actor/pg_loss"]) and m["rollout/repair_rollouts"] == 1 for m in metrics)
