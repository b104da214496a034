"""Math answers checked for equivalence with math-verify (GSM8K, MATH, MATH500, AIME).

The answer is extracted first (``extract``: boxed, the ``<answer>`` tag, the last number, or
``auto``: boxed, else the tag, else the last number), then compared with the ground truth as math:
fractions, LaTeX, sets, intervals, units and percent signs are understood by math-verify.

math-verify times itself out with ``signal.alarm``, which only works in a process's main thread:
the reward is pooled (it runs in the runner's worker processes, in their main thread); called from
another thread it runs without its own timeout and relies on the pool's per-sample deadline.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from diffrl.rewards.extract import EXTRACT_MODES, extract_answer
from diffrl.rewards.registry import PARSE_FAILURE, TIMEOUT, WRONG, Score, ground_truth_text, register_reward

_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_LATEX_MARKS = re.compile(r"[\\^_{}]")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _gold_latex(text: str) -> str:
    """Plain numbers lose currency signs and thousands separators ("$1,000" -> "1000", which
    math-verify would otherwise read as a tuple); anything else is wrapped as inline LaTeX."""
    text = text.strip()
    plain = text.replace(",", "").replace("$", "").strip()
    if _PLAIN_NUMBER.fullmatch(plain):
        return plain
    return text if text.startswith(("$", "\\(")) else f"${text}$"


def _prediction_forms(text: str) -> list[str]:
    """What to hand math-verify for an extracted answer, in order. Math (LaTeX marks, or no word
    of two letters or more: "6 - 5i", "y = 2x + 3") is read as inline LaTeX first; prose ("72
    clips", whose LaTeX reading is the product 72*c*l*i*p*s) as plain text first, where
    math-verify finds the number."""
    text = text.strip()
    latex, plain = _gold_latex(text), text
    return [plain, latex] if _WORD.search(text) and not _LATEX_MARKS.search(text) else [latex, plain]


def _timeout(seconds: int) -> int | None:
    return seconds if threading.current_thread() is threading.main_thread() else None


def math_equal(prediction: str, ground_truth: str, timeout_seconds: int = 5) -> Score:
    """Whether ``prediction`` equals ``ground_truth`` as math (fractions, LaTeX, sets, ...)."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    seconds = _timeout(timeout_seconds)
    try:
        gold = parse(_gold_latex(ground_truth), parsing_timeout=seconds, raise_on_error=True)
        pred: list[Any] = []
        for form in _prediction_forms(prediction):
            pred = parse(form, parsing_timeout=seconds, raise_on_error=True)
            if pred:
                break
    except TimeoutException:
        return Score(0.0, TIMEOUT)
    except Exception:
        return Score(0.0, PARSE_FAILURE)
    if not pred:
        return Score(0.0, PARSE_FAILURE)
    try:
        ok = verify(gold, pred, timeout_seconds=seconds, raise_on_error=True)
    except TimeoutException:
        return Score(0.0, TIMEOUT)
    except Exception:
        ok = False
    return Score(1.0) if ok else Score(0.0, WRONG)


def _check_row(row: dict[str, Any]) -> None:
    ground_truth_text(row)


@register_reward("math", check_row=_check_row, pooled=True)
def math_reward(completions: list[str], rows: list[dict], *, extract: str = "auto", timeout_seconds: int = 5) -> list[Score]:
    """1 if the extracted answer is mathematically equal to ``reward_model.ground_truth``.

    ``extract``: ``auto`` (boxed, else ``<answer>``, else the last number), ``boxed``, ``tag`` or
    ``number`` (GSM8K's last number); ``timeout_seconds`` bounds each math-verify call.
    """
    if extract not in EXTRACT_MODES:
        raise ValueError(f"math reward: extract={extract!r} is not one of {', '.join(EXTRACT_MODES)}")
    scores = []
    for text, row in zip(completions, rows):
        answer = extract_answer(text, extract)
        if answer is None or not answer.strip():
            scores.append(Score(0.0, PARSE_FAILURE))
            continue
        scores.append(math_equal(answer, ground_truth_text(row), timeout_seconds))
    return scores
