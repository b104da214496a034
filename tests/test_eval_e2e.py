"""``diffrl.eval`` end to end on a tiny checkpoint and real test sets (GSM8K, HumanEval): every
output file and plot, records that agree with the rewards and with a plain recomputation of the
summary, reference completions that score full marks, a sweep, resume, and validation in training."""

from __future__ import annotations

import json
import math
import subprocess
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import pytest

from diffrl.eval.runner import evaluate
from diffrl.rewards import RewardRunner
from diffrl.trainer.build import load_task_rows
from tests.eval_helpers import byte_llada, compose_eval, eval_cmd, eval_overrides  # noqa: F401  (byte_llada: a fixture)
from tests.torchrun import env

PNG = b"\x89PNG\r\n\x1a\n"


def read_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def plain_mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def plain_pass_at_k(outcomes: list[bool], k: int) -> float:
    subsets = list(combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def check_against_recomputation(folder: Path, recipe, rows: list[dict]) -> dict:
    """The records agree with the task's rewards and their own trajectories, and the summary
    with a plain recomputation from the records; returns the summary."""
    records, summary = read_records(folder), json.loads((folder / "summary.json").read_text())
    n = recipe.eval.num_samples
    assert [(r["index"], r["sample"]) for r in records] == [(i, k) for i in range(len(rows)) for k in range(n)]
    assert not list(folder.glob("samples.rank*.jsonl"))
    with RewardRunner(recipe.task.rewards, num_workers=0) as runner:
        rescored = runner([r["completion"] for r in records], [rows[r["index"]] for r in records])
    first = recipe.task.rewards[0].name
    for b, r in enumerate(records):
        assert r["uid"] == rows[r["index"]]["extra_info"]["index"] and r["sample_id"] == r["index"] * n + r["sample"]
        assert r["rewards"] == {name: pytest.approx(float(v[b])) for name, v in rescored.per_reward.items()}
        assert r["score"] == pytest.approx(float(rescored.total[b])) and r["correct"] == (r["rewards"][first] >= 1.0)
        steps = [s for s in r["step_map"] if s >= 0]
        assert r["length"] == len(r["step_map"]) and r["decoded"] == len(steps)
        assert r["tpf"] == pytest.approx(len(steps) / max(r["nfe"], 1))
        assert r["afp"] == pytest.approx(len(steps) / len(set(steps)) if steps else 0.0)
    by_row = defaultdict(list)
    for r in records:
        by_row[r["index"]].append(r["correct"])
    assert summary["samples"] == len(records) and summary["rows"] == len(rows)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / len(records))
    for k in recipe.eval.pass_k:
        assert summary[f"pass@{k}"] == pytest.approx(sum(plain_pass_at_k(o, k) for o in by_row.values()) / len(by_row))
    assert summary["score/mean"] == pytest.approx(plain_mean([r["score"] for r in records]))
    assert summary["response_length/mean"] == pytest.approx(plain_mean([r["length"] for r in records]))
    for key in ("nfe", "tpf", "afp", "kendall_tau"):
        for suffix, group in (("", records), ("/correct", [r for r in records if r["correct"]]), ("/incorrect", [r for r in records if not r["correct"]])):
            expected = plain_mean([r[key] for r in group])
            assert summary[f"rollout/{key}{suffix}"] == (None if expected is None else pytest.approx(expected)), (key, suffix)
    assert summary["timing"]["tokens_per_s"] == pytest.approx(sum(r["decoded"] for r in records) / sum(r["gen_s"] for r in records))
    return summary


@pytest.mark.slow
def test_gsm8k_and_humaneval_write_every_file_and_plot_and_resume(byte_llada: Path, shared: Path, tmp_path: Path) -> None:
    for task, limit, extra in (("gsm8k", 8, ["eval.num_samples=2", "eval.pass_k=[1,2]", "eval.batch_size=6"]), ("humaneval", 4, [])):
        folder = tmp_path / task
        recipe = compose_eval(*eval_overrides(byte_llada, shared, folder, f"eval.limit={limit}", *extra, task=task))
        summary = evaluate(recipe)
        assert {p.name for p in folder.iterdir()} >= {"samples.jsonl", "summary.json", "settings.json", "finalization_heatmap.png"}
        assert (folder / "finalization_heatmap.png").read_bytes()[:8] == PNG
        rows = load_task_rows(recipe.task.val_files, recipe.task.rewards)[:limit]
        assert check_against_recomputation(folder, recipe, rows) == json.loads(json.dumps(summary))

    # Started again in the same folder: nothing is generated again, and the summary is the same.
    gsm = tmp_path / "gsm8k"
    before = read_records(gsm)
    again = evaluate(compose_eval(*eval_overrides(byte_llada, shared, gsm, "eval.limit=8", "eval.num_samples=2", "eval.pass_k=[1,2]")))
    assert read_records(gsm) == before
    assert {k: v for k, v in again.items() if k != "timing"} == {k: v for k, v in summary_of(gsm).items() if k != "timing"}
    # Other decoding settings never mix with the folder's samples.
    with pytest.raises(ValueError, match=r"rollout.steps: 8 -> 16.*eval.resume=false"):
        evaluate(compose_eval(*eval_overrides(byte_llada, shared, gsm, "eval.limit=8", "eval.num_samples=2", "rollout.steps=16")))


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_reference_completions_score_full_marks_through_the_engine(byte_llada: Path, shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Each row's ground truth inpainted as its completion: every sample is right, which fails if
    a completion were paired with another row, decoded wrongly or scored against the wrong field.
    Off a terminal, progress comes as plain lines, one per batch of 3 (8 samples)."""
    recipe = compose_eval(*eval_overrides(byte_llada, shared, tmp_path, "eval.limit=8", "eval.batch_size=3", "eval.reference_field=reward_model.ground_truth"))
    summary = evaluate(recipe)
    rows = load_task_rows(recipe.task.val_files, recipe.task.rewards)[:8]
    records = read_records(tmp_path)
    assert [r["completion"] for r in records] == [row["reward_model"]["ground_truth"] for row in rows]
    assert all(r["rewards"]["math"] == 1.0 and r["nfe"] == 0 for r in records)
    assert summary["accuracy"] == 1.0 and summary["pass@1"] == 1.0 and summary["reward/math/mean"] == 1.0
    check_against_recomputation(tmp_path, recipe, rows)
    progress = [line.split(" ")[2] for line in capsys.readouterr().err.splitlines() if line.startswith("eval gsm8k: ")]
    assert progress == ["3/8", "6/8", "8/8"]


def test_a_sweep_evaluates_each_setting_and_plots_accuracy_against_tpf(byte_llada: Path, shared: Path, tmp_path: Path) -> None:
    recipe = compose_eval(*eval_overrides(byte_llada, shared, tmp_path, "eval.limit=4", "+eval.sweep.steps=[4,16]"))
    result = evaluate(recipe)
    points = {p["label"]: p for p in result["sweep"]}
    assert set(points) == {"steps=4", "steps=16"} and json.loads((tmp_path / "sweep.json").read_text()) == json.loads(json.dumps(result))
    for label, point in points.items():
        summary = summary_of(tmp_path / "sweep" / label)
        assert {k: point[k] for k in ("accuracy", "rollout/tpf", "rollout/nfe")} == {k: summary[k] for k in ("accuracy", "rollout/tpf", "rollout/nfe")}
        assert (tmp_path / "sweep" / label / "finalization_heatmap.png").exists()
    # 16 tokens in two blocks: 4 steps commit 4 tokens per forward, 16 steps one (fewer once a sample stops).
    assert points["steps=4"]["rollout/tpf"] > 2.5 and points["steps=16"]["rollout/tpf"] <= 1.0
    assert (tmp_path / "accuracy_vs_tpf.png").read_bytes()[:8] == PNG


def test_the_kernels_key_reaches_the_kernel_dispatch(byte_llada: Path, shared: Path, tmp_path: Path) -> None:
    """``eval.kernels=triton`` on CPU tensors without Triton's interpreter must refuse clearly."""
    child = {k: v for k, v in env(tmp_path).items() if k not in ("TRITON_INTERPRET", "DIFFRL_KERNELS")}
    cmd = eval_cmd(*eval_overrides(byte_llada, shared, tmp_path / "out", "eval.limit=1", "eval.kernels=triton"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=child, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "runs only in Triton's interpreter" in proc.stderr


@pytest.mark.slow
def test_validation_during_training_equals_an_evaluation_of_the_final_model(tmp_path: Path) -> None:
    """Greedy decoding, so sample ids do not matter: the last validation (after the last update)
    must equal ``diffrl.eval`` of the saved final model on the same rows."""
    from diffrl.eval.plots import plot_training_curves
    from diffrl.trainer.config import to_config
    from diffrl.trainer.logger import read_metrics
    from diffrl.trainer.loop import train
    from tests.test_recipes import compose_recipe

    run = tmp_path / "run"
    train(to_config(compose_recipe(
        f"trainer.output_dir={run}", "trainer.total_steps=2", "trainer.val_every=1", "trainer.val_size=8", "trainer.batch_size=2",
        "trainer.warm_start.steps=0", "trainer.progress_bar=false", "trainer.wandb.enabled=false", "rollout.temperature=0.0",
    )))
    logged = read_metrics(run)
    assert [m["step"] for m in logged if "val/sort_digits/acc" in m] == [1, 2]
    last = logged[-1]
    summary = evaluate(compose_eval(
        "model=llada_tiny", f"model.path={run / 'final'}", "task=sort_digits", "rollout=tiny", "rollout.temperature=0.0",
        "eval.limit=8", "eval.reward_workers=0", "eval.device=cpu", f"eval.output_dir={tmp_path / 'eval'}",
    ))
    pairs = {"acc": "accuracy", "score": "score/mean", "tpf": "rollout/tpf", "nfe": "rollout/nfe", "afp": "rollout/afp", "response_length": "response_length/mean"}
    for name, key in pairs.items():
        assert last[f"val/sort_digits/{name}"] == pytest.approx(summary[key]), name
    tau = summary["rollout/kendall_tau"]
    assert (tau is None and "val/sort_digits/kendall_tau" not in last) or last["val/sort_digits/kendall_tau"] == pytest.approx(tau)
    assert not math.isnan(last["val/sort_digits/tpf"])
    assert plot_training_curves(run).read_bytes()[:8] == PNG
