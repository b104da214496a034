"""Math, countdown, format and exact-match rewards, and a reward that raises."""

from __future__ import annotations

from diffrl.rewards import RewardRunner, RewardSpec, register_reward
from diffrl.rewards.countdown import countdown_reward
from diffrl.rewards.math import math_reward


def row(gt: str, **extra) -> dict:
    return {"reward_model": {"ground_truth": gt}, "extra_info": extra}


def test_math_verify_accepts_equal_forms_and_rejects_wrong() -> None:
    rows = [row("0.5")] * 4
    scores = math_reward(["\\boxed{\\frac{1}{2}}", "<answer>0.6</answer>", "so 1/2", "no number here"], rows)
    assert [s.value for s in scores] == [1.0, 0.0, 1.0, 0.0]
    assert [s.reason for s in scores] == ["", "wrong", "", "parse_failure"]


def test_gsm8k_last_number_with_separators() -> None:
    scores = math_reward(["She makes $1,800 in total. #### 1,800"], [row("1800")], extract="number")
    assert scores[0].value == 1.0


def test_countdown_rejects_reuse_and_eval_tricks() -> None:
    info = {"numbers": "[30, 100, 93]"}
    texts = [
        "<answer>30 - (100 - 93)</answer>",
        "<answer>30 - (100 - 93) + 0</answer>",  # 0 is not given
        "<answer>30 - 7</answer>",  # misses numbers
        "<answer>30 + 30 - 37</answer>",  # reuses 30
        "<answer>__import__('os').system('true')</answer>",
        "<answer>(lambda: 23)()</answer>",
        "<answer>23</answer>",
        "no tags",
    ]
    values = [s.value for s in countdown_reward(texts, [row("23", **info)] * len(texts))]
    assert values == [1.0, 0, 0, 0, 0, 0, 0, 0]


def test_a_reward_that_raises_costs_only_its_samples() -> None:
    @register_reward("explodes_on_b")
    def explodes(completions, rows):
        if any("b" in c for c in completions):
            raise RuntimeError("boom")
        return [1.0] * len(completions)

    runner = RewardRunner([RewardSpec("explodes_on_b", 2.0), RewardSpec("exact_match", 1.0)])
    out = runner(["a", "b", "a"], [row("a"), row("b"), row("x")])
    assert out.total.tolist() == [3.0, 1.0, 2.0]
    assert out.errors == 1 and out.reasons["explodes_on_b"] == ["", "reward_error", ""]
    assert out.metrics()["reward/errors"] == 1.0
