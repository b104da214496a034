"""PNG plots of a run's curves."""

from __future__ import annotations

from pathlib import Path

from diffrl.trainer.logger import read_metrics


def plot_reward_curve(run_dir: str | Path, out: str | Path | None = None, key: str = "critic/score/mean") -> Path:
    """Reward per RL step (and a moving average) from metrics.jsonl, saved as reward_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(run_dir) if key in r]
    steps = [r["step"] for r in rows]
    values = [r[key] for r in rows]
    window = max(1, len(values) // 20)
    smooth = [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, values, alpha=0.35, label=key)
    ax.plot(steps, smooth, linewidth=2, label=f"moving average ({window})")
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward")
    ax.set_title(f"{Path(run_dir).name}: reward")
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out else Path(run_dir) / "reward_curve.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
