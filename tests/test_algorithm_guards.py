"""Settings that would run but silently void what an algorithm learns are refused at start-up (or
warned about), each naming the field and the fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from diffrl.algorithms import build_algorithm
from diffrl.algorithms.registry import Needs
from diffrl.errors import DiffrlConfigError
from diffrl.rewards import RewardSpec
from diffrl.train import RECIPES
from diffrl.trainer.build import load_task_rows
from diffrl.trainer.config import to_config
from diffrl.trainer.guards import check_algorithm


def config(*overrides: str):
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return to_config(compose("train", overrides=list(overrides)))


@pytest.mark.parametrize("algorithm", ["igpo", "lightning_rl"])
def test_correctness_from_the_total_of_several_rewards_is_refused(algorithm: str) -> None:
    """math 2.0 + format 0.5: a well-formatted wrong answer has total 0.5 > 0."""
    with pytest.raises(DiffrlConfigError) as err:
        config("task=math", f"algorithm={algorithm}", "rollout.threshold=0.9")
    message = str(err.value)
    assert message.startswith("algorithm.correctness_reward is unset") and "math 2, format 0.5" in message, message
    cfg = config("task=math", f"algorithm={algorithm}", "rollout.threshold=0.9", "algorithm.correctness_reward=math")
    assert cfg.algorithm.correctness_reward == "math"


def test_an_algorithm_that_ignores_correctness_needs_no_correctness_reward() -> None:
    assert config("task=math", "algorithm=diffu_grpo").algorithm.correctness_reward is None
    # One reward: its value is the correctness.
    assert config("task=sort_digits", "algorithm=igpo").algorithm.name == "igpo"


def test_a_correctness_reward_the_task_lacks_is_refused() -> None:
    with pytest.raises(DiffrlConfigError, match=r"algorithm.correctness_reward='answer' is not one of task math's rewards \(math, format\)"):
        config("task=math", "algorithm=diffu_grpo", "algorithm.correctness_reward=answer")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("algorithm.num_generations=1", "algorithm.num_generations=1"),
        ("algorithm.beta=-0.01", "algorithm.beta=-0.01"),
        ("algorithm.epsilon=-0.2", "algorithm.epsilon=-0.2"),
        ("algorithm.epsilon_high=-0.1", "algorithm.epsilon_high=-0.1"),
        ("task.max_prompt_length=0", "task.max_prompt_length=0"),
    ],
)
def test_settings_that_void_the_update_are_refused(override: str, field: str) -> None:
    with pytest.raises(DiffrlConfigError) as err:
        config("recipe=demo", override)
    assert str(err.value).startswith(field), str(err.value)


def test_lightning_rl_without_a_varying_tpf_is_warned_about() -> None:
    with pytest.warns(UserWarning, match=r"^rollout.threshold=null: algorithm=lightning_rl rewards tokens per forward"):
        config("recipe=demo", "algorithm=lightning_rl", "rollout.threshold=null")
    cfg = config("recipe=demo", "algorithm=lightning_rl", "rollout.threshold=0.9")
    assert cfg.rollout.threshold == 0.9


def test_just_grpo_needs_a_left_to_right_rollout() -> None:
    with pytest.warns(UserWarning, match=r"^rollout.remasking=low_confidence is replaced by left_to_right"):
        cfg = config("recipe=demo", "algorithm=just_grpo", "rollout.remasking=low_confidence")
    # An algorithm declaring the need without forcing the order is refused on a parallel decode.
    unforced = replace(build_algorithm(cfg.algorithm), rollout_config=None)
    with pytest.raises(DiffrlConfigError, match=r"^rollout.remasking=low_confidence .* set rollout.remasking=left_to_right"):
        check_algorithm(cfg, unforced)
    check_algorithm(replace(cfg, rollout=replace(cfg.rollout, remasking="left_to_right", steps=cfg.rollout.max_completion_length)), unforced)


def test_kl_on_an_estimator_whose_paper_forbids_it_is_refused() -> None:
    cfg = config("recipe=demo", "algorithm.beta=0.04")
    algorithm = replace(build_algorithm(cfg.algorithm), needs=Needs(kl=False))
    with pytest.raises(DiffrlConfigError, match=r"^algorithm.beta=0.04: algorithm=diffu_grpo defines no KL term"):
        check_algorithm(cfg, algorithm)
    check_algorithm(replace(cfg, algorithm=replace(cfg.algorithm, beta=0.0)), algorithm)


def test_reference_sync_without_a_moving_reference_is_warned_about() -> None:
    with pytest.warns(UserWarning, match=r"^algorithm.sync_ref_model=true with trainer.lora.enabled=true"):
        config("recipe=demo", "algorithm.beta=0.01", "algorithm.sync_ref_model=true", "trainer=lora")
    with pytest.warns(UserWarning, match=r"^algorithm.sync_ref_model=true with algorithm.beta=0"):
        config("recipe=demo", "algorithm.beta=0", "algorithm.sync_ref_model=true")


def test_igpo_rows_without_the_reference_answer_name_field_and_file(tmp_path: Path) -> None:
    row = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "23"}}
    path = tmp_path / "no_answers.parquet"
    pd.DataFrame([{**row, "extra_info": {"answer": "2 + 21 = 23"}}, {**row, "extra_info": {"index": 7}}]).to_parquet(path)
    specs = [RewardSpec("math")]
    with pytest.raises(DiffrlConfigError) as err:
        load_task_rows([str(path)], specs, answer_field="extra_info.answer")
    message = str(err.value)
    assert message.startswith(f"{path}: 1 of 2 row(s) (first: row 1)") and "task.sft_response_field='extra_info.answer'" in message, message
    # Algorithms that do not inpaint load the same rows.
    assert len(load_task_rows([str(path)], specs)) == 2
