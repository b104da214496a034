"""FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 (and LoRA under FSDP2, with eager and compiled rollouts) on 2
real torchrun ranks take the same RL step as one process on the same global batch, roll out with
the updated full weights, and write checkpoints that export to that model.

The comparison is exact in math: the two ranks' prompts are the halves of the one-process batch,
every random draw is keyed by sample id (same completions, same estimator masks), the loss is
normalised by global counts and gradients are summed over ranks. So the gradient norm (which
Adam's scale invariance would otherwise hide), the losses and the updated weights must agree to
float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.distributed_worker import REPO, recipe
from tests.torchrun import run_torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

FSDP2 = "trainer=fsdp2;trainer.fsdp.param_dtype=null"
VARIANTS = {
    "fsdp2": FSDP2,
    "zero2": "trainer=deepspeed_zero2",
    # Persist nothing, so even the tiny model's smallest tensors are partitioned.
    "zero3": "trainer=deepspeed_zero3;trainer.deepspeed.config={zero_optimization: {stage3_param_persistence_threshold: 0}}",
    "fsdp2_lora": FSDP2 + ";trainer.lora.enabled=true;trainer.lora.r=4",
    # Compiled rollouts (aot_eager here) under FSDP2's hooks and peft's layers: eager's tokens.
    "fsdp2_lora_compile": FSDP2 + ";trainer.lora.enabled=true;trainer.lora.r=4;rollout.compile=true",
}
EXACT_METRICS = ("critic/score/mean", "critic/score/max", "response_length/mean", "rollout/nfe", "critic/advantages/max")
CLOSE_METRICS = ("actor/grad_norm", "actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/ppo_kl", "actor/pg_clipfrac")


def one_process_step(out: Path, *overrides: str) -> tuple[dict, dict[str, torch.Tensor], Path]:
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.build import setup
    from diffrl.trainer.loop import rl_step

    run = setup(recipe(f"trainer.output_dir={out}", *overrides), init_distributed("cpu"))
    metrics = rl_step(run, 0)
    return metrics, run.policy.state_dict(), run.model_dir


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_sharded_steps_equal_the_one_process_step(tmp_path: Path) -> None:
    from diffrl.models import load_pretrained
    from diffrl.rollout import generate_chunked
    from diffrl.rollout.config import RolloutConfig
    from diffrl.trainer.export import checkpoint_model

    reference = {"full": one_process_step(tmp_path / "single"), "lora": one_process_step(tmp_path / "single_lora", "trainer.lora.enabled=true", "trainer.lora.r=4")}
    model_dir = reference["full"][2]
    initial = load_pretrained(model_dir).state_dict()
    run_torchrun(str(REPO / "tests" / "distributed_worker.py"), str(tmp_path / "dist"), str(model_dir),
                 *[f"{name}:{overrides}" for name, overrides in VARIANTS.items()], tmp=tmp_path)

    report = {}
    for name in VARIANTS:
        folder = tmp_path / "dist" / name
        single_metrics, single_weights, _ = reference["lora" if "lora" in name else "full"]
        metrics = json.loads((folder / "metrics.json").read_text())
        for key in EXACT_METRICS:
            assert metrics[key] == pytest.approx(single_metrics[key], rel=1e-6), (name, key)
        for key in CLOSE_METRICS:
            assert metrics[key] == pytest.approx(single_metrics[key], rel=1e-4, abs=1e-7), (name, key)
        assert single_metrics["actor/grad_norm"] > 1e-3, "the step must have a gradient to compare"

        full = torch.load(folder / "full.pt")
        weights_diff = max_diff(full, single_weights)
        assert weights_diff < 1e-5, (name, weights_diff)
        # The step moved the weights far more than the tolerance (LoRA: the adapters only).
        moved = {k: v for k, v in full.items() if k in initial}
        assert max_diff(moved, {k: initial[k] for k in moved}) > 1e-4 or "lora" in name
        # Both ranks compute with the same full weights, and they are the gathered ones.
        local = [torch.load(folder / f"local_rank{r}.pt") for r in range(2)]
        assert max_diff(local[0], local[1]) == 0.0, name
        assert max_diff(local[0], full) == 0.0, name

        # What the strategy rolls out with is the updated full model: one plain process with
        # those weights generates the same tokens with the same log-probs.
        plain = load_pretrained(model_dir)
        peft = _with_lora(plain, full) if "lora" in name else plain.load_state_dict(full)
        probe = RolloutConfig(max_completion_length=8, block_length=4, steps=8, temperature=1.0, stop_at_eos=True, seed=5)
        gen_diff = 0.0
        for rank in range(2):
            gen = torch.load(folder / f"gen_rank{rank}.pt")
            again = generate_chunked(plain.eval(), gen["prompt_ids"], gen["prompt_mask"], probe, chunk=6, sample_ids=gen["sample_ids"])
            assert torch.equal(again.completion_ids, gen["completion_ids"]), (name, rank)
            gen_diff = max(gen_diff, (again.logprob - gen["logprob"]).abs().max().item())
            if "compile" in name:
                before, after = gen["graphs"]
                assert before > 0, f"{name}: the training rollout ran no compiled forward"
                assert after == before, f"{name}: a rollout of other sizes compiled {after - before} more graphs"
        assert gen_diff < 1e-5, (name, gen_diff)

        # The training checkpoint (adapters only for LoRA) exports to the same model.
        exported = checkpoint_model(folder / "checkpoints" / "step_000001").state_dict()
        merged = peft.merge_and_unload().state_dict() if "lora" in name else full
        assert max_diff(exported, merged) < 1e-6, name
        report[name] = {"weights": weights_diff, "grad_norm": abs(metrics["actor/grad_norm"] - single_metrics["actor/grad_norm"]), "rollout_logprob": gen_diff}
    print("largest differences to one process:", json.dumps(report, indent=1))


def _with_lora(model, full: dict[str, torch.Tensor]):
    from diffrl.trainer.config import LoraConfig
    from diffrl.trainer.lora import apply_lora, lora_targets

    peft = apply_lora(model, LoraConfig(enabled=True, r=4), lora_targets(model))
    model.load_state_dict(full)
    return peft


def test_a_gathered_rollout_holds_every_ranks_records_and_edits(tmp_path: Path) -> None:
    """Ranks with different edit counts gather the rollout ``Rollout.concat`` builds from all of
    theirs: every per-sample record, and each edit under its global row. The global metrics,
    which leave the per-step records on their rank, are those of the whole rollout."""
    from diffrl.rollout import Rollout
    from tests.rollout_gather_worker import local_rollout

    run_torchrun(str(REPO / "tests" / "rollout_gather_worker.py"), str(tmp_path), tmp=tmp_path, timeout=300)
    gathered = torch.load(tmp_path / "gathered.pt")
    whole = Rollout.concat([local_rollout(0), local_rollout(1)])
    for name in Rollout.per_sample_fields("identity", "record"):
        assert torch.equal(gathered[name], getattr(whole, name)), name
    assert len(whole.edits) == 4
    for name, values in vars(whole.edits).items():
        assert torch.equal(gathered["edits"][name], values), name
    assert whole.step_tokens.shape[1] == 4
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(whole.metrics(), rel=1e-6)
