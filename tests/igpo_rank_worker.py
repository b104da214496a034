"""torchrun worker: one IGPO step under FSDP2 where only rank 0 has a failed group, so only
rank 0 regenerates; writes OUT/metrics_rank<r>.json when the step completes on rank r."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch.distributed as dist  # noqa: E402

from diffrl.rewards.registry import register_reward  # noqa: E402
from tests.distributed_worker import recipe  # noqa: E402  (also registers digit_overlap)


@register_reward("correct_on_rank_one")
def correct_on_rank_one(completions: list[str], rows: list[dict], **_: Any) -> list[float]:
    """Every sample of rank 1 is correct, none of rank 0: the repair runs on rank 0 only."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return [float(rank == 1)] * len(completions)


def main(out: Path) -> None:
    from diffrl.trainer.distributed import init_distributed, shutdown
    from diffrl.trainer.build import setup
    from diffrl.trainer.loop import rl_step

    world = init_distributed("cpu")
    try:
        cfg = recipe(
            f"trainer.output_dir={out}", "trainer=fsdp2", "trainer.fsdp.param_dtype=null", "algorithm=igpo",
            "algorithm.num_generations=4", "algorithm.num_iterations=1", "algorithm.correctness_reward=correct_on_rank_one",
            "algorithm.igpo.min_chunk_size=1", "algorithm.igpo.max_chunk_size=2", "algorithm.igpo.free_tail=2",
            "task.rewards=[{name: correct_on_rank_one, weight: 0.0}, {name: digit_overlap, weight: 1.0}]",
            "task.synthetic.num_train=16", "task.synthetic.num_val=4",
        )
        run = setup(cfg, world)
        try:
            metrics = rl_step(run, 0)
        finally:
            run.close()
        (out / f"metrics_rank{world.rank}.json").write_text(json.dumps(metrics))
    finally:
        shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
