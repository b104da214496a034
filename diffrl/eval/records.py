"""The results folder's per-sample JSONL: written incrementally per rank, read back to resume, merged.

Each rank appends its records to ``samples.rank<r>.jsonl`` and flushes after every batch, so a
killed evaluation loses at most the batch in flight (a torn last line is dropped on read). At the
end rank 0 merges every part into ``samples.jsonl`` (sorted by row and sample) and removes the
parts. A sample is identified by (row index, sample number); the first record of a key wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MERGED = "samples.jsonl"
PART = "samples.rank{rank}.jsonl"

Key = tuple[int, int]


def key(record: dict[str, Any]) -> Key:
    return int(record["index"]), int(record["sample"])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete records of one file; a torn line (a process killed mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(PART.format(rank="*")))


def read_all(folder: Path) -> dict[Key, dict[str, Any]]:
    """Every complete record in the folder (merged file first, then the parts), one per key."""
    out: dict[Key, dict[str, Any]] = {}
    for path in [folder / MERGED, *part_files(folder)]:
        for record in read_jsonl(path):
            out.setdefault(key(record), record)
    return out


class PartWriter:
    """Appends one rank's records, each batch flushed and synced before the next is generated."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.path = folder / PART.format(rank=rank)
        # Drop a torn last line now: appending after it would glue the next record onto it.
        if self.path.exists():
            write_atomic(self.path, read_jsonl(self.path))
        self.file = open(self.path, "a")

    def write(self, records: list[dict[str, Any]]) -> None:
        self.file.write("".join(json.dumps(r) + "\n" for r in records))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def write_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def merge(folder: Path) -> list[dict[str, Any]]:
    """Write every record into ``samples.jsonl`` sorted by key, remove the parts, return the records."""
    records = [r for _, r in sorted(read_all(folder).items())]
    write_atomic(folder / MERGED, records)
    for path in part_files(folder):
        path.unlink()
    return records


def clear(folder: Path) -> None:
    """Forget earlier samples and results (``eval.resume=false``)."""
    for path in [folder / MERGED, *part_files(folder)]:
        path.unlink(missing_ok=True)
