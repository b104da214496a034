"""Format rewards: the reasoning/answer tags a task's prompt asks for.

The tags are found by forward ``str.find`` scans (linear time; a regular expression with lazy
``.*?`` groups backtracks quadratically on unclosed tags), on the searched tail of the completion.
"""

from __future__ import annotations

from diffrl.rewards.extract import parse_python, python_blocks, tail
from diffrl.rewards.registry import PARSE_FAILURE, Score, register_reward


def _next_after_whitespace(text: str, closing: str, opening: str, start: int) -> int:
    """Where ``opening`` ends, for the first ``closing`` at or after ``start`` that only
    whitespace separates from an ``opening``; -1 if there is none."""
    pos = start
    while True:
        at = text.find(closing, pos)
        if at < 0:
            return -1
        gap = at + len(closing)
        while gap < len(text) and text[gap].isspace():
            gap += 1
        if text.startswith(opening, gap):
            return gap + len(opening)
        pos = at + 1


def tags_in_order(text: str, tags: list[str]) -> bool:
    """``<t1>...</t1>`` then, with only whitespace between, ``<t2>...</t2>`` and so on, anywhere
    in the text (the regex ``<t1>.*?</t1>\\s*<t2>.*?</t2>`` searched with DOTALL)."""
    pos = text.find(f"<{tags[0]}>")
    if pos < 0:
        return False
    pos += len(tags[0]) + 2
    for tag, following in zip(tags, tags[1:]):
        pos = _next_after_whitespace(text, f"</{tag}>", f"<{following}>", pos)
        if pos < 0:
            return False
    return text.find(f"</{tags[-1]}>", pos) >= 0


def strict_layout(text: str, tags: list[str]) -> bool:
    """The whole text is ``<t1>\\n...\\n</t1>\\n<t2>\\n...\\n</t2>`` (d1's layout; the regex
    ``<t1>\\n.*?\\n</t1>\\n<t2>\\n.*?\\n</t2>`` fully matched with DOTALL)."""
    opening, end = f"<{tags[0]}>\n", f"\n</{tags[-1]}>"
    if not text.startswith(opening) or not text.endswith(end):
        return False
    pos = len(opening)
    for tag, following in zip(tags, tags[1:]):
        separator = f"\n</{tag}>\n<{following}>\n"
        at = text.find(separator, pos)
        if at < 0:
            return False
        pos = at + len(separator)
    return pos <= len(text) - len(end)


@register_reward("format")
def format_reward(completions: list[str], rows: list[dict], *, tags: list[str] | None = None, strict: bool = False) -> list[Score]:
    """1 if the completion has the tags in order. ``strict`` wants d1's exact layout (each tag and
    its content on their own lines, nothing around them); otherwise the tags may appear anywhere."""
    names = list(tags or ["reasoning", "answer"])
    if not names:
        raise ValueError("format reward: tags is empty; name the tags the completion must hold")
    scores = []
    for text in completions:
        text = tail(text)
        ok = strict_layout(text.strip(), names) if strict else tags_in_order(text, names)
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
