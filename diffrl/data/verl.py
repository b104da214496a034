"""verl-format parquet rows: ``prompt`` (chat messages), ``reward_model.ground_truth``, ``extra_info``.

Rows are checked when the file is loaded, so a malformed row stops the run before any compute is
spent, with the file, the row and the field named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A data file or row that cannot be used; the message names file, row and field."""


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field 'prompt' is a string that is not a JSON list of chat messages") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: field 'prompt' must be a non-empty list of {{role, content}} messages, got {type(value).__name__}")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: field 'prompt[{i}]' must have string 'role' and 'content'")
        messages.append({"role": msg["role"], "content": msg["content"]})
    return messages


def validate_row(row: dict[str, Any], where: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check and normalise one row; ``required`` lists extra dotted fields the task reads."""
    row = dict(row)
    if "prompt" not in row:
        raise DataError(f"{where}: field 'prompt' is missing")
    row["prompt"] = _messages(row["prompt"], where)
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise DataError(f"{where}: field 'reward_model.ground_truth' is missing; every row needs the answer its reward checks")
    truth = reward_model["ground_truth"]
    if (isinstance(truth, float) and truth != truth) or (isinstance(truth, str) and not truth.strip()) or (isinstance(truth, (list, tuple)) and not truth):
        raise DataError(f"{where}: field 'reward_model.ground_truth' is empty or NaN ({truth!r}); every row needs the answer its reward checks")
    row["extra_info"] = dict(row.get("extra_info") or {})
    for dotted in required:
        node: Any = row
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise DataError(f"{where}: field {dotted!r} is missing and the task needs it")
    return row


def load_rows(paths: list[str] | str, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Read and validate every row of one or more verl-format parquet files (via ``datasets``)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()

    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise DataError("no data files given (task.train_files is empty)")
    rows: list[dict[str, Any]] = []
    for path in paths:
        if not Path(path).exists():
            raise DataError(f"{path}: data file not found")
        dataset = Dataset.from_parquet(str(path), keep_in_memory=True)
        for i, row in enumerate(dataset):
            rows.append(validate_row(row, f"{path}: row {i}", required))
    return rows
