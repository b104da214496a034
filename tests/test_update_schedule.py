"""The paper update schedules: PPO-style epochs over mini-batches with old log-probs fixed
(several optimizer steps per rollout), LightningRL's per-step optimizer reset with warmup, and
TRL's reference-model sync, on hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffrl.errors import DiffrlConfigError
from diffrl.trainer.schedule import mini_batch_rows, num_mini_batches
from tests.distributed_worker import recipe


def test_mini_batches_are_interleaved_prompt_groups_whatever_the_rank_split() -> None:
    rows = mini_batch_rows(8, 2, 2, torch.device("cpu"))
    assert [r.tolist() for r in rows] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # One process with 16 rows vs two ranks with 8 each (rank 1's rows are global 8..15).
    one = mini_batch_rows(16, 2, 2, torch.device("cpu"))
    two = [torch.cat((local, local + 8)) for local in mini_batch_rows(8, 2, 2, torch.device("cpu"))]
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_mini_batch_sizes_that_do_not_split_the_batch_are_refused() -> None:
    assert num_mini_batches(8, None, 2) == 1 and num_mini_batches(8, 8, 2) == 1 and num_mini_batches(8, 2, 2) == 4
    with pytest.raises(DiffrlConfigError, match=r"^trainer.ppo_mini_batch_size=3 must divide trainer.batch_size=8"):
        num_mini_batches(8, 3, 1)
    # 4 mini-batches do not divide each of 4 ranks' 2 prompts.
    with pytest.raises(DiffrlConfigError, match="each rank's 2 prompts"):
        num_mini_batches(8, 2, 4)


def test_ppo_epochs_and_num_iterations_cannot_disagree() -> None:
    with pytest.raises(DiffrlConfigError, match=r"^trainer.ppo_epochs=2 and algorithm.num_iterations=3 both count"):
        recipe("trainer.ppo_epochs=2", "algorithm.num_iterations=3")
    with pytest.raises(DiffrlConfigError, match=r"^optim.reset_each_step=true with optim.lr_schedule=cosine"):
        recipe("optim.reset_each_step=true", "optim.lr_schedule=cosine")


@pytest.mark.slow
def test_mini_batch_epochs_reset_warmup_and_reference_sync(tmp_path: Path) -> None:
    """batch 4 prompts, mini-batches of 2, 2 epochs: 4 optimizer steps per rollout, the later
    ones off-policy (clipping active); a fresh AdamW and warmup of 3 each rollout (lr 1/3 of the
    base at its first step); the reference mixed 0.6 towards the policy every 2nd step."""
    from diffrl.trainer.build import setup
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.loop import rl_step

    cfg = recipe(
        f"trainer.output_dir={tmp_path}", "algorithm=lightning_rl", "rollout.threshold=0.5", "algorithm.epsilon=0.05",
        "trainer.ppo_mini_batch_size=2", "optim.reset_each_step=true", "optim.warmup_steps=3", "optim.lr_schedule=constant",
        "algorithm.sync_ref_model=true", "algorithm.ref_model_sync_steps=2", "algorithm.ref_model_mixup_alpha=0.6",
    )
    run = setup(cfg, init_distributed("cpu"))
    try:
        initial = {k: v.clone() for k, v in run.policy.state_dict().items()}
        first = rl_step(run, 0)
        adam_steps = {float(s["step"]) for s in run.policy.optimizer.state.values()}
        assert adam_steps == {4.0}, adam_steps
        assert first["actor/lr"] == pytest.approx(1e-3 / 3) and first["actor/pg_clipfrac"] > 0
        reference = run.reference.frozen.state_dict()
        assert all(torch.equal(reference[k], initial[k]) for k in initial), "no sync after step 1 of 2"

        rl_step(run, 1)
        # The reset: this rollout's 4 steps only, not 8.
        assert {float(s["step"]) for s in run.policy.optimizer.state.values()} == {4.0}
        policy, reference = run.policy.state_dict(), run.reference.frozen.state_dict()
        for k in initial:
            assert torch.allclose(reference[k], 0.6 * policy[k] + 0.4 * initial[k], atol=1e-6), k
        assert max((policy[k] - initial[k]).abs().max().item() for k in initial) > 1e-3
    finally:
        run.close()
