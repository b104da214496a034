"""Rewards that misbehave on purpose, for the pool tests. A module of their own (importing no
torch) because the pool's worker processes import it to find them by name."""

from __future__ import annotations

import os
import time

from diffrl.rewards import register_reward


@register_reward("test_raises_on_b", pooled=True)
def raises_on_b(completions: list[str], rows: list[dict]) -> list[float]:
    if any("b" in c for c in completions):
        raise RuntimeError("boom on b")
    return [1.0] * len(completions)


@register_reward("test_dies_on_b", pooled=True)
def dies_on_b(completions: list[str], rows: list[dict]) -> list[float]:
    if any("b" in c for c in completions):
        os._exit(3)
    return [1.0] * len(completions)


@register_reward("test_hangs_on_b", pooled=True)
def hangs_on_b(completions: list[str], rows: list[dict]) -> list[float]:
    if any("b" in c for c in completions):
        time.sleep(600)
    return [1.0] * len(completions)


@register_reward("test_worker_pid", pooled=True, bounds=(0, 1 << 22))
def worker_pid(completions: list[str], rows: list[dict]) -> list[float]:
    return [float(os.getpid())] * len(completions)


@register_reward("test_pooled_bad_values", pooled=True)
def pooled_bad_values(completions: list[str], rows: list[dict]) -> list[object]:
    bad = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "1e6": 1e6, "-0.5": -0.5, "string": "1", "none": None, "list": [1.0]}
    return [bad.get(c, 1.0) for c in completions]
