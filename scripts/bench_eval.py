"""What an evaluation costs: a tiny random LLaDA over a whole test set, timed by phase.

    python scripts/bench_eval.py                                   # GSM8K test set (1319 rows)
    python scripts/bench_eval.py task=humaneval rollout.steps=64   # Hydra overrides of recipes/eval.yaml

The model is the tiny LLaDA of the tests (2 blocks of width 64, 512-token byte-level vocabulary,
see tests/eval_helpers.py), so the numbers measure the framework around the model (prompt
encoding, the rollout engine's loop, rewards, JSONL, summary, plots) more than the model. Prints
setup, generation and scoring time, samples and tokens per second, and what resuming a finished
folder costs (nothing is generated again). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffrl.eval.runner import evaluate  # noqa: E402
from tests.eval_helpers import compose_eval, write_byte_llada  # noqa: E402

SHARED = Path(os.environ.get("DIFFRL_SHARED", REPO.parent / "shared"))
# 256-token completions in blocks of 32, two tokens per step (d1's length at twice its speed),
# greedy, 32 samples per generate call.
DEFAULTS = [
    "task=gsm8k", "rollout=llada_d1", "rollout.max_completion_length=256", "rollout.steps=128", "rollout.temperature=0.0",
    "model.dtype=float32", "model.stop_tokens=[]", "model.gradient_checkpointing=false", "eval.batch_size=32", "eval.device=cpu",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = write_byte_llada(SHARED, Path(tmp) / "model")
        overrides = [*DEFAULTS, f"model.path={model}", f"data_dir={SHARED / 'data'}", f"eval.output_dir={tmp}/out", *sys.argv[1:]]
        recipe = compose_eval(*overrides)
        start = time.perf_counter()
        summary = evaluate(recipe)
        total = time.perf_counter() - start
        again = time.perf_counter()
        evaluate(recipe)
        resume = time.perf_counter() - again
    t = summary["timing"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; no GPU")
    print(f"{summary['task']}: {summary['rows']} rows x {summary['num_samples']} samples, overrides: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"total {total:.1f} s = setup (rows, model, reward workers) {total - t['wall_s']:.1f} s + generation {t['gen_s']:.1f} s "
          f"+ scoring, JSONL, summary, plot {t['wall_s'] - t['gen_s']:.1f} s")
    print(f"{t['samples_per_s']:.2f} samples/s, {t['tokens_per_s']:.0f} decoded tokens/s; mean NFE {summary['rollout/nfe']:.1f}, "
          f"TPF {summary['rollout/tpf']:.2f}, response length {summary['response_length/mean']:.1f}")
    print(f"started again on the finished folder: {resume:.1f} s (nothing generated; {resume / total:.2%} of the first run)")


if __name__ == "__main__":
    main()
