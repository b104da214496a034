"""math-verify rewards: equal forms accepted, wrong ones rejected, each zero with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffrl.data import load_rows
from diffrl.rewards import RewardRunner, RewardSpec, Score
from diffrl.rewards.math import math_equal, math_reward


def row(gt: str) -> dict:
    return {"reward_model": {"ground_truth": gt}, "extra_info": {}}


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("\\frac{1}{2}", "0.5"),  # fractions
        ("1/2", "\\frac12"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}"),
        ("2\\sqrt{2}", "\\sqrt{8}"),  # LaTeX
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("x^2+2x+1", "(x+1)^2"),
        ("5\\text{ cm}", "5"),  # units
        ("10^{\\circ}", "10"),
        ("50\\%", "50"),
        ("\\$18.00", "18"),  # currency and separators
        ("1,800", "1800"),
        ("72 clips", "72"),  # plain text around a number
        ("18 dollars", "18"),
        ("x = 5", "5"),
    ],
)
def test_equal_forms_score_1(prediction: str, gold: str) -> None:
    assert math_equal(prediction, gold) == Score(1.0)


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [("\\frac{1}{3}", "0.5"), ("0.333", "\\frac13"), ("2\\sqrt{3}", "\\sqrt{8}"), ("\\{1,3\\}", "\\{2,1\\}"), ("5\\text{ cm}", "6"), ("1,801", "1800"), ("x^2+1", "(x+1)^2")],
)
def test_wrong_answers_score_0(prediction: str, gold: str) -> None:
    score = math_equal(prediction, gold)
    assert (score.value, score.reason) == (0.0, "wrong")


def test_extraction_modes_and_reasons() -> None:
    texts = [
        "<reasoning>half of 1</reasoning><answer>\\boxed{\\frac{1}{2}}</answer>",  # boxed inside the tag
        "<answer>0.6</answer>",
        "so the result is 1/2",  # last number
        "no number here",
        "<answer>  </answer>",
    ]
    scores = math_reward(texts, [row("0.5")] * len(texts))
    assert [(s.value, s.reason) for s in scores] == [(1, ""), (0, "wrong"), (1, ""), (0, "parse_failure"), (0, "parse_failure")]
    # boxed only: a bare tag does not count
    assert math_reward(["<answer>0.5</answer>"], [row("0.5")], extract="boxed")[0].reason == "parse_failure"
    # GSM8K's last number, after "####" and thousands separators
    assert math_reward(["She makes $1,800 in total. #### 1,800"], [row("1800")], extract="number")[0].value == 1.0


def test_a_pathological_answer_times_out() -> None:
    assert math_equal("9^{9^{9^{9}}}", "5", timeout_seconds=1).reason == "timeout"


def test_real_gold_answers_match_themselves_and_not_a_neighbour(shared: Path) -> None:
    """MATH500's LaTeX answers, boxed, equal themselves; GSM8K's numbers in d1's answer tag equal
    themselves and not their successor."""
    math500 = load_rows(str(shared / "data" / "rl" / "test" / "math500.parquet"))
    gsm8k = load_rows(str(shared / "data" / "rl" / "test" / "gsm8k.parquet"))[:200]
    texts = [f"<reasoning>...</reasoning>\n<answer>\n\\boxed{{{r['reward_model']['ground_truth']}}}\n</answer>" for r in math500]
    texts += [f"<reasoning>...</reasoning>\n<answer>\n{r['reward_model']['ground_truth']}\n</answer>" for r in gsm8k]
    texts += [f"<answer>{float(r['reward_model']['ground_truth'].replace(',', '')) + 1}</answer>" for r in gsm8k]
    with RewardRunner([RewardSpec("math")], num_workers=2) as runner:
        scores = runner(texts, math500 + gsm8k + gsm8k).per_reward["math"].tolist()
    unmatched = [r["reward_model"]["ground_truth"] for r, s in zip(math500, scores) if s != 1]
    assert unmatched == []
    assert scores[len(math500) : len(math500) + len(gsm8k)] == [1.0] * len(gsm8k)
    assert scores[len(math500) + len(gsm8k) :] == [0.0] * len(gsm8k)
