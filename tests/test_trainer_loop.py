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


def test_setup_skips_bad_rows_and_filters_overlong_prompts_when_asked(tmp_path: Path) -> None:
    """``task.on_bad_rows=skip`` and ``task.filter_overlong_prompts`` reach the run's loader: a
    row without a ground truth is dropped (and stops the run by default), and prompts longer than
    ``task.max_prompt_length`` tokens are left out of the training rows."""
    import pandas as pd
    import pytest

    from diffrl.data import DataError, load_rows
    from diffrl.trainer.build import setup
    from diffrl.trainer.distributed import init_distributed

    base = recipe(f"trainer.output_dir={tmp_path / 'gen'}", "task.synthetic.num_train=8", "task.synthetic.num_val=4")
    run = setup(base, init_distributed("cpu"))
    rows = load_rows(str(run.run_dir / "data" / "train.parquet"))
    rows[2] = {**rows[2], "reward_model": {"ground_truth": None}}
    rows[5] = {**rows[5], "prompt": [{"role": "user", "content": rows[5]["prompt"][0]["content"] + " 1 2 3 4"}]}
    path = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    val = str(run.run_dir / "data" / "val.parquet")
    width = max(len(run.encoder.token_ids(r)) for i, r in enumerate(rows) if i != 5)
    model_dir = run.model_dir
    run.close()

    def configured(*extra: str):
        return recipe(
            f"trainer.output_dir={tmp_path / 'run'}", f"task.train_files=[{path}]", f"task.val_files=[{val}]", "task.synthetic=null", f"model.path={model_dir}",
            "trainer.batch_size=1", f"task.max_prompt_length={width}", *extra,
        )

    with pytest.raises(DataError, match="row 2: field 'reward_model.ground_truth' is missing"):
        setup(configured(), init_distributed("cpu"))
    run = setup(configured("task.on_bad_rows=skip", "task.filter_overlong_prompts=true"), init_distributed("cpu"))
    kept = [run.loader.next_batch()[0] for _ in range(len(rows))]
    contents = {r["prompt"][0]["content"] for r in kept}
    assert contents == {r["prompt"][0]["content"] for i, r in enumerate(rows) if i not in (2, 5)}
    run.close()
