"""One RL step per variant (an algorithm, an advantage option, an update schedule), by every rank
of a real torchrun launch (gloo) or by one plain process, for the algorithm equivalence test.

    torchrun --nproc_per_node 2 tests/algorithm_step_worker.py OUT MODEL_DIR VARIANT [VARIANT ...]

A VARIANT is ``name:override;override;...``. For each, the step runs on the shared equivalence
recipe (:func:`tests.distributed_worker.recipe`) and rank 0 writes ``OUT/<name>/metrics.json``,
``advantages.pt`` (the global batch's rewards and the advantage rule's output, observed as the
loop calls it) and ``weights.pt`` (the updated full weights). All variants run in one launch, in sequence.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.distributed_worker import recipe  # noqa: E402  (also registers the graded reward)


def recording(advantage: Any, seen: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """The advantage rule, unchanged, keeping a copy of the rewards it sees and what it returns."""

    def rule(outcome: Any) -> torch.Tensor:
        out = advantage(outcome)
        seen.append((outcome.rewards.detach().clone(), out.detach().clone()))
        return out

    return rule


def step(out: Path, model_dir: str | None, variant: str, world: Any) -> None:
    """Take one RL step of ``variant`` and write what the test compares (rank 0)."""
    from diffrl.trainer.build import setup
    from diffrl.trainer.loop import rl_step

    name, _, extra = variant.partition(":")
    folder = out / name
    model = [f"model.path={model_dir}"] if model_dir else []
    run = setup(recipe(*model, f"trainer.output_dir={folder}", *[o for o in extra.split(";") if o]), world)
    try:
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        run.algorithm = replace(run.algorithm, advantage=recording(run.algorithm.advantage, seen))
        metrics = rl_step(run, 0)
        weights = run.policy.state_dict()
        if world.is_main:
            torch.save(seen[-1], folder / "advantages.pt")
            torch.save(weights, folder / "weights.pt")
            (folder / "metrics.json").write_text(json.dumps(metrics))
    finally:
        run.close()


def main(out: Path, model_dir: str, variants: list[str]) -> None:
    from diffrl.trainer.distributed import init_distributed, shutdown

    world = init_distributed("cpu")
    try:
        for variant in variants:
            step(out, model_dir, variant, world)
    finally:
        shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
