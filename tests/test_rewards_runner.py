"""The reward runner and its worker pool: failures cost samples, never the run."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from diffrl.data import load_rows
from diffrl.rewards import RewardRunner, RewardSpec
from diffrl.rewards.math import math_reward
from tests import pooled_rewards  # noqa: F401  (registers the misbehaving rewards)


def row(gt: str) -> dict:
    return {"reward_model": {"ground_truth": gt}, "extra_info": {}}


TEXTS = ["a", "b", "a", "a", "b", "a"]


def test_a_pooled_reward_that_raises_costs_its_samples_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), RewardRunner([RewardSpec("test_raises_on_b", 2.0), RewardSpec("exact_match")], num_workers=2) as runner:
        out = runner(TEXTS, [row("a")] * len(TEXTS))
    assert out.per_reward["test_raises_on_b"].tolist() == [1, 0, 1, 1, 0, 1]
    assert out.reasons["test_raises_on_b"] == ["", "reward_error", "", "", "reward_error", ""]
    assert out.total.tolist() == [3, 0, 3, 3, 0, 3]
    assert out.errors == 2 and out.metrics()["reward/errors"] == 2.0
    logged = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(logged) == 1 and "boom on b" in logged[0].getMessage()


def test_a_worker_that_dies_is_replaced() -> None:
    with RewardRunner([RewardSpec("test_dies_on_b")], num_workers=2) as runner:
        out = runner(TEXTS, [row("a")] * len(TEXTS))
        again = runner(["a", "a"], [row("a")] * 2)
    assert out.reasons["test_dies_on_b"] == ["", "reward_error", "", "", "reward_error", ""]
    assert out.per_reward["test_dies_on_b"].tolist() == [1, 0, 1, 1, 0, 1] and out.errors == 2
    assert again.per_reward["test_dies_on_b"].tolist() == [1, 1]


def test_a_sample_that_hangs_times_out_and_its_worker_is_replaced() -> None:
    start = time.monotonic()
    with RewardRunner([RewardSpec("test_hangs_on_b")], num_workers=2, sample_timeout_s=2.0) as runner:
        out = runner(TEXTS, [row("a")] * len(TEXTS))
    assert time.monotonic() - start < 30
    assert out.reasons["test_hangs_on_b"] == ["", "timeout", "", "", "timeout", ""]
    assert out.per_reward["test_hangs_on_b"].tolist() == [1, 0, 1, 1, 0, 1] and out.errors == 0


def test_workers_run_in_parallel_processes_and_stop_on_close() -> None:
    runner = RewardRunner([RewardSpec("test_worker_pid")], num_workers=2)
    pids = {int(p) for p in runner(["x"] * 8, [row("x")] * 8).per_reward["test_worker_pid"].tolist()}
    assert len(pids) == 2 and os.getpid() not in pids
    runner.close()
    time.sleep(0.1)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_pooled_math_equals_inline_math(shared: Path) -> None:
    rows = load_rows(str(shared / "data" / "rl" / "test" / "gsm8k.parquet"))[:40]
    texts = []
    for i, r in enumerate(rows):
        gt = r["reward_model"]["ground_truth"]
        texts.append([f"<answer>{gt}</answer>", f"so it is {int(gt) + 1}", f"\\boxed{{{gt}}}", "no idea"][i % 4])
    specs = [RewardSpec("math", 2.0), RewardSpec("format", 0.5)]
    with RewardRunner(specs, num_workers=2) as pooled, RewardRunner(specs, num_workers=0) as inline:
        a, b = pooled(texts, rows), inline(texts, rows)
    assert a.total.tolist() == b.total.tolist() and a.reasons == b.reasons
    assert a.per_reward["math"].tolist() == [[1.0, 0.0, 1.0, 0.0][i % 4] for i in range(len(rows))]


def test_a_pathological_math_answer_times_out_in_a_worker() -> None:
    with RewardRunner([RewardSpec("math", kwargs={"timeout_seconds": 1})], num_workers=1) as runner:
        out = runner(["\\boxed{9^{9^{9^{9}}}}", "\\boxed{5}"], [row("5"), row("5")])
    assert out.reasons["math"] == ["timeout", ""]


def test_math_runs_in_a_thread_without_signal_alarm() -> None:
    result: list = []
    worker = threading.Thread(target=lambda: result.extend(math_reward(["\\boxed{\\frac{1}{2}}"], [row("0.5")])))
    worker.start()
    worker.join()
    assert [s.value for s in result] == [1.0]


def test_bad_recipe_entries_fail_at_start_with_the_reward_named() -> None:
    with pytest.raises(ValueError, match="'math'.*extract"):
        RewardRunner([RewardSpec("math", kwargs={"extract": "boxxed"})])
    with pytest.raises(ValueError, match="'code'.*timeout"):
        RewardRunner([RewardSpec("code", kwargs={"timeout": 3})])
    with pytest.raises(ValueError, match="more than once"):
        RewardRunner([RewardSpec("format"), RewardSpec("format", kwargs={"strict": True})])
    with pytest.raises(ValueError, match="not registered"):
        RewardRunner([RewardSpec("maths")])
