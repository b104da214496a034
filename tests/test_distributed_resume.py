"""Multi-node launch, exact resume after SIGKILL, W&B records, and checkpoints that survive a kill
mid-write - all with real torchrun processes, real DCP checkpoints and real W&B offline runs.

One uninterrupted FSDP2 run on two "nodes" (two ``torchrun --nnodes 2`` launchers on 127.0.0.1
with a c10d rendezvous) is the reference twice: for one process training the same recipe in this
process, and for a one-node two-process run that is SIGKILLed after a checkpoint and resumed with
``trainer.resume=auto``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.distributed_worker import REPO, STEP_OVERRIDES, recipe
from tests.torchrun import env, free_port, run_torchrun, torchrun_cmd
from tests.wandb_offline import read_offline_run

STEPS = 4
RUN = [
    *[o for o in STEP_OVERRIDES if not o.startswith(("trainer.wandb", "trainer.resume"))],
    "trainer=fsdp2", "trainer.fsdp.param_dtype=null", f"trainer.total_steps={STEPS}", "trainer.save_every=1",
    "trainer.log_samples_every=2", "trainer.resume=auto",
]
ENTRY = str(REPO / "tests" / "train_entry.py")
# Decided by sampled tokens and counts: equal exactly when the runs agree.
DISCRETE = ("critic/score/mean", "critic/score/max", "response_length/mean", "response_length/max", "rollout/nfe", "critic/advantages/max")
# Sums of float products: equal to rounding.
CONTINUOUS = ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl", "actor/lr")
VERL = ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm", "critic/score/mean", "response_length/mean", "timing_s/gen", "timing_s/update", "perf/throughput")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_steps(got: list[dict], want: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for a, b in zip(got, want):
        for key in DISCRETE:
            assert a[key] == pytest.approx(b[key], rel=1e-9), (a["step"], key)
        for key in CONTINUOUS:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (a["step"], key)


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it at once, as a node failure would (torchrun
    starts its workers in sessions of their own, so killing its group alone leaves them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(*args: str, tmp: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(torchrun_cmd(*args, **kw), cwd=tmp, env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_agree_and_a_killed_run_resumes_exactly(tmp_path: Path) -> None:
    from diffrl.models import load_pretrained
    from diffrl.trainer.loop import train

    # Two nodes, one process each, meeting at a c10d rendezvous on localhost.
    two_nodes, port = tmp_path / "two_nodes", free_port()
    nodes = [launch(ENTRY, f"trainer.output_dir={two_nodes}", *RUN, tmp=tmp_path, nproc=1, nnodes=2, port=port) for _ in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[-3000:] for o in outputs)

    # One process, same recipe and global batch: the two nodes agree with it, step by step.
    one = tmp_path / "one_process"
    train(recipe(*RUN, "trainer.strategy=single", f"trainer.output_dir={one}", "trainer.wandb.enabled=false"))
    reference = metrics(two_nodes)
    assert_same_steps(metrics(one), reference)
    final_two, final_one = load_pretrained(two_nodes / "final").state_dict(), load_pretrained(one / "final").state_dict()
    assert max((final_two[k] - final_one[k]).abs().max().item() for k in final_one) < 1e-5

    # Rank 0 alone wrote W&B: one offline run with verl's metric names, the config and samples.
    run_files = list((two_nodes / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    record = read_offline_run(run_files[0])
    steps = [row for row in record["history"] if "actor/pg_loss" in row]
    assert len(steps) == STEPS and all(k in steps[-1] for k in VERL)
    assert {"model", "algorithm", "rollout", "trainer", "task"} <= set(record["config_keys"])
    tables = [row for row in record["history"] if "samples/_type" in row]
    # Every second step, and the first one.
    assert len(tables) == STEPS // 2 + 1 and json.loads(tables[0]["samples/_type"]) == "table-file"
    table = json.loads(next(run_files[0].parent.glob("files/media/table/samples_2_*.table.json")).read_text())
    assert table["columns"] == ["step", "prompt", "completion", "ground_truth", "reward"] and len(table["data"]) == 4

    # One node, two processes, SIGKILLed once a checkpoint exists, then resumed.
    killed = tmp_path / "killed"
    proc = launch(ENTRY, f"trainer.output_dir={killed}", *RUN, tmp=tmp_path)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "step_000002" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:] if proc.stdout else ""
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.wait()
    done = sorted(p.name for p in (killed / "checkpoints").glob("step_*"))
    assert done[-1] != f"step_{STEPS:06d}", "the run finished before the kill; nothing was resumed"
    run_torchrun(ENTRY, f"trainer.output_dir={killed}", *RUN, tmp=tmp_path)

    assert json.loads((killed / "summary.json").read_text())["resumed_from"].endswith(done[-1])
    assert_same_steps(metrics(killed), reference)
    # The resumed run continued the killed run's W&B run (the killed one never flushed its run
    # record, but its file carries the id in its name).
    files = sorted((killed / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and files[0].name == files[1].name
    assert read_offline_run(files[1])["run_id"] == files[0].name.removeprefix("run-").removesuffix(".wandb")


WRITER = """
import sys, torch
from torch import nn
from diffrl.trainer.checkpoint import save_checkpoint
from diffrl.trainer.parallelize import Root
from diffrl.trainer.strategy import Strategy

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(2048, 2048), nn.Linear(2048, 2048))
strategy = Strategy("single", Root(model), torch.optim.AdamW(model.parameters()))
for step in range(1, 1000):
    model(torch.randn(2, 2048)).sum().backward()
    strategy.step()
    save_checkpoint(sys.argv[1], step, strategy, {"note": step}, {"model_dir": None})
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path: Path) -> None:
    from torch import nn

    from diffrl.trainer.checkpoint import latest_checkpoint, load_checkpoint
    from diffrl.trainer.parallelize import Root
    from diffrl.trainer.strategy import Strategy

    root = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], env=env(tmp_path), start_new_session=True)
    deadline = time.time() + 300
    # Kill while a checkpoint after the first is half written (its DCP files are appearing).
    while not any(p.name != ".tmp-step_000001" and any(p.glob("dcp/*")) for p in root.glob(".tmp-step_*")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    torn = list(root.glob(".tmp-step_*"))
    complete = sorted(root.glob("step_*"))
    assert torn and complete, "the kill must land between two complete checkpoints"
    latest = latest_checkpoint(root)
    assert latest == complete[-1] and int(latest.name[-6:]) < int(torn[0].name[-6:])
    model = nn.Sequential(nn.Linear(2048, 2048), nn.Linear(2048, 2048))
    before = model[0].weight.detach().clone()
    state = load_checkpoint(latest, Strategy("single", Root(model), torch.optim.AdamW(model.parameters())))
    assert state["step"] == state["note"] == int(latest.name[-6:])
    assert not torch.equal(model[0].weight, before)
