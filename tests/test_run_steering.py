"""Runs a researcher can steer and see: explicit resume, the start-up banner, progress with an
honest ETA, and the per-step metrics besides the algorithm's (verl's names, MoE router load), each
checked against a recomputation. Signals and W&B history after a kill are in
tests/test_run_signals.py (real subprocesses)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import psutil
import pytest
import torch

from diffrl.errors import DiffrlConfigError
from diffrl.trainer.progress import Progress
from diffrl.trainer.resume import math_differences
from tests.distributed_worker import recipe

FAST = ["trainer.plot=false", "trainer.batch_size=2", "algorithm.num_generations=4", "task.synthetic.num_train=64", "task.synthetic.num_val=8", "trainer.resume=auto"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_resume_checks_the_config_announces_itself_and_a_finished_run_does_no_work(tmp_path: Path) -> None:
    from diffrl.trainer.loop import train

    out = tmp_path / "run"
    first = train(recipe(*FAST, f"trainer.output_dir={out}", "trainer.total_steps=1", "trainer.resume=auto"))
    assert "resumed_from" not in first and (out / "checkpoints" / "step_000001").is_dir()

    # Finished: the same command returns the summary without a step, a log line or a checkpoint.
    log_before, metrics_before = (out / "train.log").read_text(), (out / "metrics.jsonl").read_text()
    assert train(recipe(*FAST, f"trainer.output_dir={out}", "trainer.total_steps=1", "trainer.resume=auto")) == first
    assert (out / "train.log").read_text() == log_before and (out / "metrics.jsonl").read_text() == metrics_before

    # A change to the math is refused, naming the keys and both ways on; nothing is written.
    with pytest.raises(DiffrlConfigError) as err:
        train(recipe(*FAST, f"trainer.output_dir={out}", "trainer.total_steps=2", "optim.lr=0.5", "algorithm.beta=0.1"))
    message = str(err.value)
    assert "optim.lr" in message and "algorithm.beta" in message and "trainer.resume=never" in message and "trainer.resume=force" in message
    assert "output_dir" in message and (out / "metrics.jsonl").read_text() == metrics_before

    # More steps, other logging and saving settings: resumed and announced.
    resumed = train(recipe(*FAST, f"trainer.output_dir={out}", "trainer.total_steps=2", "trainer.save_every=1", "trainer.log_samples_every=0"))
    assert resumed["resumed_from"].endswith("step_000001")
    log = (out / "train.log").read_text()
    assert "start:     resuming from step 1 of 2" in log
    assert [m["step"] for m in lines(out / "metrics.jsonl")] == [1, 2]

    # Forced: resumes despite the change and says what changed.
    forced = train(recipe(*FAST, f"trainer.output_dir={out}", "trainer.total_steps=3", "optim.lr=0.5", "trainer.resume=force"))
    assert forced["resumed_from"].endswith("step_000002")
    assert "resuming from step 2 of 3" in (out / "train.log").read_text() and "changed: optim.lr" in (out / "train.log").read_text()

    # Starting over beside these checkpoints would mix two runs' steps: refused before anything is written.
    metrics_before = (out / "metrics.jsonl").read_text()
    with pytest.raises(DiffrlConfigError) as err:
        train(recipe(*FAST, f"trainer.output_dir={out}", "trainer.total_steps=3", "trainer.resume=never"))
    assert "step_000003" in str(err.value) and "trainer.output_dir" in str(err.value)
    assert (out / "metrics.jsonl").read_text() == metrics_before


def test_a_fresh_start_in_a_used_folder_is_a_new_wandb_run(tmp_path: Path) -> None:
    from diffrl.trainer.loop import train
    from tests.wandb_offline import read_offline_run

    out = tmp_path / "run"
    args = [*FAST, f"trainer.output_dir={out}", "trainer.total_steps=1", "trainer.wandb.enabled=true", "trainer.log_samples_every=0"]
    train(recipe(*args))
    first_id = (out / "wandb_run_id").read_text()
    # The checkpoints deleted to start over (what the never-refusal says to do): step 1 again.
    shutil.rmtree(out / "checkpoints")
    train(recipe(*args))
    second_id = (out / "wandb_run_id").read_text()
    assert second_id != first_id, "a fresh start reused the W&B run, whose step 1 it already holds"
    record = read_offline_run(next((out / "wandb").glob(f"offline-run-*-{second_id}/run-{second_id}.wandb")))
    assert [int(row["_step"]) for row in record["history"] if "actor/pg_loss" in row] == [1]


def test_only_free_keys_may_differ() -> None:
    saved = {"trainer": {"output_dir": "a", "total_steps": 5, "wandb": {"project": "x"}, "micro_batch_size": 4}, "optim": {"lr": 1.0}}
    same_math = {"trainer": {"output_dir": "b", "total_steps": 9, "wandb": {"project": "y"}, "micro_batch_size": 4}, "optim": {"lr": 1.0}}
    assert math_differences(saved, same_math) == []
    other = {"trainer": {"output_dir": "a", "total_steps": 5, "wandb": {"project": "x"}, "micro_batch_size": 8}, "optim": {"lr": 2.0}}
    assert math_differences(saved, other) == ["optim.lr", "trainer.micro_batch_size"]


def test_the_banner_and_the_step_metrics_match_a_recomputation(tmp_path: Path) -> None:
    from diffrl.data import PromptLoader
    from diffrl.trainer.build import setup
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.loop import train

    out = tmp_path / "run"
    cfg = recipe(*FAST, f"trainer.output_dir={out}", "trainer.total_steps=2", "trainer.log_samples_every=0")
    memory = psutil.virtual_memory().used / 1024**3
    train(cfg)
    step = lines(out / "metrics.jsonl")[0]

    run = setup(cfg, init_distributed("cpu"))
    params = sum(p.numel() for p in run.model.parameters())
    log = (out / "train.log").read_text()
    assert f"({params:,}), trained" in log and f"{len(run.task.train_rows):,} train rows" in log
    assert "1 rank(s)" in log and "2 prompts x 4 = 8 samples per step" in log and "starting fresh: step 0 of 2" in log

    assert step["training/global_step"] == 1 and step["training/epoch"] == 0
    assert step["timing_s/update_actor"] == step["timing_s/update"]
    # The first step's prompts, drawn again from the loader's seed, each repeated per generation.
    rows = PromptLoader(run.task.train_rows, cfg.trainer.batch_size, seed=cfg.trainer.seed).next_batch()
    _, prompt_mask, _ = run.encoder(rows)
    lengths = prompt_mask.sum(1).double()
    assert step["prompt_length/mean"] == pytest.approx(lengths.mean().item())
    assert step["prompt_length/max"] == lengths.max().item() and step["prompt_length/min"] == lengths.min().item()
    samples = len(rows) * cfg.algorithm.num_generations
    completion = step["response_length/mean"] * samples
    prompt = lengths.sum().item() * cfg.algorithm.num_generations
    assert step["timing_per_token_ms/gen"] == pytest.approx(step["timing_s/gen"] * 1000 / completion)
    assert step["timing_per_token_ms/update_actor"] == pytest.approx(step["timing_s/update"] * 1000 / (completion + prompt))
    assert step["perf/cpu_memory_used_gb"] == pytest.approx(memory, abs=2.0)
    if torch.cuda.is_available():
        assert 0 < step["perf/max_memory_allocated_gb"] <= torch.cuda.max_memory_allocated() / 1024**3
    else:
        assert "perf/max_memory_allocated_gb" not in step  # no accelerator memory to report


def test_router_load_is_each_experts_share_of_the_last_forward(tiny_checkpoint) -> None:
    from diffrl.models.moe import SparseMoE
    from diffrl.trainer.distributed import World
    from diffrl.trainer.step_metrics import router_load

    model = tiny_checkpoint("llada2_moe").load()
    inputs: list[torch.Tensor] = []
    layers = [m for m in model.modules() if isinstance(m, SparseMoE)]
    for layer in layers:
        layer.register_forward_hook(lambda mod, args, out: inputs.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(torch.randint(0, 500, (3, 10)))
        # Recount every layer's routing from its own input: the share of (token, slot) pairs per expert.
        shares = [torch.bincount(layer.gate(x).indices.flatten(), minlength=len(layer.experts)).double() for layer, x in zip(layers, inputs)]
    want = torch.stack([s / s.sum() for s in shares]).mean(0)
    got = router_load(model, World(0, 1, 0, torch.device("cpu")))
    assert [got[f"moe/load/expert_{e}"] for e in range(len(want))] == pytest.approx(want.tolist())
    assert got["moe/load/max_over_mean"] == pytest.approx((want.max() / want.mean()).item())
    assert "moe/aux_loss" in got


def test_pg_clipfrac_lower_counts_tokens_clipped_at_one_minus_epsilon() -> None:
    from diffrl.algorithms.losses import clipped_policy_loss

    gen = torch.Generator().manual_seed(0)
    logp, old = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    adv = torch.tensor([1.0, -1.0, -0.5, 0.3, -2.0, 0.0])
    weights = torch.rand(6, 5, generator=gen)
    _, metrics = clipped_policy_loss(logp, old, adv, weights, epsilon=0.2)
    ratio = (logp - old).exp()
    lower = (ratio < 0.8) & (adv[:, None] < 0)
    upper = (ratio > 1.2) & (adv[:, None] > 0)
    assert lower.any() and upper.any()
    assert metrics["actor/pg_clipfrac_lower"].item() == pytest.approx((lower * weights).sum().item())
    assert metrics["actor/pg_clipfrac"].item() == pytest.approx(((lower | upper) * weights).sum().item())


def test_progress_eta_counts_only_this_phases_pace_and_prints_plain_lines_off_a_terminal() -> None:
    now = [100.0]
    stream = io.StringIO()  # not a TTY: plain lines
    bar = Progress("rl", 10, initial=4, stream=stream, clock=lambda: now[0])
    assert bar.eta() is None
    for _ in range(2):
        now[0] += 3.0
        bar.update(1, reward=0.5)
    # 2 steps in 6 s since the phase began (not since step 0 of the run): 4 left take 12 s.
    assert bar.eta() == pytest.approx(12.0)
    printed = stream.getvalue().splitlines()
    assert printed[-1] == "rl: 6/10 (60%) 3.00 s/step, elapsed 6s, ETA 12s, reward=0.500"
    assert len(printed) == 2  # one line per step: 6 steps left, fewer than the line budget


def _read_until_closed(master: int) -> str:
    """Everything written to a pty whose slave end is closed; one read returns only what is buffered so far."""
    import os

    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the slave is closed and the buffer drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def test_on_a_terminal_progress_is_a_bar_counting_from_the_resumed_step() -> None:
    import fcntl
    import os
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    with os.fdopen(slave, "w") as terminal:
        bar = Progress("rl", 10, initial=4, stream=terminal)
        assert bar.bar is not None
        bar.update(1, reward=0.25)
        bar.close()
    shown = _read_until_closed(master)
    assert "rl:" in shown and "5/10" in shown and "reward=0.250" in shown
