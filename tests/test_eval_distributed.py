"""Distributed and interrupted evaluations end with the one-process result: a 2-rank ``torchrun``
(gloo) evaluation, and an evaluation SIGKILLed after some samples were written and started again."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from diffrl.eval.records import read_jsonl
from diffrl.eval.runner import evaluate
from tests.eval_helpers import byte_llada, compose_eval, eval_cmd, eval_overrides, run_eval  # noqa: F401  (byte_llada: a fixture)
from tests.torchrun import env, run_torchrun

ROWS, SAMPLES = 6, 2


def overrides(model: Path, shared: Path, out: Path, *extra: str) -> list[str]:
    return eval_overrides(model, shared, out, f"eval.limit={ROWS}", f"eval.num_samples={SAMPLES}", "eval.pass_k=[1,2]", "eval.batch_size=4", *extra)


@pytest.fixture(scope="module")
def one_process(byte_llada: Path, shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one_process") / "out"
    evaluate(compose_eval(*overrides(byte_llada, shared, out)))
    return out


def records(folder: Path) -> list[dict]:
    return read_jsonl(folder / "samples.jsonl")


def assert_same_results(folder: Path, reference: Path) -> None:
    """Every sample's record (generation time aside) and the summary (timing aside) agree."""
    got, want = records(folder), records(reference)
    assert len(got) == len(want) == ROWS * SAMPLES
    for a, b in zip(got, want):
        a, b = ({k: v for k, v in r.items() if k != "gen_s"} for r in (a, b))
        assert a["completion"] == b["completion"] and a["step_map"] == b["step_map"], (a["index"], a["sample"])
        exact = {k for k, v in b.items() if not isinstance(v, float)}
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
        # Batches differ between runs, so floating-point sums may differ in the last bits.
        assert {k: a[k] for k in b.keys() - exact} == pytest.approx({k: b[k] for k in b.keys() - exact})
    summary, expected = (json.loads((f / "summary.json").read_text()) for f in (folder, reference))
    summary.pop("timing"), expected.pop("timing")
    floats = {k for k, v in expected.items() if isinstance(v, float)}
    assert {k: summary[k] for k in floats} == pytest.approx({k: expected[k] for k in floats})
    assert {k: v for k, v in summary.items() if k not in floats} == {k: v for k, v in expected.items() if k not in floats}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_under_torchrun_equal_one_process(one_process: Path, byte_llada: Path, shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "two_ranks"
    proc = run_torchrun("-m", "diffrl.eval", *overrides(byte_llada, shared, out), tmp=tmp_path)
    assert f"{ROWS * SAMPLES} to generate on 2 rank(s)" in proc.stdout
    assert_same_results(out, one_process)


@pytest.mark.slow
def test_a_killed_evaluation_resumes_without_redoing_samples(one_process: Path, byte_llada: Path, shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = overrides(byte_llada, shared, out, "eval.batch_size=1")
    part = out / "samples.rank0.jsonl"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(eval_cmd(*args), cwd=tmp_path, env=env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if len(read_jsonl(part)) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    written = read_jsonl(part)
    assert 2 <= len(written) < ROWS * SAMPLES and not (out / "summary.json").exists()

    resumed = run_eval(tmp_path, *args)
    assert f"{len(written)} done, {ROWS * SAMPLES - len(written)} to generate" in resumed.stdout
    final = {(r["index"], r["sample"]): r for r in records(out)}
    # The samples written before the kill are kept as they were (their own generation time too).
    assert all(final[(r["index"], r["sample"])] == r for r in written)
    assert_same_results(out, one_process)
