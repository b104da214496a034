"""scripts/make_tiny_checkpoint.py: a checkpoint the family's model recipe trains with, or a stop
with the reason before anything is written."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from diffrl.models import read_facts
from diffrl.models.tokenizer import load_tokenizer
from diffrl.train import RECIPES
from diffrl.trainer.config import to_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_tiny_checkpoint.py"


def make(*args: str) -> None:
    """The script's command line, in this process."""
    main = runpy.run_path(str(SCRIPT))["main"]
    main([str(a) for a in args])


def model_recipe(name: str, path: Path):
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return to_config(compose("train", overrides=[f"model={name}", f"model.path={path}"])).model


# family -> (published folder, its model recipe, the flags its config needs)
WITH_TOKENIZER = {
    "dream": ("Dream-v0-Instruct-7B", "dream_v0_instruct_7b", []),
    "sdar": ("SDAR-1dot7B-Chat", "sdar_1p7b_chat", []),
    "sdar_moe": ("SDAR-30B-A3B-Chat", "sdar_30b_a3b_chat", ["--block-size", "4"]),
}


@pytest.mark.parametrize("family", sorted(WITH_TOKENIZER))
def test_the_checkpoint_has_the_published_tokenizer_and_the_recipe_facts(family: str, shared: Path, tmp_path: Path) -> None:
    source, recipe, flags = WITH_TOKENIZER[family]
    out = tmp_path / "tiny"
    make(shared / "hf" / source, out, *flags)
    model = model_recipe(recipe, out)
    facts = read_facts(out, overrides=model.overrides())
    tokenizer = load_tokenizer(out)
    assert len(tokenizer) <= facts.vocab_size
    assert tokenizer.convert_ids_to_tokens(facts.mask_token_id) == tokenizer.mask_token
    assert all(tokenizer.convert_ids_to_tokens(i) is not None for i in facts.stop_token_ids)


# family -> (published folder without tokenizer files, flags)
WITHOUT_TOKENIZER = {
    "llada": ("LLaDA-8B-Instruct", []),
    "llada2_moe": ("LLaDA2.1-mini", ["--mask-token-id", "156895", "--eos-token-id", "156892", "--block-size", "32"]),
}


@pytest.mark.parametrize("family", sorted(WITHOUT_TOKENIZER))
def test_a_source_without_tokenizer_files_stops_with_the_reason(family: str, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, flags = WITHOUT_TOKENIZER[family]
    with pytest.raises(SystemExit) as stop:
        make(shared / "hf" / source, tmp_path / "tiny", *flags)
    assert stop.value.code == 2 and not (tmp_path / "tiny").exists()
    assert "has no tokenizer.json (nor vocab.json + merges.txt)" in capsys.readouterr().err


def test_a_smaller_vocabulary_needs_model_only(shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """(The --model-only checkpoints themselves: tests/test_models_tiny.py.)"""
    with pytest.raises(SystemExit):
        make(shared / "hf" / "SDAR-1dot7B-Chat", tmp_path / "tiny", "--vocab-size", "512")
    assert "add --model-only" in capsys.readouterr().err and not (tmp_path / "tiny").exists()


@pytest.mark.slow
def test_the_sdar_moe_example_trains_with_the_readme_command(shared: Path, tmp_path: Path) -> None:
    """The script's own SDAR-30B example, then the README's group-swapping command on it (one
    short step on the shared GSM8K file)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "tiny-sdar-moe"
    make(shared / "hf" / "SDAR-30B-A3B-Chat", out, "--block-size", "4")
    cmd = [sys.executable, "-m", "diffrl.train", "model=sdar_30b_a3b_chat", f"model.path={out}", "task=gsm8k", "rollout=sdar",
           f"data_dir={shared / 'data'}", "model.dtype=float32", "algorithm.num_generations=2", "trainer.batch_size=1",
           "trainer.micro_batch_size=2", "trainer.total_steps=1", "rollout.max_completion_length=8", "trainer.wandb.enabled=false",
           f"trainer.output_dir={tmp_path / 'run'}", "trainer.progress_bar=false", "trainer.plot=false"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rl_steps"] == 1
