"""What share of an RL training step the rollout takes, with the faithful and the fast rollout.

    python scripts/bench_step_share.py                                   # mid Dream, d1 on GSM8K, fast rollout
    python scripts/bench_step_share.py --rollouts dream_instruct dream_instruct_fast --steps 3
    python scripts/bench_step_share.py --device cuda --size real --model-path /models/Dream-v0-Instruct-7B

Writes a mid-size random checkpoint of a published family whose folder ships its tokenizer (Dream,
SDAR: the published vocabulary, so the LM head costs what it does in the real model; LLaDA's folder
has no tokenizer files), then runs ``python -m diffrl.train`` with d1's recipe (diffu-GRPO,
``num_iterations`` 12, GSM8K) on it for ``--steps`` steps with each rollout recipe in turn (its block
and steps scaled to ``--gen-length``), and
reads every step's ``timing_s/*`` from the run's ``metrics.jsonl``. The first step is left out
(start-up). Reported per rollout recipe: seconds per step, ``timing_s/gen`` and its share of
``timing_s/step``, and the other sections' shares. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The mid size of scripts/bench_rollout.py: width 512, 8 layers.
MID = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 8, "intermediate_size": 1376}
# family -> (published folder, model recipe, fields of the mid size)
FAMILIES = {"dream": ("Dream-v0-Instruct-7B", "dream_v0_instruct_7b", {**MID, "max_window_layers": 8})}


def write_checkpoint(args: argparse.Namespace, out: Path) -> Path:
    from diffrl.models.tiny import write_tiny_checkpoint

    folder, _, mid = FAMILIES[args.family]
    return write_tiny_checkpoint(Path(args.hf_root) / folder, out, std=args.std, **mid)


def run(args: argparse.Namespace, model_path: Path, rollout: str, out: Path) -> list[dict]:
    """Train ``--steps`` steps with ``rollout`` and return each step's metrics."""
    from bench_rollout import scaled_recipe

    _, model_recipe, _ = FAMILIES[args.family]
    # The recipe's own block and steps, scaled to --gen-length as bench_rollout.py --recipes does.
    scaled = scaled_recipe(rollout, args.gen_length)
    block, steps = scaled["block_length"], scaled["steps"]
    cmd = [
        sys.executable, "-m", "diffrl.train", "recipe=d1_llada_gsm8k", f"model={model_recipe}", f"model.path={model_path}",
        f"rollout={rollout}", f"rollout.max_completion_length={args.gen_length}", f"rollout.steps={steps}",
        f"rollout.block_length={block}", f"data_dir={args.data_dir}", f"model.dtype={args.dtype}",
        "model.gradient_checkpointing=false", f"algorithm.num_generations={args.num_generations}", f"trainer.batch_size={args.prompts}",
        f"trainer.micro_batch_size={args.micro_batch}", f"trainer.total_steps={args.steps}", "trainer.wandb.enabled=false",
        f"trainer.output_dir={out}", "trainer.progress_bar=false", "trainer.plot=false", "trainer.save_every=0", f"trainer.device={args.device}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training with rollout={rollout} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("DIFFRL_SHARED", REPO.parent / "shared"))
    parser.add_argument("--family", choices=sorted(FAMILIES), default="dream")
    parser.add_argument("--hf-root", default=str(shared / "hf"))
    parser.add_argument("--data-dir", default=str(shared / "data"))
    parser.add_argument("--model-path", default=None, help="a checkpoint folder to use instead of writing the mid-size one")
    parser.add_argument("--rollouts", nargs="+", default=["dream_instruct_fast"], help="rollout recipes (recipes/rollout/)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per rollout recipe (the first is left out)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (trainer.batch_size)")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--std", type=float, default=0.5, help="init std: random weights need a large one for peaked outputs (top-p nuclei of a few ids, thresholds that fire), as a trained model has")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step (start-up) is left out")
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(args.model_path) if args.model_path else write_checkpoint(args, Path(tmp) / "model")
        print(f"family={args.family} model={model_path} prompts={args.prompts}x{args.num_generations} gen={args.gen_length} "
              f"steps={args.steps} (first left out) threads={args.threads} device={args.device}")
        print(f"{'rollout':24} {'s/step':>8} {'gen s':>8} {'gen share':>10}  other sections (share of the step)")
        for rollout in args.rollouts:
            steps = run(args, model_path, rollout, Path(tmp) / f"run-{rollout}")[1:]
            total = sum(m["timing_s/step"] for m in steps)
            # update_actor is verl's name for update, logged twice.
            sections = sorted({k for m in steps for k in m if k.startswith("timing_s/")} - {"timing_s/step", "timing_s/gen", "timing_s/update_actor"})
            shares = {k: sum(m.get(k, 0.0) for m in steps) / total for k in sections}
            gen = sum(m["timing_s/gen"] for m in steps)
            others = ", ".join(f"{k.removeprefix('timing_s/')} {v:.0%}" for k, v in shares.items() if v >= 0.01)
            print(f"{rollout:24} {total / len(steps):8.1f} {gen / len(steps):8.1f} {gen / total:10.0%}  {others}")


if __name__ == "__main__":
    main()
