"""Format rewards: the reasoning/answer tags a task's prompt asks for."""

from __future__ import annotations

import re

from diffrl.rewards.extract import parse_python, python_blocks
from diffrl.rewards.registry import PARSE_FAILURE, Score, register_reward


def _pattern(tags: list[str], strict: bool) -> re.Pattern[str]:
    if strict:
        return re.compile(r"\n".join(rf"<{t}>\n.*?\n</{t}>" for t in tags), re.DOTALL)
    return re.compile(r"\s*".join(rf"<{t}>.*?</{t}>" for t in tags), re.DOTALL)


@register_reward("format")
def format_reward(completions: list[str], rows: list[dict], *, tags: list[str] | None = None, strict: bool = False) -> list[Score]:
    """1 if the completion has the tags in order. ``strict`` wants d1's exact layout (each tag and
    its content on their own lines, nothing around them); otherwise the tags may appear anywhere."""
    pattern = _pattern(list(tags or ["reasoning", "answer"]), strict)
    scores = []
    for text in completions:
        ok = pattern.fullmatch(text.strip()) if strict else pattern.search(text)
        scores.append(Score(1.0) if ok else Score(0.0, PARSE_FAILURE))
    return scores


@register_reward("code_format")
def code_format_reward(completions: list[str], rows: list[dict]) -> list[Score]:
    """1 if the completion has a fenced Python block whose code parses (DiffuCoder's format reward)."""
    scores = []
    for text in completions:
        blocks = python_blocks(text)
        scores.append(Score(1.0) if blocks and parse_python(blocks[-1]) is not None else Score(0.0, PARSE_FAILURE))
    return scores
