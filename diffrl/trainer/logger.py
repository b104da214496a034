"""Where metrics go: metrics.jsonl in the run folder, Weights & Biases, and the console (whose
lines are kept in the run folder's ``train.log``).

A resumed run continues its W&B run (same id, kept in ``wandb_run_id``; a fresh start gets a new
one) and first replays the steps up to its checkpoint from ``metrics.jsonl`` that the W&B run does
not hold (all of them offline, where a killed process may have flushed nothing), so its history
has every step once.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from diffrl.trainer.config import WandbConfig
from diffrl.trainer.progress import Progress

RUN_ID_FILE = "wandb_run_id"


class MetricLogger:
    """Rank 0 writes ``metrics.jsonl`` (one JSON object per step), logs to W&B (offline when no
    API key is set) and shows each phase's progress (:meth:`phase`) with its ETA."""

    def __init__(self, run_dir: Path, wandb_cfg: WandbConfig, config: dict[str, Any], *, start_step: int = 0, rank: int = 0, progress_bar: bool = True) -> None:
        self.enabled = rank == 0
        self.run = None
        self.bar: Progress | None = None
        self.show_progress = progress_bar
        if not self.enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        self.log_path = run_dir / "train.log"
        self.before_path = run_dir / "warm_start.json"
        if start_step == 0:
            self.path.unlink(missing_ok=True)
            self.before_path.unlink(missing_ok=True)
            # A fresh start is a new W&B run: under the old id its steps 1.. would land behind the
            # steps an earlier start logged there, and W&B drops a step below the run's last one.
            (run_dir / RUN_ID_FILE).unlink(missing_ok=True)
        else:
            self._truncate_after(start_step)
        if wandb_cfg.enabled and wandb_cfg.mode != "disabled":
            import wandb

            mode = wandb_cfg.mode if wandb_cfg.mode != "auto" else ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self.run = wandb.init(
                project=wandb_cfg.project,
                name=wandb_cfg.name or run_dir.name,
                dir=str(run_dir),
                config=config,
                mode=mode,
                resume="allow",
                id=_run_id(run_dir),
            )
            if start_step:
                self._replay(start_step)

    def _replay(self, step: int) -> None:
        # run.step is the next step the W&B run expects: 0 offline, past its last step online.
        assert self.run is not None
        first = self.run.step
        if first == 0 and self.before_path.exists():
            before = json.loads(self.before_path.read_text())
            self._log_before_training(before["metrics"], before["curve"])
        for row in read_metrics(self.path.parent) if self.path.exists() else []:
            if first <= row["step"] <= step:
                self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def phase(self, desc: str, total: int, *, initial: int = 0, unit: str = "step") -> Progress:
        """Start showing a phase's progress (rank 0; elsewhere a silent one); :meth:`write`
        prints through it until :meth:`end_phase`."""
        self.end_phase()
        self.bar = Progress(desc, total, initial=initial, unit=unit, enabled=self.enabled and self.show_progress)
        return self.bar

    def end_phase(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _truncate_after(self, step: int) -> None:
        # A resumed run rewrites the steps after its checkpoint; drop what the killed run logged.
        if self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            self.path.write_text("".join(ln + "\n" for ln in lines))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One training step's metrics to metrics.jsonl and W&B; advances the progress shown."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)
        if self.bar is not None:
            headline = {"reward": metrics["critic/score/mean"]} if "critic/score/mean" in metrics else {"loss": metrics.get("sft/loss", float("nan"))}
            self.bar.update(1, **headline, step_s=f"{metrics.get('timing_s/step', float('nan')):.2f}")

    def log_before_training(self, metrics: dict[str, float], curve: list[float] | None = None) -> None:
        """Metrics of what ran before step 1 (the warm start) to W&B at step 0, with its per-step
        loss ``curve`` as a line plot (``warm_start/loss_curve``); kept in ``warm_start.json`` for
        a resumed run's W&B replay."""
        if not self.enabled:
            return
        self.before_path.write_text(json.dumps({"metrics": metrics, "curve": curve or []}) + "\n")
        self._log_before_training(metrics, curve or [])

    def _log_before_training(self, metrics: dict[str, float], curve: list[float]) -> None:
        if self.run is None:
            return
        import wandb

        logged: dict[str, Any] = dict(metrics)
        if curve:
            table = wandb.Table(columns=["warm_start_step", "loss"], data=[[i + 1, loss] for i, loss in enumerate(curve)])
            logged["warm_start/loss_curve"] = wandb.plot.line(table, "warm_start_step", "loss", title="warm-start loss")
        self.run.log(logged, step=0)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """A W&B table of a few samples (prompt, completion, ground truth, reward) under ``samples``."""
        if self.run is None or not samples:
            return
        import wandb

        columns = ["step", *samples[0]]
        table = wandb.Table(columns=columns, data=[[step, *s.values()] for s in samples])
        self.run.log({"samples": table}, step=step)

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar, and append it to ``train.log``."""
        if self.enabled:
            if self.bar is not None:
                self.bar.write(text)
            else:
                print(text, flush=True)
            with open(self.log_path, "a") as f:
                f.write(text + "\n")

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        self.end_phase()
        if self.run is not None:
            if summary:
                self.run.summary.update(summary)
            self.run.finish()


def _run_id(run_dir: Path) -> str:
    """A stable W&B id per run folder, so a resumed run continues the same W&B run."""
    id_file = run_dir / RUN_ID_FILE
    if not id_file.exists():
        id_file.write_text(uuid.uuid4().hex[:12])
    return id_file.read_text().strip()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every step's metrics from a run folder's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]
