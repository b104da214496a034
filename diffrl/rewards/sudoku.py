"""Sudoku: the ``<answer>`` grid is complete, valid and keeps the puzzle's givens.

Grids are strings read left to right, top to bottom (``extra_info.puzzle``, '0' for an empty cell),
of any size N x N with N a square (4x4 as in d1's data, 9x9). By default the reward is 1 for a
complete valid grid that keeps every given and 0 otherwise; ``partial: true`` gives d1's partial
credit instead: the fraction of the originally empty cells that match the solution in
``reward_model.ground_truth`` (0 if a given was changed).
"""

from __future__ import annotations

import math
import re
from typing import Any

from diffrl.rewards.extract import answer_tag
from diffrl.rewards.registry import PARSE_FAILURE, WRONG, Score, ground_truth_text, register_reward

# Separators a model may put between cells or rows.
_SEPARATORS = re.compile(r"[\s,|+\-]")


def grid_side(puzzle: str) -> int:
    """N for a puzzle of N*N cells where N is itself a square (4, 9, 16)."""
    side = math.isqrt(len(puzzle))
    box = math.isqrt(side)
    if side < 1 or side * side != len(puzzle) or box * box != side:
        raise ValueError(
            f"field 'extra_info.puzzle' has {len(puzzle)} cells; a sudoku has N*N cells with N a square (16 for 4x4, 81 for 9x9)"
        )
    return side


def _units(side: int) -> list[list[int]]:
    """Cell indices of every row, column and box."""
    box = math.isqrt(side)
    rows = [[r * side + c for c in range(side)] for r in range(side)]
    cols = [[r * side + c for r in range(side)] for c in range(side)]
    boxes = [
        [(br + r) * side + bc + c for r in range(box) for c in range(box)]
        for br in range(0, side, box)
        for bc in range(0, side, box)
    ]
    return rows + cols + boxes


def parse_grid(text: str, side: int) -> str | None:
    """The answer's N*N digits 1..N with separators removed, or None if it is not such a grid."""
    cells = _SEPARATORS.sub("", text)
    # ASCII digits only: "²" or "١" pass str.isdigit() but are not cells (int("²") raises).
    if len(cells) != side * side or any(not (c.isascii() and c.isdigit()) or not 1 <= int(c) <= side for c in cells):
        return None
    return cells


def is_solution(grid: str, puzzle: str, side: int) -> bool:
    """Every unit holds 1..N once and every given is kept."""
    digits = set(map(str, range(1, side + 1)))
    keeps = all(p == "0" or p == g for p, g in zip(puzzle, grid))
    return keeps and all({grid[i] for i in unit} == digits for unit in _units(side))


def _check_row(row: dict[str, Any]) -> None:
    puzzle = str(row["extra_info"]["puzzle"])
    side = grid_side(puzzle)
    if any(not (c.isascii() and c.isdigit()) or int(c) > side for c in puzzle):
        raise ValueError(f"field 'extra_info.puzzle' must hold digits 0..{side} (0 = empty), got {puzzle!r}")
    solution = ground_truth_text(row)
    if len(solution) != len(puzzle):
        raise ValueError(f"field 'reward_model.ground_truth' must be the solved grid of {len(puzzle)} digits, got {solution!r}")


@register_reward("sudoku", required=("extra_info.puzzle",), check_row=_check_row)
def sudoku_reward(completions: list[str], rows: list[dict], *, partial: bool = False) -> list[Score]:
    """1 for a complete, valid grid in ``<answer>`` that keeps the givens; ``partial``: the share
    of the empty cells filled as in the solution."""
    scores = []
    for text, row in zip(completions, rows):
        puzzle = str(row["extra_info"]["puzzle"])
        side = grid_side(puzzle)
        answer = answer_tag(text)
        grid = parse_grid(answer, side) if answer is not None else None
        if grid is None:
            scores.append(Score(0.0, PARSE_FAILURE))
            continue
        if any(p != "0" and p != g for p, g in zip(puzzle, grid)):
            scores.append(Score(0.0, WRONG))
            continue
        if partial:
            solution = ground_truth_text(row)
            empty = [i for i, p in enumerate(puzzle) if p == "0"]
            right = sum(grid[i] == solution[i] for i in empty)
            value = right / len(empty) if empty else float(is_solution(grid, puzzle, side))
        else:
            value = float(is_solution(grid, puzzle, side))
        scores.append(Score(value) if value else Score(0.0, WRONG))
    return scores
