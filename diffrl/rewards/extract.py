"""Pulling the final answer out of a completion: boxed, <answer> tags, the last number, code blocks.

Every function here does linear work on at most the last :data:`SEARCH_CHARS` characters of a
completion (the answer is at the end; a 320 KB completion costs the same as a 16 KB one), using
``str.find`` / ``rfind`` scans rather than regular expressions that can backtrack.
"""

from __future__ import annotations

import ast
import re

EXTRACT_MODES = ("auto", "boxed", "tag", "number")
# Characters searched, counted from the end of the completion.
SEARCH_CHARS = 16384
# ASCII digits only: unicode digits are not numbers a reward should read.
_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?(?:/[0-9]+)?|-?\.[0-9]+", re.ASCII)
_FENCE_TAG = re.compile(r"[ \t]*([\w+-]*)")
_PYTHON_TAGS = ("", "python", "py", "python3")


def tail(text: str) -> str:
    """The part of a completion that is searched: its last :data:`SEARCH_CHARS` characters."""
    return text[-SEARCH_CHARS:]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    text = tail(text)
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


def tag_content(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>...</tag>`` pair: the last opening tag that a closing tag
    follows, up to the first closing tag after it (reverse and forward ``str`` scans, never a
    backtracking search)."""
    text = tail(text)
    opening, closing = f"<{tag}>", f"</{tag}>"
    last_close = text.rfind(closing)
    if last_close < 0:
        return None
    start = text.rfind(opening, 0, last_close)
    if start < 0:
        return None
    start += len(opening)
    return text[start : text.find(closing, start)]


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair, stripped."""
    found = tag_content(text, "answer")
    return found.strip() if found is not None else None


def last_number(text: str) -> str | None:
    """The last number (or simple fraction a/b) in the text, without thousands separators."""
    found = _NUMBER.findall(tail(text))
    return found[-1].replace(",", "").rstrip(".") if found else None


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks tagged python (or untagged), in order; a block left open
    at the end (a truncated completion) runs to the end."""
    text = tail(text)
    blocks, pos = [], 0
    while True:
        fence = text.find("```", pos)
        if fence < 0:
            break
        line_end = text.find("\n", fence + 3)
        if line_end < 0:
            break
        tag = _FENCE_TAG.match(text, fence + 3, line_end).group(1)  # type: ignore[union-attr]
        close = text.find("```", line_end + 1)
        end = len(text) if close < 0 else close
        if tag.lower() in _PYTHON_TAGS:
            blocks.append(text[line_end + 1 : end])
        pos = end + 3
    return blocks


def parse_python(code: str) -> ast.Module | None:
    """The syntax tree of ``code``, or None if it is not valid Python (or too deeply nested)."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
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
