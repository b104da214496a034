"""One RL step per strategy, run under real torchrun processes (gloo) by the distributed tests.

    torchrun --nproc_per_node 2 tests/distributed_worker.py OUT MODEL_DIR VARIANT [VARIANT ...]

A VARIANT is ``name:override;override;...`` (Hydra overrides, e.g. ``zero3:trainer=deepspeed_zero3``).
For each variant every rank builds the run from the shared recipe (:func:`recipe`), takes one
``rl_step`` and writes into ``OUT/<name>/``: ``metrics.json`` and ``full.pt`` (rank 0: the gathered
full weights), ``local_rank{r}.pt`` (the full weights rank r rolls out with) and
``gen_rank{r}.pt`` (a rollout generated through the strategy with the updated weights, compiled
when the variant sets ``rollout.compile``, with the compiled graphs counted before and after), and a
training checkpoint in ``checkpoints/step_000001`` (DCP or DeepSpeed's format). The test
compares all of it with one process taking the same step on the same global batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import diffrl.rollout.compiled as compiled  # noqa: E402
from diffrl.rewards.registry import register_reward  # noqa: E402

# rollout.compile's tracing (dynamo, AOTAutograd) without inductor's C++ build, minutes on two
# cores; tests/test_rollout_compile.py runs inductor itself.
compiled.BACKEND = "aot_eager"

# The recipe every equivalence run shares: the demo's tiny LLaDA and sort task, 4 prompts x 4
# samples per step, 4 samples per micro-batch (so 2 ranks split exactly into the 1-process
# micro-batches), two inner updates (old log-probs) and a KL reference, activation checkpointing.
STEP_OVERRIDES = [
    "recipe=demo",
    "trainer.batch_size=4",
    "algorithm.num_generations=4",
    "trainer.micro_batch_size=4",
    "algorithm.num_iterations=2",
    "algorithm.beta=0.04",
    "optim.lr=1e-3",
    "optim.max_grad_norm=1.0",
    "trainer.warm_start.steps=0",
    "trainer.wandb.enabled=false",
    "trainer.progress_bar=false",
    "trainer.plot=false",
    "trainer.resume=never",
    "model.gradient_checkpointing=true",
    "task.rewards=[{name: digit_overlap}]",
]


@register_reward("digit_overlap")
def digit_overlap(completions: list[str], rows: list[dict], **_: Any) -> list[float]:
    """Fraction of the answer's digits the completion contains: graded, so a random policy's
    samples get different rewards and the step has a gradient."""
    scores = []
    for text, row in zip(completions, rows):
        truth = str(row["reward_model"]["ground_truth"]).split()
        words = text.split()
        scores.append(sum(min(words.count(d), truth.count(d)) for d in set(truth)) / len(truth))
    return scores


def recipe(*overrides: str) -> Any:
    """The composed, validated config of the demo recipe with ``STEP_OVERRIDES`` and ``overrides``."""
    from hydra import compose, initialize_config_dir

    from diffrl.train import RECIPES
    from diffrl.trainer.config import to_config

    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return to_config(compose("train", overrides=[*STEP_OVERRIDES, *overrides]))


def probe_prompts(run: Any, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts for the generation check, different on each rank (so ranks stop at different times)."""
    rows = run.task.val_rows[3 * rank : 3 * rank + 3]
    prompt_ids, prompt_mask, _ = run.encoder(rows)
    return prompt_ids.repeat_interleave(2, 0), prompt_mask.repeat_interleave(2, 0), torch.arange(6) + 1000 * (rank + 1)


def named_weights(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` as it is inside a call (gathered, for sharded strategies)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def main(out: Path, model_dir: str, variants: list[str]) -> None:
    from torch._dynamo.utils import counters

    from diffrl.rollout.config import RolloutConfig
    from diffrl.trainer.distributed import init_distributed, shutdown
    from diffrl.trainer.export import checkpoint_meta
    from diffrl.trainer.build import setup
    from diffrl.trainer.loop import rl_step

    world = init_distributed("cpu")
    try:
        for variant in variants:
            name, _, extra = variant.partition(":")
            folder = out / name
            cfg = recipe(f"model.path={model_dir}", f"trainer.output_dir={folder}", *[o for o in extra.split(";") if o])
            counters.clear()  # each variant's compiled graphs are its own
            run = setup(cfg, world)
            try:
                metrics = rl_step(run, 0)
                state = {"scheduler": run.scheduler.state_dict(), "loader": run.loader.state_dict()}
                run.policy.save_checkpoint(folder / "checkpoints", 1, state, checkpoint_meta(run))
                full = run.policy.state_dict()
                # The full weights this rank rolls out with.
                torch.save(run.policy.strategy.generate(named_weights), folder / f"local_rank{world.rank}.pt")
                prompt_ids, prompt_mask, sample_ids = probe_prompts(run, world.rank)
                probe = RolloutConfig(max_completion_length=8, block_length=4, steps=8, temperature=1.0, stop_at_eos=True, seed=5, compile=cfg.rollout.compile)
                graphs = counters["stats"]["unique_graphs"]
                gen = run.policy.generate(prompt_ids, prompt_mask, probe, sample_ids=sample_ids, chunk=6)
                torch.save({"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "sample_ids": sample_ids,
                            "completion_ids": gen.completion_ids, "logprob": gen.logprob, "nfe": gen.nfe,
                            "graphs": (graphs, counters["stats"]["unique_graphs"])},
                           folder / f"gen_rank{world.rank}.pt")
                if world.is_main:
                    torch.save(full, folder / "full.pt")
                    (folder / "metrics.json").write_text(json.dumps(metrics))
            finally:
                run.close()
    finally:
        shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
