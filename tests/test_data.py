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


def test_every_bad_row_is_reported_with_its_field(tmp_path: Path) -> None:
    rows = [good_row(i) for i in range(12)]
    for i in (2, 5, 7, 8, 9, 10, 11):
        rows[i]["reward_model"] = {"style": "rule", "ground_truth": None}
    rows[5]["extra_info"] = {"index": 5}
    path = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(DataError) as err:
        load_rows([str(path)])
    lines = str(err.value).splitlines()
    assert [line.split(":")[1].strip() for line in lines[:5]] == ["row 2", "row 5", "row 7", "row 8", "row 9"]
    assert all("field 'reward_model.ground_truth'" in line for line in lines[:5])
    assert lines[5] == "7 bad rows of 12 (2 more not shown): fix the data, or set task.on_bad_rows=skip to train without them"


def test_a_row_check_marks_rows_bad_and_skip_drops_them_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rows.parquet"
    pd.DataFrame([good_row(i) for i in range(6)]).to_parquet(path)

    def even_answers(row: dict) -> None:
        if int(row["reward_model"]["ground_truth"]) % 2:
            raise ValueError("field 'reward_model.ground_truth' is odd")

    with pytest.raises(DataError, match=r"row 1: field 'reward_model.ground_truth' is odd[\s\S]*3 bad rows of 6"):
        load_rows([str(path)], checks=[even_answers])
    with caplog.at_level("WARNING"):
        kept = load_rows([str(path)], checks=[even_answers], on_bad_rows="skip")
    assert [r["reward_model"]["ground_truth"] for r in kept] == ["0", "2", "4"]
    assert "dropped 3 bad row(s) of 6" in caplog.text
    with pytest.raises(DataError, match="task.on_bad_rows='ignore' is not one of error, skip"):
        load_rows([str(path)], on_bad_rows="ignore")


def test_the_shared_math_file_reports_all_its_bad_rows(shared: Path) -> None:
    from functools import partial

    from diffrl.rewards import RewardSpec, check_row

    specs = [RewardSpec("math")]
    with pytest.raises(DataError) as err:
        load_rows(str(shared / "data" / "rl" / "train" / "math.parquet"), checks=[partial(check_row, specs)])
    assert str(err.value).splitlines()[-1].startswith("4 bad rows of 7474")
    assert len(load_rows(str(shared / "data" / "rl" / "train" / "math.parquet"), checks=[partial(check_row, specs)], on_bad_rows="skip")) == 7470


def test_overlong_prompts_are_filtered_after_the_template(tmp_path: Path) -> None:
    from diffrl.data import filter_overlong

    task = DigitTask(num_train=8, num_val=8)
    tok = task.tokenizer()
    rows = load_rows(task.write(tmp_path)["train"])
    rows[3] = {**rows[3], "prompt": [{"role": "user", "content": rows[3]["prompt"][0]["content"] + " 1 2 3"}]}
    width = len(PromptEncoder(tok, pad_token_id=tok.pad_token_id, max_prompt_length=99).token_ids(rows[0]))
    enc = PromptEncoder(tok, pad_token_id=tok.pad_token_id, max_prompt_length=width)
    assert filter_overlong(rows, enc) == rows[:3] + rows[4:]
    prefixed = PromptEncoder(tok, pad_token_id=tok.pad_token_id, max_prompt_length=width, prompt_prefix="sort ")
    assert filter_overlong(rows, prefixed) == []
