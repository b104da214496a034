"""verl-format parquet rows: ``prompt`` (chat messages), ``reward_model.ground_truth``, ``extra_info``.

Every row is checked when its file is loaded, before any compute is spent. A row check is a
function of one row that returns the row (normalised, or None if unchanged) or raises :class:`DataError` naming the
field; :data:`ROW_CHECKS` are the checks every task needs, and callers add their own (the task's
rewards, the fields it reads). A load reports every bad row at once (how many, and the first few
with file, row and field), and ``on_bad_rows="skip"`` drops them instead, logging the count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from diffrl.errors import DiffrlConfigError

log = logging.getLogger(__name__)

Row = dict[str, Any]
# A row check returns the row, normalised, or None when it only inspects it.
RowCheck = Callable[[Row], "Row | None"]
ON_BAD_ROWS = ("error", "skip")
# Bad rows listed in full in an error; the rest are counted.
SHOWN_BAD_ROWS = 5
DATA_DIR_HINT = "task files are read from ${data_dir} (env DIFFRL_DATA_DIR, default data/): set DIFFRL_DATA_DIR or data_dir=<folder>, or list the files in task.train_files / task.val_files"


class DataError(DiffrlConfigError):
    """A data file or row that cannot be used; the message names file, row and field."""


def check_prompt(row: Row) -> Row:
    """``prompt`` is a non-empty list of {role, content} messages (a JSON string of one is parsed)."""
    value = row.get("prompt")
    if value is None:
        raise DataError("field 'prompt' is missing")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError("field 'prompt' is a string that is not a JSON list of chat messages") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"field 'prompt' must be a non-empty list of {{role, content}} messages, got {type(value).__name__}")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"field 'prompt[{i}]' must have string 'role' and 'content'")
        messages.append({"role": msg["role"], "content": msg["content"]})
    return {**row, "prompt": messages}


def check_ground_truth(row: Row) -> Row:
    """``reward_model.ground_truth`` is present: every reward checks against it."""
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise DataError("field 'reward_model.ground_truth' is missing; every row needs the answer its reward checks")
    truth = reward_model["ground_truth"]
    if (isinstance(truth, float) and truth != truth) or (isinstance(truth, str) and not truth.strip()) or (isinstance(truth, (list, tuple)) and not truth):
        raise DataError(f"field 'reward_model.ground_truth' is empty or NaN ({truth!r}); every row needs the answer its reward checks")
    return row


def check_extra_info(row: Row) -> Row:
    """``extra_info`` is a dict (empty when absent)."""
    return {**row, "extra_info": dict(row.get("extra_info") or {})}


def check_fields(required: Sequence[str], row: Row) -> Row:
    """Every dotted field in ``required`` is present (use with ``functools.partial``)."""
    for dotted in required:
        node: Any = row
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise DataError(f"field {dotted!r} is missing and the task needs it")
    return row


# The checks every verl-format row passes, in order (each may normalise the row).
ROW_CHECKS: tuple[RowCheck, ...] = (check_prompt, check_ground_truth, check_extra_info)


def run_checks(row: Row, checks: Sequence[RowCheck]) -> Row:
    """``row`` after every check in turn (a check raises on a bad row)."""
    for check in checks:
        checked = check(row)
        row = row if checked is None else checked
    return row


def validate_row(row: Row, where: str, required: tuple[str, ...] = ()) -> Row:
    """Check and normalise one row; ``required`` lists extra dotted fields the task reads."""
    try:
        return run_checks(dict(row), (*ROW_CHECKS, partial(check_fields, required)))
    except DataError as err:
        raise DataError(f"{where}: {err}") from None


@dataclass(frozen=True)
class BadRow:
    path: str
    index: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: row {self.index}: {self.problem}"


def bad_rows_error(bad: list[BadRow], total: int) -> DataError:
    """One error for every bad row: the first few in full, then the count and the two fixes."""
    shown = "\n".join(str(b) for b in bad[:SHOWN_BAD_ROWS])
    more = f" ({len(bad) - SHOWN_BAD_ROWS} more not shown)" if len(bad) > SHOWN_BAD_ROWS else ""
    return DataError(
        f"{shown}\n{len(bad)} bad row{'s' if len(bad) > 1 else ''} of {total}{more}: "
        "fix the data, or set task.on_bad_rows=skip to train without them"
    )


def read_parquet(path: str | Path) -> list[Row]:
    """Every row of one parquet file as Python objects; a missing, unreadable or empty file is a
    :class:`DataError` saying which and how to fix it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        missing = next((p for p in reversed(path.parents) if not p.exists()), None)
        where = f" (folder {missing} does not exist)" if missing is not None else ""
        raise DataError(f"{path}: data file not found{where}; {DATA_DIR_HINT}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; name the parquet file itself in task.train_files / task.val_files")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path} is not a readable parquet file ({reason}); task files must be verl-format parquet (prompt, reward_model, extra_info)") from None
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows; point task.train_files / task.val_files at a file with data")
    return table.to_pylist()


def load_rows(
    paths: list[str] | str,
    required: tuple[str, ...] = (),
    *,
    checks: Sequence[RowCheck] = (),
    on_bad_rows: str = "error",
) -> list[Row]:
    """Read and check every row of one or more verl-format parquet files.

    Each row passes :data:`ROW_CHECKS`, the ``required`` dotted fields, then ``checks`` (a check
    that raises ``ValueError`` marks the row bad). Bad rows are collected over every file: with
    ``on_bad_rows="error"`` one :class:`DataError` lists them; with ``"skip"`` they are dropped and
    their count logged.
    """
    if on_bad_rows not in ON_BAD_ROWS:
        raise DataError(f"task.on_bad_rows={on_bad_rows!r} is not one of {', '.join(ON_BAD_ROWS)}")
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise DataError("no data files given (task.train_files is empty)")
    all_checks = (*ROW_CHECKS, partial(check_fields, required), *checks)
    rows: list[Row] = []
    bad: list[BadRow] = []
    total = 0
    for path in paths:
        for i, row in enumerate(read_parquet(path)):
            total += 1
            try:
                rows.append(run_checks(row, all_checks))
            except ValueError as err:
                bad.append(BadRow(str(path), i, str(err)))
    if bad and on_bad_rows == "error":
        raise bad_rows_error(bad, total)
    if bad:
        log.warning("task.on_bad_rows=skip: dropped %d bad row(s) of %d (first: %s)", len(bad), total, bad[0])
        if not rows:
            raise DataError(f"every one of the {total} rows is bad (first: {bad[0]}); fix the data")
    return rows
