"""Stopping and resuming real training processes: SIGTERM (SLURM preemption) and SIGINT (Ctrl-C)
save a checkpoint at the next step boundary and exit with status 0; after kill -9 the resumed W&B
run (offline) holds every step of the run exactly once, the warm start's step 0 included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.distributed_worker import REPO, STEP_OVERRIDES
from tests.wandb_offline import read_offline_run

ENTRY = str(REPO / "tests" / "train_entry.py")
BASE = [*STEP_OVERRIDES, "trainer.plot=false", "trainer.batch_size=2", "task.synthetic.num_train=64", "task.synthetic.num_val=8", "trainer.resume=auto"]


def start(out: Path, *overrides: str, base: list[str] = BASE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, ENTRY, *base, f"trainer.output_dir={out}", *overrides]
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line] if path.exists() else []


def wait_for(proc: subprocess.Popen, ready) -> None:
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_saves_a_checkpoint_at_the_next_step_and_exits_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = start(out, "trainer.total_steps=200", "trainer.save_every=0", "trainer.progress_bar=true")
    wait_for(proc, lambda: len(steps_logged(out)) >= 1)
    proc.send_signal(sig)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    done = steps_logged(out)[-1]
    assert f"stopped by {sig.name} at step {done} of 200" in output
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{done:06d}"]
    assert (out / "checkpoints" / f"step_{done:06d}" / "COMPLETE").exists() and not (out / "final").exists()
    if sig != signal.SIGTERM:
        return

    # The same command with one more step resumes there, says so, and shows plain progress lines.
    proc = start(out, f"trainer.total_steps={done + 1}", "trainer.save_every=0", "trainer.progress_bar=true")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert f"resuming from step {done} of {done + 1}" in output
    assert f"rl: {done + 1}/{done + 1} (100%)" in output and "ETA" in output
    assert steps_logged(out) == list(range(1, done + 2)) and (out / "final").is_dir()

    # Finished: the same command again exits 0 and says so.
    proc = start(out, f"trainer.total_steps={done + 1}")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "already finished" in output and steps_logged(out) == list(range(1, done + 2))


@pytest.mark.slow
def test_after_kill_9_the_resumed_wandb_run_has_every_step_once(tmp_path: Path) -> None:
    out, steps = tmp_path / "run", 5
    run = ["trainer.wandb.enabled=true", f"trainer.total_steps={steps}", "trainer.save_every=1", "trainer.warm_start.steps=2", "trainer.warm_start.batch_size=4", "trainer.val_every=5", "trainer.val_size=4"]
    proc = start(out, *run)
    wait_for(proc, lambda: (out / "checkpoints" / "step_000002" / "COMPLETE").exists())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert steps_logged(out)[-1] < steps, "the run finished before the kill; nothing was resumed"

    proc = start(out, *run)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2 and files[0].name == files[1].name  # one W&B run id, continued
    history = read_offline_run(files[-1])["history"]
    trained = [int(row["_step"]) for row in history if "actor/pg_loss" in row]
    assert trained == list(range(1, steps + 1))
    validated = [int(row["_step"]) for row in history if "val/sort_digits/acc" in row]
    assert validated == [5]
    warm = [row for row in history if "warm_start/loss_last" in row]
    assert len(warm) == 1 and int(warm[0]["_step"]) == 0
    tables = [row for row in history if "samples/_type" in row]
    assert tables, "the resumed process logs its first step's samples table"
    table = json.loads(next(files[-1].parent.glob("files/media/table/samples_*.table.json")).read_text())
    assert table["columns"] == ["step", "prompt", "completion", "ground_truth", "reward"]
    assert all(row[3] for row in table["data"])  # the sort task's answers


@pytest.mark.slow
def test_an_unmasking_policy_run_stops_on_sigterm_and_resumes_there(tmp_path: Path) -> None:
    from diffrl.trainer.unmasking_policy import FINAL
    from tests.unmasking_rank_worker import OVERRIDES

    out = tmp_path / "run"
    proc = start(out, "trainer.total_steps=200", base=OVERRIDES)
    wait_for(proc, lambda: len(steps_logged(out)) >= 1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    done = steps_logged(out)[-1]
    assert f"stopped by SIGTERM at step {done} of 200" in output
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{done:06d}"] and not (out / FINAL).exists()

    proc = start(out, f"trainer.total_steps={done + 1}", base=OVERRIDES)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert f"resuming from step {done} of {done + 1}" in output
    assert steps_logged(out) == list(range(1, done + 2)) and (out / FINAL).is_dir()
