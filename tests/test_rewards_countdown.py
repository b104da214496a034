"""Countdown: the expression is parsed, never executed; each given number exactly once."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

from diffrl.data import load_rows
from diffrl.rewards.countdown import MAX_EXPRESSION_CHARS, countdown_reward

ROW = {"reward_model": {"ground_truth": "23"}, "extra_info": {"numbers": "[30, 100, 93]"}}


def scores(*answers: str, row: dict = ROW) -> list[tuple[float, str]]:
    return [(s.value, s.reason) for s in countdown_reward([f"<reasoning>...</reasoning><answer>{a}</answer>" for a in answers], [row] * len(answers))]


def test_right_expressions_in_any_spelling() -> None:
    right = ["30 - (100 - 93)", "30-(100-93)", "(30 + 93) - 100", "30 − (100 − 93)", "30 - (100 - 93) = 23", "\n30 - (100 - 93)\n"]
    assert scores(*right) == [(1.0, "")] * len(right)


def test_reused_and_missing_numbers_are_wrong() -> None:
    assert scores("30 + 30 - 37", "30 - 7", "30 - (100 - 93) + 0", "30 - (100 - 93) * 1", "93 - 100 + 30 + 0 * 30") == [(0.0, "wrong")] * 5


def test_wrong_value_is_wrong() -> None:
    assert scores("30 + 100 - 93", "100 / 30 * 93") == [(0.0, "wrong")] * 2


def test_eval_tricks_and_non_arithmetic_do_not_parse(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    tricks = [
        f"__import__('os').system('touch {marker}')",
        "(lambda: 23)()",
        "[30, 100, 93] and 23",
        "30 - (100 - 93) if True else 0",
        "x := 23",
        "30 ** 1 - (100 - 93)",  # powers are not among the operations
        "30 - (100 - 93.0)",  # floats are not given numbers
        "-(-30) - (100 - 93)",  # unary minus
        "True * 30 - (100 - 93)",
        "'30' - (100 - 93)",
        "30 -- (100 - 93)",
    ]
    assert scores(*tricks) == [(0.0, "parse_failure")] * len(tricks)
    assert not marker.exists()


def test_division_by_zero_and_exact_fractions() -> None:
    row = {"reward_model": {"ground_truth": "24"}, "extra_info": {"numbers": [3, 3, 8, 8]}}
    assert scores("8 / (3 - 3) * 8", row=row) == [(0.0, "parse_failure")]
    # 8 / (3 - 8/3) is 24 exactly; in floats it is 23.999999999999993.
    assert 8 / (3 - 8 / 3) != 24
    assert scores("8 / (3 - 8 / 3)", row=row) == [(1.0, "")]


def test_huge_expressions_are_rejected_before_evaluation() -> None:
    nested = "(" * 200 + "30" + ")" * 200 + " - (100 - 93)"
    long = " + ".join(["30 - 30"] * 100)
    assert len(nested) > MAX_EXPRESSION_CHARS and len(long) > MAX_EXPRESSION_CHARS
    assert scores(nested, long, "9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9 * 9") == [(0.0, "parse_failure"), (0.0, "parse_failure"), (0.0, "wrong")]


def test_missing_tags_are_a_parse_failure() -> None:
    assert [(s.value, s.reason) for s in countdown_reward(["30 - (100 - 93)"], [ROW])] == [(0.0, "parse_failure")]


def solve(numbers: list[int], target: Fraction) -> str | None:
    """A brute-force solver written for this test: every order, operator and bracketing."""
    def build(items: list[tuple[Fraction, str]]):
        if len(items) == 1:
            yield items[0]
            return
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            options = [(a + b, f"({ea} + {eb})"), (a - b, f"({ea} - {eb})"), (a * b, f"({ea} * {eb})")]
            if b != 0:
                options.append((a / b, f"({ea} / {eb})"))
            for value in options:
                yield from build([*rest, value])

    return next((expr for value, expr in build([(Fraction(n), str(n)) for n in numbers]) if value == target), None)


def test_real_rows_solved_by_a_reference_solver_score_1(shared: Path) -> None:
    rows = load_rows(str(shared / "data" / "rl" / "test" / "countdown.parquet"))[:40]
    answers, solved = [], []
    for row in rows:
        numbers = [int(n) for n in row["extra_info"]["numbers"].strip("[]").split(",")]
        expr = solve(numbers, Fraction(row["reward_model"]["ground_truth"]))
        if expr is not None:
            answers.append(f"<reasoning>search</reasoning>\n<answer>\n{expr}\n</answer>")
            solved.append(row)
    assert len(solved) >= 30
    assert [s.value for s in countdown_reward(answers, solved)] == [1.0] * len(solved)
