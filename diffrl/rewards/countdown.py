"""Countdown: an arithmetic expression over the given numbers that hits the target.

The expression is parsed into a syntax tree and evaluated with exact fractions by a walker that
accepts only integer literals, + - * / and parentheses; model text is never executed.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from fractions import Fraction

from diffrl.rewards.extract import answer_tag
from diffrl.rewards.registry import PARSE_FAILURE, WRONG, Score, ground_truth_text, register_reward

MAX_EXPRESSION_CHARS = 256
_OPS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__, ast.Div: Fraction.__truediv__}


class ExpressionError(ValueError):
    """The text is not an expression of integers, + - * / and parentheses."""


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ExpressionError("division by zero")
        return _OPS[type(node.op)](left, right)
    raise ExpressionError(f"{type(node).__name__} is not allowed in a countdown expression")


def evaluate_expression(text: str) -> tuple[Fraction, list[int]]:
    """Exact value of ``text`` and the integer literals it uses, in order."""
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").strip()
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise ExpressionError(f"not an expression: {err}") from None
    used: list[int] = []
    return _evaluate(tree, used), used


def parse_numbers(value: object) -> list[int]:
    """``extra_info.numbers`` as stored in the parquet: a JSON list or a list already."""
    numbers = json.loads(value) if isinstance(value, str) else value
    return [int(n) for n in numbers]  # type: ignore[union-attr]


def _check_row(row: dict) -> None:
    try:
        numbers = parse_numbers(row["extra_info"]["numbers"])
    except (TypeError, ValueError):
        raise ValueError(f"field 'extra_info.numbers' must be a list of integers (or its JSON text), got {row['extra_info']['numbers']!r}") from None
    if not numbers:
        raise ValueError("field 'extra_info.numbers' is empty; countdown needs the numbers to combine")
    try:
        Fraction(ground_truth_text(row))
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"field 'reward_model.ground_truth' must be the target number, got {row['reward_model']['ground_truth']!r}") from None


@register_reward("countdown", required=("extra_info.numbers",), check_row=_check_row)
def countdown_reward(completions: list[str], rows: list[dict]) -> list[Score]:
    """1 if the ``<answer>`` expression uses each given number exactly once and equals the target."""
    scores = []
    for text, row in zip(completions, rows):
        target = Fraction(ground_truth_text(row))
        numbers = parse_numbers(row["extra_info"]["numbers"])
        expr = answer_tag(text)
        if expr is None:
            scores.append(Score(0.0, PARSE_FAILURE))
            continue
        expr = expr.split("=")[0]
        try:
            value, used = evaluate_expression(expr)
        except ExpressionError:
            scores.append(Score(0.0, PARSE_FAILURE))
            continue
        ok = Counter(used) == Counter(numbers) and value == target
        scores.append(Score(1.0) if ok else Score(0.0, WRONG))
    return scores
