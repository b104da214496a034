"""PNG plots: finalization heat map, accuracy vs tokens per forward, a training run's curves.

    python -m diffrl.eval.plots runs/my_run        # reward and validation curves of a training run
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffrl.trainer.logger import read_metrics


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def plot_finalization_heatmap(records: list[dict[str, Any]], out: str | Path, title: str = "finalization step by position") -> Path:
    """How many samples finalized completion position x at step y (from each record's ``step_map``;
    positions never decoded, step -1, are left out). A left-to-right decoder draws a diagonal."""
    import numpy as np

    plt = _pyplot()
    maps = [r["step_map"] for r in records if r.get("step_map")]
    width = max((len(m) for m in maps), default=1)
    steps = max((max(m) for m in maps), default=0) + 1
    counts = np.zeros((max(steps, 1), width))
    for step_map in maps:
        for position, step in enumerate(step_map):
            if step >= 0:
                counts[step, position] += 1
    fig, ax = plt.subplots(figsize=(8, 5))
    image = ax.imshow(counts, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xlabel("completion position")
    ax.set_ylabel("finalization step")
    ax.set_title(f"{title} ({len(maps)} samples)")
    return _save(fig, Path(out))


def plot_accuracy_vs_tpf(points: list[dict[str, Any]], out: str | Path, title: str = "accuracy vs tokens per forward") -> Path:
    """One point per decoding setting: accuracy against mean tokens per forward, labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ordered = sorted(points, key=lambda p: p["rollout/tpf"] or 0.0)
    ax.plot([p["rollout/tpf"] for p in ordered], [p["accuracy"] for p in ordered], marker="o")
    for p in ordered:
        ax.annotate(p["label"], (p["rollout/tpf"], p["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, Path(out))


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """A training run's reward per step and every ``val/<task>/acc`` it logged, from metrics.jsonl."""
    plt = _pyplot()
    rows = read_metrics(run_dir)
    val_keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.endswith("/acc")})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    reward = [(r["step"], r["critic/score/mean"]) for r in rows if "critic/score/mean" in r]
    if reward:
        left.plot(*zip(*reward), label="critic/score/mean")
    left.set(xlabel="step", ylabel="reward", title="training reward")
    for key in val_keys:
        right.plot(*zip(*[(r["step"], r[key]) for r in rows if key in r]), marker="o", label=key)
    right.set(xlabel="step", ylabel="accuracy", title="validation accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return _save(fig, Path(out) if out else Path(run_dir) / "training_curves.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot a training run's reward and validation curves from its metrics.jsonl.")
    parser.add_argument("run_dir", help="training run folder (trainer.output_dir)")
    parser.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    print(plot_training_curves(args.run_dir, args.out))


if __name__ == "__main__":
    main()
