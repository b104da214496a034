"""Pulling the final answer out of a completion: boxed, <answer> tags, or the last number."""

from __future__ import annotations

import ast
import re

EXTRACT_MODES = ("auto", "boxed", "tag", "number")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# A fenced block: its language tag, then everything up to the closing fence (or the end of a
# completion cut off inside the block).
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair."""
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def last_number(text: str) -> str | None:
    """The last number (or simple fraction a/b) in the text, without thousands separators."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks tagged python (or untagged), in order."""
    return [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]


def parse_python(code: str) -> ast.Module | None:
    """The syntax tree of ``code``, or None if it is not valid Python."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """``boxed``, ``tag``, ``number``, or ``auto``: boxed, else the answer tag, else the last number.

    Inside an answer tag, a boxed expression wins over the rest of the tag's text.
    """
    if mode == "boxed":
        return last_boxed(text)
    if mode == "tag":
        return answer_tag(text)
    if mode == "number":
        return last_number(text)
    if mode != "auto":
        raise ValueError(f"answer extraction mode {mode!r} is not one of {', '.join(EXTRACT_MODES)}")
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tag = answer_tag(text)
    if tag is not None:
        return tag
    return last_number(text)
