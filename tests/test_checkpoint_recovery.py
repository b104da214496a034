"""Checkpoints that cannot be read back are named and skipped; keep_last_n prunes the oldest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffrl.trainer.checkpoint import CheckpointLoadError, complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from diffrl.trainer.parallelize import Root
from diffrl.trainer.strategy import Strategy


def strategy(seed: int = 0) -> Strategy:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    return Strategy("single", Root(model), torch.optim.AdamW(model.parameters(), lr=1e-2))


def train_and_save(root: Path, steps: int, keep_last_n: int = 0) -> list[torch.Tensor]:
    """``steps`` optimizer steps, a checkpoint after each; returns the first layer's weight at each."""
    s = strategy()
    weights = []
    for step in range(1, steps + 1):
        s.root.model(torch.randn(4, 64)).sum().backward()
        s.step()
        weights.append(s.root.model[0].weight.detach().clone())
        save_checkpoint(root, step, s, {"note": step}, {"model_dir": None}, keep_last_n=keep_last_n)
    return weights


def damage_shard(path: Path) -> None:
    shard = next((path / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def damage_metadata(path: Path) -> None:
    (path / "dcp" / ".metadata").write_bytes(b"\x80\x04garbage, not a pickle")


def damage_trainer_state(path: Path) -> None:
    state = path / "trainer_state_rank0.pt"
    state.write_bytes(state.read_bytes()[:100])


@pytest.mark.parametrize(("damage", "named"), [(damage_shard, "is truncated"), (damage_metadata, "dcp/.metadata is unreadable"), (damage_trainer_state, "trainer_state_rank0.pt is damaged")])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_loads(tmp_path: Path, capsys: pytest.CaptureFixture, damage, named: str) -> None:
    root = tmp_path / "checkpoints"
    weights = train_and_save(root, 3)
    newest = root / "step_000003"
    damage(newest)
    assert latest_checkpoint(root) == root / "step_000002"
    warning = capsys.readouterr().err
    assert f"checkpoint {newest} cannot be loaded" in warning and named in warning and "falling back" in warning

    s = strategy(seed=1)
    with pytest.raises(CheckpointLoadError, match=f"checkpoint {newest} cannot be loaded"):
        load_checkpoint(newest, s)
    state = load_checkpoint(latest_checkpoint(root), s)
    assert state["step"] == state["note"] == 2 and torch.equal(s.root.model[0].weight, weights[1])


def test_when_every_checkpoint_is_damaged_there_is_none_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "checkpoints"
    train_and_save(root, 2)
    for path in complete_checkpoints(root):
        damage_shard(path)
    assert latest_checkpoint(root) is None
    assert capsys.readouterr().err.count("cannot be loaded") == 2


def test_keep_last_n_keeps_the_newest_complete_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    weights = train_and_save(root, 4, keep_last_n=2)
    assert [p.name for p in sorted(root.iterdir())] == ["step_000003", "step_000004"]
    s = strategy(seed=1)
    load_checkpoint(latest_checkpoint(root), s)
    assert torch.equal(s.root.model[0].weight, weights[3])


def test_keep_last_n_zero_keeps_every_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    train_and_save(root, 3)
    assert len(complete_checkpoints(root)) == 3
