"""One training step through the loop: what the rollout recorded reaches the logged metrics."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.distributed_worker import recipe


def test_a_chunked_cached_editing_step_logs_the_rollouts_cache_forwards_and_edits(tmp_path: Path) -> None:
    """``kv_cache=dual`` with ``rollout_batch_size`` 4 < the 16 samples of the step, and LLaDA2.1
    editing: the step logs the cache forwards and edits of the same rollout generated unchunked
    by the initial weights (before the fix, chunked rollouts logged nfe_cache = edits = 0)."""
    from diffrl.models import load_pretrained
    from diffrl.rollout import generate_chunked
    from diffrl.trainer.build import setup
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.loop import rl_step
    from diffrl.trainer.sampling import rollout_config

    cfg = recipe(
        f"trainer.output_dir={tmp_path}", "trainer.rollout_batch_size=4", "algorithm.num_iterations=1", "algorithm.beta=0.0",
        "model.gradient_checkpointing=false", "rollout.max_completion_length=8", "rollout.block_length=4",
        "rollout.steps=8", "rollout.kv_cache=dual", "rollout.threshold=0.3", "rollout.editing_threshold=0.0", "rollout.max_post_steps=1",
        "task.synthetic.num_train=16", "task.synthetic.num_val=4",
    )
    run = setup(cfg, init_distributed("cpu"))
    # The step's prompts, and their samples generated in one call by a copy of the initial model.
    position = run.loader.state_dict()
    rows = run.loader.next_batch()
    run.loader.load_state_dict(position)
    prompt_ids, prompt_mask, _ = run.encoder(rows)
    group = cfg.algorithm.num_generations
    initial = load_pretrained(run.model_dir, dtype=cfg.model.dtype, overrides=cfg.model.overrides()).eval()
    expected = generate_chunked(
        initial, prompt_ids.repeat_interleave(group, 0), prompt_mask.repeat_interleave(group, 0), rollout_config(run),
        sample_ids=torch.arange(len(rows) * group),
    )
    assert len(expected) > cfg.trainer.rollout_batch_size

    metrics = rl_step(run, 0)
    want = expected.metrics()
    assert want["rollout/nfe_cache"] > 0 and metrics["rollout/nfe_cache"] == want["rollout/nfe_cache"]
    assert metrics["rollout/nfe_denoise"] == want["rollout/nfe_denoise"] < metrics["rollout/nfe"] == want["rollout/nfe"]
    assert want["rollout/edits"] > 0 and metrics["rollout/edits"] == want["rollout/edits"]
    assert metrics["rollout/edits"] == len(expected.edits) / len(expected)
