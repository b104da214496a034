"""Sudoku: complete, valid, keeps the givens; d1's partial credit as an option."""

from __future__ import annotations

import random
from pathlib import Path

from diffrl.data import load_rows
from diffrl.rewards.sudoku import sudoku_reward


def answer(grid: str) -> str:
    return f"<reasoning>...</reasoning>\n<answer>\n{grid}\n</answer>"


def valid(grid: str, side: int, box: int) -> bool:
    """A reference check written for this test: rows, columns and boxes by slicing."""
    cells = [[grid[r * side + c] for c in range(side)] for r in range(side)]
    units = cells + [list(col) for col in zip(*cells)]
    units += [[cells[r][c] for r in range(br, br + box) for c in range(bc, bc + box)] for br in range(0, side, box) for bc in range(0, side, box)]
    return all(sorted(u) == [str(d) for d in range(1, side + 1)] for u in units)


def test_real_solutions_score_1_and_broken_grids_0(shared: Path) -> None:
    rows = load_rows(str(shared / "data" / "rl" / "test" / "sudoku.parquet"))[:100]
    solutions = [r["reward_model"]["ground_truth"] for r in rows]
    assert all(valid(s, 4, 2) for s in solutions)
    assert [s.value for s in sudoku_reward([answer(s) for s in solutions], rows)] == [1.0] * len(rows)
    # Swapping two different cells of a row breaks two columns (and keeps or breaks givens).
    broken = [s[1] + s[0] + s[2:] if s[0] != s[1] else s[2:4] + s[0:2] + s[4:] for s in solutions]
    assert [s.value for s in sudoku_reward([answer(b) for b in broken], rows)] == [0.0] * len(rows)


def test_a_grid_that_changes_a_given_is_wrong_even_if_valid() -> None:
    # A valid grid, and the puzzle it solves; a second valid grid differing in a given cell.
    solution, other = "1234341221434321", "2143432112343412"
    assert valid(solution, 4, 2) and valid(other, 4, 2)
    puzzle = "1" + "0" * 15  # the given 1 in the corner
    row = {"reward_model": {"ground_truth": solution}, "extra_info": {"puzzle": puzzle}}
    full = sudoku_reward([answer(solution), answer(other)], [row, row])
    part = sudoku_reward([answer(solution), answer(other)], [row, row], partial=True)
    assert [(s.value, s.reason) for s in full] == [(1.0, ""), (0.0, "wrong")]
    assert [(s.value, s.reason) for s in part] == [(1.0, ""), (0.0, "wrong")]


def test_parsing() -> None:
    solution = "1234341221434321"
    row = {"reward_model": {"ground_truth": solution}, "extra_info": {"puzzle": "0" * 16}}
    texts = [
        answer("1234\n3412\n2143\n4321"),  # rows on lines
        answer("1 2 3 4 | 3 4 1 2 | 2 1 4 3 | 4 3 2 1"),  # separators
        answer("123434122143432"),  # 15 cells
        answer("1234341221434325"),  # a 5 in a 4x4
        solution,  # no tags
    ]
    assert [(s.value, s.reason) for s in sudoku_reward(texts, [row] * len(texts))] == [(1, ""), (1, ""), (0, "parse_failure"), (0, "parse_failure"), (0, "parse_failure")]


def test_partial_credit_is_the_share_of_empty_cells_filled_right(shared: Path) -> None:
    rng = random.Random(0)
    rows = load_rows(str(shared / "data" / "rl" / "test" / "sudoku.parquet"))[:50]
    texts, expected = [], []
    for row in rows:
        puzzle, solution = row["extra_info"]["puzzle"], row["reward_model"]["ground_truth"]
        empty = [i for i, c in enumerate(puzzle) if c == "0"]
        wrong = set(rng.sample(empty, rng.randint(0, len(empty))))
        grid = "".join(str(int(c) % 4 + 1) if i in wrong else c for i, c in enumerate(solution))
        texts.append(answer(grid))
        expected.append((len(empty) - len(wrong)) / len(empty))
    values = [s.value for s in sudoku_reward(texts, rows, partial=True)]
    assert values == expected and 0 < sum(values) < len(rows)


def test_9x9() -> None:
    solution = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
    assert valid(solution, 9, 3)
    puzzle = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
    row = {"reward_model": {"ground_truth": solution}, "extra_info": {"puzzle": puzzle}}
    swapped = solution[1] + solution[0] + solution[2:]
    assert [s.value for s in sudoku_reward([answer(solution), answer(swapped)], [row, row])] == [1.0, 0.0]
