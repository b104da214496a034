"""The newer algorithms on 2 real torchrun ranks (FSDP2) take the same RL step as one process on
the same global batch: their estimators key every mask by sample id, and their losses read global
counts only through the loop's weights, so the gradient, the losses and the updated weights agree
to float rounding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed_worker import REPO
from tests.test_distributed_equivalence import CLOSE_METRICS, EXACT_METRICS, FSDP2, max_diff, one_process_step
from tests.torchrun import run_torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# Each algorithm on the shared equivalence recipe (two inner updates, a KL reference where the
# algorithm has one), with what one tiny step needs to train.
ALGORITHMS = {
    "spg": "algorithm=spg;algorithm.beta=0.0;algorithm.spg.block_length=4",
    "espo": "algorithm=espo;algorithm.beta=0.04",
    "bgpo": "algorithm=bgpo;algorithm.bgpo.num_draws=3",
    "trace_rl": "algorithm=trace_rl;algorithm.trace_rl.accuracy_low=0;algorithm.trace_rl.accuracy_high=1",
    "cj_grpo": "algorithm=cj_grpo",
}


def test_new_algorithms_on_two_ranks_equal_one_process(tmp_path: Path) -> None:
    model_dir = None
    single = {}
    for name, overrides in ALGORITHMS.items():
        extra = [o for o in overrides.split(";")] + ([f"model.path={model_dir}"] if model_dir else [])
        metrics, weights, written = one_process_step(tmp_path / f"single_{name}", *extra)
        model_dir = model_dir or written
        single[name] = (metrics, weights)
    run_torchrun(str(REPO / "tests" / "distributed_worker.py"), str(tmp_path / "dist"), str(model_dir),
                 *[f"{name}:{FSDP2};{overrides}" for name, overrides in ALGORITHMS.items()], tmp=tmp_path)
    for name in ALGORITHMS:
        folder = tmp_path / "dist" / name
        single_metrics, single_weights = single[name]
        metrics = json.loads((folder / "metrics.json").read_text())
        assert single_metrics["actor/grad_norm"] > 1e-3, (name, "the step must have a gradient to compare")
        for key in EXACT_METRICS:
            assert metrics[key] == pytest.approx(single_metrics[key], rel=1e-6), (name, key)
        for key in (k for k in CLOSE_METRICS if k in single_metrics):
            assert metrics[key] == pytest.approx(single_metrics[key], rel=1e-4, abs=1e-7), (name, key)
        assert max_diff(torch.load(folder / "full.pt"), single_weights) < 1e-5, name
