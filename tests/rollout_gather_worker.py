"""``Rollout.gather`` under real torchrun ranks holding different numbers of edits.

    torchrun --nproc_per_node 2 tests/rollout_gather_worker.py OUT

Rank r builds :func:`local_rollout` (r) and rank 0 saves the gathered rollout's records to
``OUT/gathered.pt`` and the global metrics to ``OUT/metrics.json``; the test compares them with
``Rollout.concat`` of every rank's rollout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffrl.rollout import EditLog, Rollout  # noqa: E402


def local_rollout(rank: int) -> Rollout:
    """Three samples of six tokens whose records (x̂0 at 4 steps included) depend on the rank;
    rank r logs 2r + 1 edits."""
    gen = torch.Generator().manual_seed(rank)
    n, length, edits, steps = 3, 6, 2 * rank + 1, 4
    return Rollout(
        prompt_ids=torch.randint(0, 50, (n, 2 + rank), generator=gen), prompt_mask=torch.ones(n, 2 + rank, dtype=torch.bool),
        completion_ids=torch.randint(0, 10, (n, length), generator=gen), step_map=torch.randint(-1, 6, (n, length), generator=gen),
        confidence=torch.rand(n, length, generator=gen), logprob=-torch.rand(n, length, generator=gen),
        fixed_mask=torch.zeros(n, length, dtype=torch.bool), nfe=torch.randint(1, 9, (n,), generator=gen),
        sample_ids=torch.arange(n) + n * rank, stop_token_ids=(9,), nfe_cache=torch.randint(0, 3, (n,), generator=gen),
        edits=EditLog(*(torch.randint(0, n, (edits,), generator=gen) for _ in range(5)), torch.rand(edits, generator=gen)),
        step_tokens=torch.randint(0, 10, (n, steps, length), generator=gen), step_predicted=torch.rand(n, steps, length, generator=gen) < 0.5,
        step_confidence=torch.rand(n, steps, length, generator=gen),
    )


def main(out: Path) -> None:
    from diffrl.trainer.distributed import init_distributed, shutdown

    world = init_distributed("cpu")
    try:
        gathered = local_rollout(world.rank).gather(world.device)
        metrics = local_rollout(world.rank).global_metrics(world.device)
        if world.is_main:
            (out / "metrics.json").write_text(json.dumps(metrics))
            torch.save({name: getattr(gathered, name) for name in Rollout.per_sample_fields("identity", "record")} | {"edits": vars(gathered.edits)}, out / "gathered.pt")
    finally:
        shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
