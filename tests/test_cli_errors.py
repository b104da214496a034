"""User mistakes through the real commands: one ``error:`` line (or a short list) naming the field
and the fix, exit status 2, no traceback and no Hydra wrapper; ``--debug`` brings the traceback back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
# The demo, shrunk to a step or two.
SMALL = ["trainer.batch_size=2", "trainer.warm_start.steps=0", "trainer.progress_bar=false", "trainer.plot=false",
         "trainer.wandb.enabled=false", "task.synthetic.num_train=16", "task.synthetic.num_val=8"]


def run(tmp: Path, *args: str, module: str = "diffrl.train", prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "DIFFRL_DEBUG", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [*prefix, sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


def error_of(proc: subprocess.CompletedProcess) -> str:
    """The error the command printed, checked to be the short form."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output, output[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return "\n".join(lines[start:])


def test_a_model_path_that_does_not_exist(tmp_path: Path) -> None:
    message = error_of(run(tmp_path, "model.path=/no/such/LLaDA-8B-Instruct", f"trainer.output_dir={tmp_path / 'run'}", *SMALL))
    assert message.startswith("error: model.path=/no/such/LLaDA-8B-Instruct does not exist; set model.path") and "\n" not in message
    assert "Repo id" not in message and "tokenizer.json" not in message


@pytest.mark.slow
def test_the_evaluation_command_reports_the_same_way_and_debug_restores_the_traceback(tmp_path: Path) -> None:
    args = ["model=llada_tiny", "model.path=/no/such/model", "task=sort_digits", "rollout=tiny", f"eval.output_dir={tmp_path / 'eval'}", "eval.limit=2"]
    assert error_of(run(tmp_path, *args, module="diffrl.eval")).startswith("error: model.path=/no/such/model does not exist")
    debug = run(tmp_path, *args, "--debug", module="diffrl.eval")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError: model.path=/no/such/model" in debug.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with gsm8k's train file replaced by each kind of bad file, one per subfolder."""
    root = tmp_path_factory.mktemp("data")
    for kind in ("text", "empty"):
        (root / kind / "rl" / "train").mkdir(parents=True)
    (root / "text" / "rl" / "train" / "gsm8k.parquet").write_text("question,answer\n1+1,2\n")
    pd.DataFrame({"prompt": pd.Series([], dtype=object), "reward_model": pd.Series([], dtype=object)}).to_parquet(root / "empty" / "rl" / "train" / "gsm8k.parquet")
    return root


def test_a_file_that_is_not_parquet(tmp_path: Path, data_dir: Path) -> None:
    message = error_of(run(tmp_path, "task=gsm8k", f"data_dir={data_dir / 'text'}", f"trainer.output_dir={tmp_path / 'run'}"))
    assert f"{data_dir / 'text'}/rl/train/gsm8k.parquet is not a readable parquet file" in message and "verl-format parquet" in message
    assert len(message.splitlines()) == 1


def test_a_parquet_file_without_rows(tmp_path: Path, data_dir: Path) -> None:
    message = error_of(run(tmp_path, "task=gsm8k", f"data_dir={data_dir / 'empty'}", f"trainer.output_dir={tmp_path / 'run'}"))
    assert message == f"error: {data_dir / 'empty'}/rl/train/gsm8k.parquet has no rows; point task.train_files / task.val_files at a file with data"


def test_a_missing_data_folder_names_data_dir_and_its_variable(tmp_path: Path) -> None:
    message = error_of(run(tmp_path, "task=gsm8k", f"trainer.output_dir={tmp_path / 'run'}"))  # cwd has no data/
    assert "data/rl/train/gsm8k.parquet: data file not found (folder" in message
    assert "data_dir" in message and "DIFFRL_DATA_DIR" in message


def test_fsdp2_without_torchrun_says_how_to_launch(tmp_path: Path) -> None:
    message = error_of(run(tmp_path, "trainer=fsdp2", f"trainer.output_dir={tmp_path / 'run'}"))
    assert "trainer.strategy=fsdp2" in message and "torchrun --nproc_per_node" in message and "trainer=single" in message
    assert "RANK" not in message


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_says_what_one_needs(tmp_path: Path) -> None:
    """The checkpoints folder is a 2 MB tmpfs (mounted in a user and mount namespace): the first
    checkpoint (about 1.5 MB) fits, the second fills the disk mid-write. The shell lists the
    folder after the run, while the mount still exists."""
    assert shutil.which("unshare"), "the disk-full test mounts a small tmpfs with util-linux's unshare"
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    script = f'mount -t tmpfs -o size=2m tmpfs {ckpts} && "$@"; rc=$?; echo "listing: $(ls -A {ckpts})"; exit $rc'
    proc = run(tmp_path, f"trainer.output_dir={out}", "trainer.total_steps=3", "trainer.save_every=1", *SMALL,
               prefix=("unshare", "-Urm", "sh", "-c", script, "sh"))
    message = error_of(proc)
    assert message.startswith(f"error: disk full while writing checkpoint step_000002 under {ckpts}: a checkpoint needs about 1.")
    assert "MB and" in message and f"{ckpts / 'step_000001'}, is intact" in message and "trainer.keep_last_n" in message
    assert "listing: step_000001\n" in proc.stdout, proc.stdout[-2000:]
