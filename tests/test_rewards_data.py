"""Rows are checked at load for what each reward reads; every task recipe loads and scores its data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffrl.data import DataError
from diffrl.rewards import RewardRunner, RewardSpec
from diffrl.train import RECIPES
from diffrl.trainer.build import load_task_rows
from diffrl.trainer.config import to_config

# The parquet-backed tasks (synthetic ones generate their rows at run time).
TASKS = sorted(p.stem for p in (RECIPES / "task").glob("*.yaml") if OmegaConf.load(p).get("synthetic") is None)


def write(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def good(**extra) -> dict:
    return {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "23"}, "extra_info": {"numbers": "[30, 100, 93]", **extra}}


@pytest.mark.parametrize(
    ("specs", "bad_row", "field", "fix"),
    [
        ([RewardSpec("countdown")], {**good(), "extra_info": {"index": 1}}, "extra_info.numbers", "missing"),
        ([RewardSpec("countdown")], good(numbers="thirty"), "extra_info.numbers", "list of integers"),
        ([RewardSpec("countdown")], {**good(), "reward_model": {"ground_truth": "twenty"}}, "reward_model.ground_truth", "target number"),
        ([RewardSpec("sudoku")], good(puzzle="123"), "extra_info.puzzle", "N*N cells"),
        ([RewardSpec("sudoku")], {**good(puzzle="0" * 16), "reward_model": {"ground_truth": "1234"}}, "reward_model.ground_truth", "solved grid"),
        ([RewardSpec("code")], good(), "reward_model.ground_truth", "neither a JSON list of assert"),
        ([RewardSpec("code")], {**good(), "reward_model": {"ground_truth": "def check(candidate):\n    assert candidate(1)\n"}}, "prompt", "defines no function"),
        ([RewardSpec("math")], {**good(), "reward_model": {"ground_truth": " "}}, "reward_model.ground_truth", "empty"),
        ([RewardSpec("math")], {**good(), "prompt": "not json"}, "prompt", "not a JSON list"),
    ],
)
def test_a_malformed_row_is_named_with_file_row_and_field(tmp_path: Path, specs, bad_row: dict, field: str, fix: str) -> None:
    rows = [good(puzzle="1234341221434321"), bad_row]
    if specs[0].name == "sudoku":
        rows[0]["reward_model"] = {"ground_truth": "1234341221434321"}
    if specs[0].name == "code":
        rows = [bad_row]
    if isinstance(bad_row["prompt"], str):  # a parquet column holds lists or strings, not both
        rows[0]["prompt"] = json.dumps(rows[0]["prompt"])
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load_task_rows([path], specs)
    message = str(err.value)
    row_index = len(rows) - 1
    assert message.startswith(f"{path}: row {row_index}") and f"'{field}'" in message and fix in message, message


def test_no_train_files_is_an_error_naming_the_setting() -> None:
    with pytest.raises(DataError, match="train_files"):
        load_task_rows([], [RewardSpec("math")])


def test_every_data_file_has_a_task_recipe(shared: Path) -> None:
    used = set()
    for task in TASKS:
        cfg = to_config(compose_task(task, shared))
        used |= {Path(f).resolve() for f in cfg.task.train_files + cfg.task.val_files}
    assert {p.resolve() for p in (shared / "data" / "rl").glob("*/*.parquet")} <= used


def compose_task(task: str, shared: Path):
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return compose("train", overrides=[f"task={task}", f"data_dir={shared / 'data'}"])


@pytest.mark.parametrize("task", TASKS)
def test_every_task_recipe_loads_its_files_and_scores_a_row(task: str, shared: Path) -> None:
    cfg = to_config(compose_task(task, shared)).task
    val = load_task_rows(cfg.val_files, cfg.rewards)
    assert val and all(r["prompt"][-1]["content"] for r in val)
    # A prompt prefix is only added where the parquet does not already carry the instructions.
    assert not (cfg.prompt_prefix and cfg.prompt_prefix.strip() in val[0]["prompt"][-1]["content"])
    with RewardRunner(cfg.rewards, num_workers=1) as runner:
        out = runner(["<reasoning>no idea</reasoning>\n<answer>\n7\n</answer>"], val[:1])
    assert out.errors == 0 and set(out.per_reward) == {r.name for r in cfg.rewards}


def test_gsm8k_prefix_is_d1s_instructions_as_the_countdown_parquet_carries_them(shared: Path) -> None:
    gsm8k = to_config(compose_task("gsm8k", shared)).task
    countdown = load_task_rows([str(shared / "data" / "rl" / "test" / "countdown.parquet")], [RewardSpec("countdown")])
    assert countdown[0]["prompt"][-1]["content"].startswith(gsm8k.prompt_prefix)
    assert gsm8k.prompt_prefix.endswith("</answer>\n\n")
