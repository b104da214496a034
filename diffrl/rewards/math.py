"""Math answers checked for equivalence with math-verify (GSM8K, MATH, MATH500, AIME)."""

from __future__ import annotations

import re

from diffrl.rewards.extract import extract_answer
from diffrl.rewards.registry import PARSE_FAILURE, TIMEOUT, WRONG, Score, register_reward


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _latex(text: str) -> str:
    """Plain numbers lose currency signs and thousands separators ("$1,000" -> "1000", which
    math-verify would otherwise read as a tuple); anything else is wrapped as inline LaTeX."""
    text = text.strip()
    plain = text.replace(",", "").replace("$", "").strip()
    if _PLAIN_NUMBER.fullmatch(plain):
        return plain
    return text if text.startswith(("$", "\\(")) else f"${text}$"


def math_equal(prediction: str, ground_truth: str, timeout_seconds: int = 5) -> Score:
    """Whether ``prediction`` equals ``ground_truth`` as math (fractions, LaTeX, sets, ...).

    math-verify times itself out with ``signal.alarm``, which only works in a process's main
    thread; the reward runner calls it there or in a worker process.
    """
    from math_verify import parse, verify

    try:
        gold = parse(_latex(ground_truth), parsing_timeout=timeout_seconds)
        pred = parse(_latex(prediction), parsing_timeout=timeout_seconds)
    except TimeoutError:
        return Score(0.0, TIMEOUT)
    if not pred:
        return Score(0.0, PARSE_FAILURE)
    try:
        ok = verify(gold, pred, timeout_seconds=timeout_seconds)
    except TimeoutError:
        return Score(0.0, TIMEOUT)
    return Score(1.0) if ok else Score(0.0, WRONG)


@register_reward("math")
def math_reward(completions: list[str], rows: list[dict], *, extract: str = "auto", timeout_seconds: int = 5) -> list[Score]:
    """1 if the extracted answer is mathematically equal to ``reward_model.ground_truth``."""
    scores = []
    for text, row in zip(completions, rows):
        answer = extract_answer(text, extract)
        if answer is None or not answer.strip():
            scores.append(Score(0.0, PARSE_FAILURE))
            continue
        scores.append(math_equal(answer, str(row["reward_model"]["ground_truth"]), timeout_seconds))
    return scores
