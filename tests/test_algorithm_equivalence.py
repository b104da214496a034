"""Every registered algorithm (and each ``scale_rewards`` option, the PPO mini-batch schedule and
JustGRPO's per-micro-step normaliser) takes the same step on 2 real torchrun ranks (gloo, plain
data parallel) as one process on the same global batch: the advantages, the losses, the gradient
norm and the updated weights agree to fp32 rounding. The algorithms whose estimators or losses
run extra forwards (sampled draws, traces, per-step canvases) also take it under FSDP2, whose
per-forward all-gathers every rank must join equally often.

The ranks hold different prompts, so they see different rewards: a rule that normalised over a
rank's own samples (a batch z-score, ``scale_rewards=batch``) would give other advantages. The
algorithms are read from the registry, so one added later is covered once it has its
``recipes/algorithm/<name>.yaml``; all variants run in one torchrun launch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffrl.algorithms.advantages import SCALE_REWARDS
from diffrl.algorithms.registry import registered_algorithms
from diffrl.train import RECIPES
from tests.algorithm_step_worker import REPO, step
from tests.test_distributed_equivalence import CLOSE_METRICS, EXACT_METRICS, FSDP2
from tests.torchrun import run_torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# What an algorithm needs to have a signal on the tiny sort task (nothing for most).
EXTRA = {
    # A confidence threshold, so tokens per forward vary within a group.
    "lightning_rl": "rollout.threshold=0.5",
    # Reference traces of a few tokens need chunks of 1-2 tokens and a short free tail.
    # SPG defines no KL term (its reference raises for beta != 0).
    "spg": "algorithm.beta=0;algorithm.spg.block_length=4",
    "espo": "algorithm.espo.num_mc=1",
    "bgpo": "algorithm.bgpo.num_draws=3",
    # Every group inside the accuracy band, so the step trains.
    "trace_rl": "algorithm.trace_rl.accuracy_low=0;algorithm.trace_rl.accuracy_high=1",
    "igpo": "algorithm.igpo.min_chunk_size=1;algorithm.igpo.max_chunk_size=2;algorithm.igpo.free_tail=2",
}


# Taken again under FSDP2 (variant ``fsdp2_<name>``), against the same one-process step.
SHARDED = ("spg", "espo", "bgpo", "trace_rl", "cj_grpo", "mdpo")


def variants() -> dict[str, str]:
    out = {name: f"algorithm={name};{EXTRA.get(name, '')}" for name in registered_algorithms()}
    out.update({f"scale_{s}": f"algorithm=diffu_grpo;algorithm.scale_rewards={s}" for s in SCALE_REWARDS})
    # Two epochs over two mini-batches of one prompt per rank each: four optimizer steps.
    out["ppo_mini_batches"] = f"algorithm=lightning_rl;{EXTRA['lightning_rl']};trainer.ppo_mini_batch_size=2"
    # JustGRPO's normaliser over accumulation micro-steps of 2 prompts (one per rank).
    out["just_grpo_micro_steps"] = "algorithm=just_grpo;algorithm.just_grpo.micro_step_prompts=2"
    out.update({f"fsdp2_{name}": f"{FSDP2};{out[name]}" for name in SHARDED})
    return out


def one_process_name(variant: str) -> str:
    """The variant whose one-process step a variant must equal (a strategy changes nothing)."""
    return variant.removeprefix("fsdp2_")


def test_every_algorithm_has_a_recipe_to_run_it() -> None:
    missing = [name for name in registered_algorithms() if not (RECIPES / "algorithm" / f"{name}.yaml").exists()]
    assert not missing, f"registered algorithms without recipes/algorithm/<name>.yaml: {missing}"


def test_every_algorithm_takes_the_one_process_step_on_two_ranks(tmp_path: Path) -> None:
    from diffrl.trainer.distributed import init_distributed

    cases = variants()
    world = init_distributed("cpu")
    first = next(iter(cases))
    step(tmp_path / "single", None, f"{first}:{cases[first]}", world)
    model_dir = str(tmp_path / "single" / first / "init")
    for name, overrides in list(cases.items())[1:]:
        if one_process_name(name) == name:
            step(tmp_path / "single", model_dir, f"{name}:{overrides}", world)
    run_torchrun(str(REPO / "tests" / "algorithm_step_worker.py"), str(tmp_path / "dist"), model_dir,
                 *[f"{name}:{overrides}" for name, overrides in cases.items()], tmp=tmp_path)

    report = {}
    for name in cases:
        one, two = tmp_path / "single" / one_process_name(name), tmp_path / "dist" / name
        m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
        rewards, adv1 = torch.load(one / "advantages.pt")
        rewards2, adv2 = torch.load(two / "advantages.pt")
        # The ranks' halves of the batch score differently, so per-rank statistics would differ.
        half = rewards.numel() // 2
        assert torch.equal(rewards, rewards2) and rewards[:half].mean() != rewards[half:].mean(), name
        assert torch.allclose(adv1, adv2, rtol=1e-5, atol=1e-6), (name, (adv1 - adv2).abs().max())
        for key in EXACT_METRICS:
            assert m2[key] == pytest.approx(m1[key], rel=1e-6), (name, key, m1[key], m2[key])
        for key in (k for k in CLOSE_METRICS if k in m1):
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), (name, key, m1[key], m2[key])
        assert m1["actor/grad_norm"] > 1e-4, f"{name}: the step must have a gradient to compare"
        w1, w2 = torch.load(one / "weights.pt"), torch.load(two / "weights.pt")
        diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
        assert diff < 1e-5, (name, diff)
        report[name] = {"advantages": (adv1 - adv2).abs().max().item(), "weights": diff, "grad_norm": abs(m1["actor/grad_norm"] - m2["actor/grad_norm"])}
    print("largest differences, 2 ranks vs 1 process:", json.dumps(report, indent=1))
