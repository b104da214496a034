"""algorithm=unmasking_grpo: only the small policy trains, resume continues the run exactly, and
2 torchrun ranks take the one-process step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffrl.errors import DiffrlConfigError
from tests.torchrun import REPO, run_torchrun
from tests.unmasking_rank_worker import unmasking_recipe
from tests.wandb_offline import read_offline_run


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_only_the_policy_moves_and_resume_continues_exactly(tmp_path: Path) -> None:
    from diffrl.rollout.unmasking_policy import load_unmasking_policy
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.loop import train
    from diffrl.trainer.unmasking_policy import FINAL, setup, train_step

    run = setup(unmasking_recipe(f"trainer.output_dir={tmp_path / 'steps'}", "trainer.resume=never"), init_distributed("cpu"))
    dllm = {k: v.clone() for k, v in run.model.state_dict().items()}
    policy = {k: v.clone() for k, v in run.net.state_dict().items()}
    metrics = [train_step(run, step) for step in range(2)]
    assert all(m["actor/grad_norm"] > 1e-6 for m in metrics), "the steps must have a gradient"
    assert states_equal(run.model.state_dict(), dllm), "the frozen dLLM moved"
    assert not any(p.requires_grad for p in run.model.parameters())
    assert not states_equal(run.net.state_dict(), policy), "the policy did not train"

    # 2 steps, then resume for a third = 3 steps straight (checkpointed optimizer, scheduler, data, RNG).
    straight = train(unmasking_recipe(f"trainer.output_dir={tmp_path / 'straight'}", "trainer.total_steps=3", "trainer.wandb.enabled=true"))
    train(unmasking_recipe(f"trainer.output_dir={tmp_path / 'resumed'}", "trainer.total_steps=2", "trainer.save_every=1"))
    resumed = train(unmasking_recipe(f"trainer.output_dir={tmp_path / 'resumed'}", "trainer.total_steps=3"))
    assert resumed["resumed_from"].endswith("step_000002")
    a, b = (load_unmasking_policy(tmp_path / name / FINAL).state_dict() for name in ("straight", "resumed"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert straight["unmasking_policy"].endswith(FINAL)
    # The straight run logged its three steps to an offline W&B run with verl's names.
    record = read_offline_run(next((tmp_path / "straight" / "wandb").glob("offline-run-*/run-*.wandb")))
    assert len(record["history"]) == 3
    assert all(k in record["history"][-1] for k in ("critic/score/mean", "rollout/nfe", "actor/pg_loss", "actor/grad_norm"))
    logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    # The trainer's resume rules hold here too: a finished run does no work, a changed config is refused.
    assert train(unmasking_recipe(f"trainer.output_dir={tmp_path / 'resumed'}", "trainer.total_steps=3")) == resumed
    with pytest.raises(DiffrlConfigError, match="optim.lr"):
        train(unmasking_recipe(f"trainer.output_dir={tmp_path / 'resumed'}", "trainer.total_steps=4", "optim.lr=0.5"))
    assert [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_bad_settings_name_the_field(tmp_path: Path) -> None:
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.unmasking_policy import setup

    with pytest.raises(ValueError, match="trainer.warm_start.steps=0"):
        setup(unmasking_recipe(f"trainer.output_dir={tmp_path}", "trainer.warm_start.steps=5"), init_distributed("cpu"))
    with pytest.raises(ValueError, match="algorithm.speed_reward"):
        unmasking_recipe("algorithm.speed_reward=fast")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_take_the_one_process_policy_step(tmp_path: Path) -> None:
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.unmasking_policy import setup, train_step

    run = setup(unmasking_recipe(f"trainer.output_dir={tmp_path / 'single'}", "trainer.resume=never"), init_distributed("cpu"))
    single = train_step(run, 0)
    out = tmp_path / "dist"
    out.mkdir()
    run_torchrun(str(REPO / "tests" / "unmasking_rank_worker.py"), str(out), str(run.model_dir), tmp=tmp_path, timeout=300)
    dist = json.loads((out / "metrics.json").read_text())
    for key in ("critic/score/mean", "critic/rewards/mean", "rollout/nfe"):
        assert dist[key] == pytest.approx(single[key], rel=1e-6), key
    for key in ("actor/grad_norm", "actor/pg_loss"):
        assert dist[key] == pytest.approx(single[key], rel=1e-4, abs=1e-7), key
    assert single["actor/grad_norm"] > 1e-6
    weights = torch.load(out / "policy.pt")
    assert max((weights[k] - v).abs().max().item() for k, v in run.net.state_dict().items()) < 1e-5
