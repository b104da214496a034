"""Shared fixtures: the ../shared folder and tiny random checkpoints of the real architectures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIFFRL_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    assert SHARED.is_dir(), f"tests need the shared folder beside the checkout ({SHARED}); set DIFFRL_SHARED"
    return SHARED


@pytest.fixture(scope="session")
def tiny_llada_dir(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """A tiny LLaDA with the published config keys and names and a 512-token vocabulary."""
    from diffrl.models.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(shared / "hf" / "LLaDA-8B-Instruct", tmp_path_factory.mktemp("tiny_llada"), vocab_size=512, seed=0)


@pytest.fixture()
def tiny_llada(tiny_llada_dir: Path):
    from diffrl.models import load_pretrained

    return load_pretrained(tiny_llada_dir, dtype=torch.float32).eval()


@pytest.fixture(autouse=True)
def _wandb_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep W&B offline and out of the home folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
