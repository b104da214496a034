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


TINY_VOCAB = 512
# family -> (published folder, facts its config lacks, in the tiny vocabulary's remapped ids:
# mask = V-1, eos/pad = V-2). Block size 4 gives several blocks in short test sequences.
TINY_SOURCES = {
    "llada": ("LLaDA-8B-Instruct", {}),
    "dream": ("Dream-v0-Instruct-7B", {}),
    "sdar": ("SDAR-4B-Chat", {}),
    "sdar_moe": ("SDAR-30B-A3B-Chat", {"mask_token_id": TINY_VOCAB - 1, "block_size": 4}),
    "llada2_moe": ("LLaDA2.1-mini", {"mask_token_id": TINY_VOCAB - 1, "eos_token_id": TINY_VOCAB - 2, "block_size": 4}),
}


class TinyCheckpoint:
    """A tiny random checkpoint of one family on disk, and the recipe facts it needs to load."""

    def __init__(self, family: str, folder: Path, overrides: dict) -> None:
        self.family, self.folder, self.fact_overrides = family, folder, overrides

    @property
    def overrides(self):
        from diffrl.models import FactOverrides

        return FactOverrides(**self.fact_overrides)

    def load(self, dtype: torch.dtype = torch.float32, folder: Path | None = None):
        from diffrl.models import load_pretrained

        return load_pretrained(folder or self.folder, dtype=dtype, overrides=self.overrides).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, shared: Path):
    """``tiny_checkpoint(family)``: a tiny fp32 checkpoint with the published names, written once.

    Weights are drawn with std 0.1 (not 0.02) so attention is sharp enough for RoPE or mask
    mistakes to move the logits well past the test tolerances.

    LLaDA2's ``expert_bias`` gets random non-zero values so that it changes which experts win.
    """
    from diffrl.models import save_pretrained
    from diffrl.models.moe import GroupLimitedRouter
    from diffrl.models.tiny import write_tiny_checkpoint

    made: dict[str, TinyCheckpoint] = {}

    def make(family: str) -> TinyCheckpoint:
        if family not in made:
            source, facts = TINY_SOURCES[family]
            ckpt = TinyCheckpoint(family, tmp_path_factory.mktemp(f"tiny_{family}"), facts)
            write_tiny_checkpoint(shared / "hf" / source, ckpt.folder, vocab_size=TINY_VOCAB, seed=0, std=0.1, overrides=ckpt.overrides)
            model = ckpt.load()
            routers = [m for m in model.modules() if isinstance(m, GroupLimitedRouter)]
            if routers:
                gen = torch.Generator().manual_seed(1)
                for router in routers:
                    router.expert_bias.copy_(torch.randn(router.expert_bias.shape, generator=gen) * 0.05)
                save_pretrained(model, ckpt.folder)
            made[family] = ckpt
        return made[family]

    return make
