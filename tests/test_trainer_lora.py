"""LoRA through real peft on our modules: which layers it adapts, that RL steps train only the
adapters, that the KL reference is the frozen base, and that the one-command merge reproduces
the adapter model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omegaconf import OmegaConf

from tests.conftest import TINY_SOURCES
from tests.distributed_worker import REPO, recipe
from tests.test_models_families import RECIPES as MODEL_FOLDERS
from tests.test_recipes import GROUPS, compose_recipe
from tests.torchrun import env


def test_targets_are_the_block_linears_and_never_the_lm_head(tiny_llada) -> None:
    from diffrl.trainer.lora import lora_targets

    every = lora_targets(tiny_llada)
    assert "model.transformer.ff_out" not in every  # LLaDA's LM head shares the MLP's name
    assert len(every) == 7 * len(tiny_llada.blocks())
    assert lora_targets(tiny_llada, ["ff_out"]) == ["model.transformer.blocks.0.ff_out", "model.transformer.blocks.1.ff_out"]
    with pytest.raises(ValueError, match=r"model.lora_target_modules entries \['o_proj'\].*attn_out"):
        lora_targets(tiny_llada, ["q_proj", "o_proj"])


@pytest.mark.parametrize("name", GROUPS["model"])
def test_every_model_recipe_names_lora_targets_that_resolve_to_the_family_default(tiny_checkpoint, shared: Path, name: str) -> None:
    """Each model recipe states ``lora_target_modules`` (null or the family default written out),
    and on a tiny model of its family it picks exactly the family's default modules."""
    from diffrl.models.registry import family_class
    from diffrl.trainer.config import to_config
    from diffrl.trainer.lora import lora_targets

    assert "lora_target_modules" in OmegaConf.load(REPO / "recipes" / "model" / f"{name}.yaml")
    cfg = to_config(compose_recipe(f"model={name}")).model
    config = cfg.init_config or json.loads((shared / "hf" / MODEL_FOLDERS[name][1] / "config.json").read_text())
    family = next(f for f, (source, _) in TINY_SOURCES.items() if family_class(json.loads((shared / "hf" / source / "config.json").read_text())) is family_class(config))
    model = tiny_checkpoint(family).load()
    targets = lora_targets(model, cfg.lora_target_modules)
    assert targets and targets == lora_targets(model)


def test_lora_rl_trains_only_adapters_against_the_frozen_base_and_merges(tmp_path: Path) -> None:
    from diffrl.algorithms import PolicyBatch
    from diffrl.models import load_pretrained
    from diffrl.rollout import generate
    from diffrl.trainer.distributed import init_distributed
    from diffrl.algorithms.objective import score_in_micro_batches
    from diffrl.trainer.export import save_final
    from diffrl.trainer.build import setup
    from diffrl.trainer.loop import rl_step

    run = setup(recipe(f"trainer.output_dir={tmp_path / 'run'}", "trainer=lora", "trainer.lora.r=4", *OFF), init_distributed("cpu"))
    model = run.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(2):
        rl_step(run, step)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    adapters = {n for n in before if ".lora_" in n}
    assert changed == adapters, f"changed but not adapters: {sorted(changed - adapters)[:4]}; unchanged adapters: {sorted(adapters - changed)[:4]}"

    # The reference (adapter disabled) scores exactly as the untouched base model does.
    base = load_pretrained(run.model_dir).eval()
    batch = PolicyBatch.from_rollout(generate(base, *_prompts(run), run.cfg.rollout, sample_ids=torch.arange(8)))
    estimator = run.algorithm.estimator
    run.policy.micro_batch_size = 4
    ref = run.reference.score(estimator, batch, 3)
    with torch.no_grad():
        frozen = score_in_micro_batches(base, estimator, batch, 3, 4)
    policy = run.policy.score(estimator, batch, 3)
    assert torch.allclose(ref.logp, frozen.logp, atol=1e-6)
    assert (policy.logp - frozen.logp).abs().max() > 1e-4

    # The adapter is a standard peft folder; one command merges it into the published layout.
    save_final(run)
    adapter = run.run_dir / "final_adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_hf.py"), str(adapter), "--out", str(out)], capture_output=True, text=True, env=env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = load_pretrained(out).eval()
    ids = torch.randint(0, run.model.facts.vocab_size - 3, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.logits(model.eval()(ids))
        got = merged.logits(merged(ids))
    assert (got - want).abs().max() < 1e-5
    assert (got - base.logits(base(ids))).abs().max() > 1e-4


OFF = ("trainer.wandb.enabled=false", "trainer.progress_bar=false", "trainer.plot=false", "algorithm.beta=0.04")


def _prompts(run) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, _ = run.encoder(run.task.val_rows[:4])
    return ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
