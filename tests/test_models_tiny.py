"""Tiny checkpoints of every published folder keep its structure and its exact name pattern."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffrl.models import FactOverrides, load_pretrained
from diffrl.models.tiny import write_tiny_checkpoint

HF_FOLDERS = ["Dream-v0-Instruct-7B", "LLaDA-8B-Instruct", "LLaDA2.0-mini", "LLaDA2.1-mini", "SDAR-1dot7B-Chat", "SDAR-30B-A3B-Chat", "SDAR-4B-Chat", "SDAR-8B-Chat"]
REPO = Path(__file__).resolve().parents[1]
V = 512
FACTS = FactOverrides(mask_token_id=V - 1, eos_token_id=V - 2, block_size=4)


def pattern(names) -> set[str]:
    return {re.sub(r"\.\d+\.", ".N.", n) for n in names}


def published_names(shared: Path, name: str) -> set[str]:
    index = shared / "hf" / name / "model.safetensors.index.json"
    if not index.exists():  # SDAR-1.7B ships one file and no index: the dense SDAR pattern
        index = shared / "hf" / "SDAR-4B-Chat" / "model.safetensors.index.json"
    return set(json.loads(index.read_text())["weight_map"])


def test_every_published_folder_has_tiny_sizes(shared: Path) -> None:
    assert sorted(p.name for p in (shared / "hf").iterdir()) == HF_FOLDERS


@pytest.mark.parametrize("name", HF_FOLDERS)
def test_tiny_checkpoint_keeps_names_and_structure(shared: Path, tmp_path: Path, name: str) -> None:
    published = json.loads((shared / "hf" / name / "config.json").read_text())
    out = write_tiny_checkpoint(shared / "hf" / name, tmp_path / "tiny", vocab_size=V, overrides=FACTS)
    tiny = json.loads((out / "config.json").read_text())
    # auto_map goes: the folder holds no modeling code for it to name (models/checkpoint.py).
    assert set(tiny) - {"torch_dtype", "dtype"} == set(published) - {"torch_dtype", "dtype", "auto_map"}
    model = load_pretrained(out, overrides=FACTS)
    assert pattern(model.state_dict()) == pattern(published_names(shared, name))
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    cfg = model.config
    if published.get("num_key_value_heads", 0) < published.get("num_attention_heads", 0):  # GQA survives
        assert cfg.num_key_value_heads < cfg.num_attention_heads
    if published.get("head_dim") not in (None, published.get("hidden_size", 0) // published.get("num_attention_heads", 1)):
        assert cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads  # as in SDAR-4B / 30B
    for key in ("first_k_dense_replace", "num_shared_experts", "partial_rotary_factor", "norm_topk_prob", "routed_scaling_factor"):
        if key in published:
            assert tiny[key] == published[key], key
    if "n_group" in published:  # several groups of >= 2 experts, fewer kept than exist
        assert tiny["num_experts"] // tiny["n_group"] >= 2 and tiny["topk_group"] < tiny["n_group"] > 1
    with torch.no_grad():
        assert model.logits(model(torch.randint(0, V, (1, 8)))).shape == (1, 8, V)


def test_script_writes_a_loadable_llada2_checkpoint(shared: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "scripts/make_tiny_checkpoint.py", str(shared / "hf" / "LLaDA2.1-mini"), str(tmp_path / "out"),
        "--model-only", "--vocab-size", str(V), "--mask-token-id", str(V - 1), "--eos-token-id", str(V - 2), "--block-size", "4", "--max-shard-mb", "1",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    model = load_pretrained(tmp_path / "out", overrides=FACTS)
    assert model.facts.mask_token_id == V - 1 and len(model.blocks()) == 3


def test_script_without_the_missing_facts_names_them(shared: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "scripts/make_tiny_checkpoint.py", str(shared / "hf" / "LLaDA2.0-mini"), str(tmp_path / "out"), "--model-only", "--vocab-size", "512"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "mask_token_id" in done.stderr and "--mask-token-id" in done.stderr
