"""torchrun worker: one algorithm=unmasking_grpo step on each rank (their prompts are the halves
of the one-process batch); rank 0 writes OUT/metrics.json and OUT/policy.pt (the updated policy).

    torchrun --nproc_per_node 2 tests/unmasking_rank_worker.py OUT MODEL_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import tests.distributed_worker  # noqa: E402,F401  (registers digit_overlap)

# 4 prompts x 4 samples, micro-batches of 4 (2 ranks split exactly into the one-process ones), two
# inner updates, a constant rate (so a shorter run resumed matches a longer one); a graded reward and a policy that starts near the random model's confidences, so
# decisions and rewards vary and the step has a gradient.
OVERRIDES = [
    "algorithm=unmasking_grpo", "algorithm.num_generations=4", "algorithm.num_iterations=2", "algorithm.nfe_cost=0.05",
    "algorithm.policy.init_threshold=0.1", "trainer.batch_size=4", "trainer.micro_batch_size=4", "optim.lr=1e-2", "optim.lr_schedule=constant",
    "trainer.warm_start.steps=0", "trainer.wandb.enabled=false", "trainer.progress_bar=false", "trainer.plot=false",
    "task.rewards=[{name: digit_overlap}]", "task.synthetic.num_train=64", "task.synthetic.num_val=8", "rollout.temperature=1.0",
]


def unmasking_recipe(*overrides: str) -> Any:
    """The demo recipe with OVERRIDES and ``overrides``, validated."""
    from hydra import compose, initialize_config_dir

    from diffrl.train import RECIPES
    from diffrl.trainer.config import to_config

    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return to_config(compose("train", overrides=[*OVERRIDES, *overrides]))


def main(out: Path, model_dir: str) -> None:
    from diffrl.trainer.distributed import init_distributed, shutdown
    from diffrl.trainer.unmasking_policy import setup, train_step

    world = init_distributed("cpu")
    try:
        run = setup(unmasking_recipe(f"trainer.output_dir={out}", f"model.path={model_dir}", "trainer.resume=never"), world)
        metrics = train_step(run, 0)
        if world.is_main:
            (out / "metrics.json").write_text(json.dumps(metrics))
            torch.save(run.net.state_dict(), out / "policy.pt")
    finally:
        shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
