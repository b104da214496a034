"""Read the records of a W&B offline run file (``run-*.wandb``), for tests.

The file is a ``:W&B`` header followed by LevelDB-log framed protobuf ``Record`` messages.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def _frames(data: bytes) -> Iterator[bytes]:
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_offline_run(run_file: Path) -> dict[str, Any]:
    """History rows (key -> JSON text), the run config's top-level keys and the run id."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    history: list[dict[str, str]] = []
    config_keys: list[str] = []
    run_id = ""
    for frame in _frames(data):
        record = pb.Record()
        record.ParseFromString(frame)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({"/".join(item.nested_key) or item.key: item.value_json for item in record.history.item})
        elif kind == "run":
            config_keys = [u.key for u in record.run.config.update]
            run_id = record.run.run_id
    return {"history": history, "config_keys": config_keys, "run_id": run_id}
