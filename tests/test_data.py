"""verl-format rows: validation errors that name file, row and field; the loader; prompts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from diffrl.data import DataError, PromptEncoder, PromptLoader, load_rows
from diffrl.data.synthetic import DigitTask


def good_row(i: int) -> dict:
    return {
        "data_source": "t",
        "prompt": [{"role": "user", "content": f"q{i}"}],
        "reward_model": {"style": "rule", "ground_truth": str(i)},
        "extra_info": {"index": i},
    }


def test_real_parquet_files_load(shared: Path) -> None:
    rows = load_rows([str(shared / "data" / "rl" / "test" / "gsm8k.parquet")])
    assert len(rows) == 1319 and rows[0]["prompt"][0]["role"] == "user"
    assert rows[0]["reward_model"]["ground_truth"] == "18"


def test_missing_ground_truth_names_file_row_and_field(tmp_path: Path) -> None:
    rows = [good_row(i) for i in range(5)]
    rows[3]["reward_model"] = {"style": "rule", "ground_truth": None}
    path = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet: row 3: field 'reward_model\.ground_truth'"):
        load_rows([str(path)])


def test_unparsable_prompt_names_file_row_and_field(tmp_path: Path) -> None:
    rows = [good_row(i) for i in range(3)]
    frame = pd.DataFrame(rows)
    frame["prompt"] = ['[{"role": "user", "content": "ok"}]', "not json at all", '[{"role": "user", "content": "ok"}]']
    path = tmp_path / "prompts.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"prompts\.parquet: row 1: field 'prompt'"):
        load_rows([str(path)])


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.parquet: data file not found"):
        load_rows([str(tmp_path / "nope.parquet")])


def test_loader_resumes_exactly_and_splits_ranks() -> None:
    rows = [good_row(i) for i in range(10)]
    loader = PromptLoader(rows, 4, seed=3)
    seen = [loader.next_batch() for _ in range(2)]
    state = loader.state_dict()
    rest = [loader.next_batch() for _ in range(3)]
    again = PromptLoader(rows, 4, seed=3)
    again.load_state_dict(state)
    assert [again.next_batch() for _ in range(3)] == rest
    assert seen[0] != seen[1]
    r0 = PromptLoader(rows, 4, seed=3, rank=0, world_size=2).next_batch()
    r1 = PromptLoader(rows, 4, seed=3, rank=1, world_size=2).next_batch()
    assert r0 + r1 == seen[0]


def test_prompt_encoder_left_pads_and_truncates(tmp_path: Path) -> None:
    task = DigitTask(num_train=8, num_val=8)
    tok = task.tokenizer()
    rows = load_rows(task.write(tmp_path)["train"])
    enc = PromptEncoder(tok, pad_token_id=tok.pad_token_id, max_prompt_length=16)
    ids, mask, truncated = enc(rows[:3])
    assert truncated == 0 and ids.shape == (3, 7) and mask.all()
    assert tok.decode(ids[0]) == rows[0]["prompt"][0]["content"] + " ="
    short = PromptEncoder(tok, pad_token_id=tok.pad_token_id, max_prompt_length=4)
    ids, mask, truncated = short(rows[:2])
    assert truncated == 2 and ids.shape == (2, 4)


def test_a_synthetic_split_does_not_move_with_the_other_split_or_the_teacher(tmp_path: Path) -> None:
    """Validation during training and a later evaluation must see the same rows even when the
    training recipe changes ``num_train`` or the teacher."""
    base = DigitTask(num_train=8, num_val=16)
    other = DigitTask(num_train=64, num_val=16, teacher_error="token_noise", teacher_accuracy=0.45)
    a = load_rows(base.write(tmp_path / "a")["val"])
    b = load_rows(other.write(tmp_path / "b")["val"])
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    assert [r["reward_model"] for r in a] == [r["reward_model"] for r in b]
    train = load_rows(base.write(tmp_path / "a")["train"])
    assert [r["prompt"] for r in a[: len(train)]] != [r["prompt"] for r in train]
