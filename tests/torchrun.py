"""Launch real torchrun processes (gloo on CPU) for the distributed tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# DeepSpeed compiles its CPU shared-memory op on first use (30-80 s); a cache folder of our own
# keeps that to once per machine and away from half-built folders other jobs may leave behind.
EXTENSIONS = Path.home() / ".cache" / "diffrl-tests" / "torch_extensions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(tmp: Path) -> dict[str, str]:
    """The child environment: this checkout importable, W&B offline in ``tmp``, the extension cache."""
    out = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS)}
    out.pop("WANDB_API_KEY", None)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        out[var] = str(tmp / "wandb_home")
    return out


def torchrun_cmd(*args: str, nproc: int = 2, nnodes: int = 1, port: int | None = None) -> list[str]:
    """``torchrun`` with a c10d rendezvous on 127.0.0.1 (``port``: shared by the launchers of one job)."""
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
        "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port or free_port()}", *args,
    ]


def run_torchrun(*args: str, tmp: Path, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run one launcher to completion; fails the test with the children's output if it fails."""
    proc = subprocess.run(torchrun_cmd(*args, nproc=nproc), cwd=tmp, env=env(tmp), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc
