"""``evaluate``: the rollout engine over a task's test set, scored by the task's rewards.

Each (row, sample) pair is one sample with the global id ``row * num_samples + sample``; every
random draw of the engine is keyed by it, so a sample's completion depends neither on which rank
generates it nor on the batch around it. Under torchrun the pending samples are dealt to the
ranks in turn; each rank appends its records to its own JSONL part (``records.py``), and rank 0
merges them and writes the summary and plots once every rank is done. The output folder must be
on a filesystem every rank sees. An evaluation started again in the same folder generates only
the samples that are not there yet (``eval.resume``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffrl.data import DataError, PromptEncoder
from diffrl.errors import DiffrlConfigError
from diffrl.eval import records as jsonl
from diffrl.eval.config import EvalRecipe, correct_reward
from diffrl.eval.metrics import summarize, timing
from diffrl.eval.plots import plot_accuracy_vs_tpf, plot_finalization_heatmap
from diffrl.eval.samples import SampleScorer, reference_tokens
from diffrl.kernels import set_backend
from diffrl.models import DiffusionLM, load_pretrained
from diffrl.models.tokenizer import load_tokenizer
from diffrl.rewards import RewardRunner
from diffrl.rollout import RolloutConfig, generate
from diffrl.trainer.build import TaskData, load_task_rows, prepare_model_folder, prepare_task, prompt_encoder
from diffrl.trainer.config import TaskConfig
from diffrl.trainer.distributed import World, barrier, init_distributed
from diffrl.trainer.progress import Progress

SETTINGS = "settings.json"
SUMMARY = "summary.json"
# Summary values shown per setting in sweep.json and on the accuracy-vs-TPF plot.
SWEEP_KEYS = ("accuracy", "pass@1", "rollout/tpf", "rollout/nfe", "rollout/afp", "rollout/kendall_tau", "response_length/mean")


@dataclass
class Evaluation:
    """What every setting of one evaluation shares, loaded once."""

    recipe: EvalRecipe
    world: World
    model: DiffusionLM
    tokenizer: Any
    encoder: PromptEncoder
    rows: list[dict[str, Any]]
    scorer: SampleScorer


def evaluate(recipe: EvalRecipe) -> dict[str, Any]:
    """Run the evaluation (or the sweep) of a validated recipe; returns the summary on rank 0
    (``{}`` on other ranks), also written to ``eval.output_dir/summary.json``."""
    world = init_distributed(recipe.eval.device)
    out = Path(recipe.eval.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev = setup(recipe, world, out)
    try:
        if recipe.eval.sweep:
            return run_sweep(ev, out)
        return run_setting(ev, recipe.rollout, out)
    finally:
        ev.scorer.rewards.close()


def held_out_rows(task: TaskConfig, out: Path, world: World) -> TaskData:
    """The task's held-out rows (``task.val_files``; synthetic tasks generate theirs into ``out``)."""
    if task.synthetic:
        return prepare_task(task, out, world)
    if not task.val_files:
        raise DataError(f"task.val_files is empty for task {task.name!r}; evaluation reads the test set from it")
    return TaskData(train_rows=[], val_rows=load_task_rows(task.val_files, task.rewards, on_bad_rows=task.on_bad_rows))


def setup(recipe: EvalRecipe, world: World, out: Path) -> Evaluation:
    cfg = recipe.eval
    set_backend(cfg.kernels)
    data = held_out_rows(recipe.task, out, world)
    rows = data.val_rows[: cfg.limit] if cfg.limit else data.val_rows
    model_dir = prepare_model_folder(recipe.model, data, out, world)
    tokenizer = load_tokenizer(model_dir)
    model = load_pretrained(model_dir, dtype=recipe.model.dtype, device=world.device, overrides=recipe.model.overrides()).eval()
    encoder = prompt_encoder(tokenizer, recipe.task, model.facts.pad_token_id)
    rewards = RewardRunner(recipe.task.rewards, num_workers=cfg.reward_workers, allow_unsafe_code=recipe.task.allow_unsafe_code)
    scorer = SampleScorer(tokenizer, rewards, correct_reward(recipe), cfg.correct_threshold, cfg.save_trajectory)
    return Evaluation(recipe, world, model, tokenizer, encoder, rows, scorer)


def settings(ev: Evaluation, rollout: RolloutConfig) -> dict[str, Any]:
    """Everything that decides a sample's record; a folder's samples are reused only under the same."""
    recipe = ev.recipe
    keep = ("num_samples", "limit", "correct_reward", "correct_threshold", "reference_field")
    return json.loads(json.dumps({
        "model": dataclasses.asdict(recipe.model),
        "task": dataclasses.asdict(recipe.task),
        "rollout": dataclasses.asdict(rollout),
        "eval": {k: getattr(recipe.eval, k) for k in keep},
    }, default=str))


def check_settings(folder: Path, current: dict[str, Any]) -> None:
    """Refuse to mix samples of different settings in one folder, naming what changed."""
    path = folder / SETTINGS
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    changed = [
        f"{section}.{name}: {stored.get(section, {}).get(name)!r} -> {value!r}"
        for section, values in current.items()
        for name, value in values.items()
        if stored.get(section, {}).get(name) != value
    ]
    if changed:
        raise DiffrlConfigError(
            f"{folder} holds samples of a different evaluation ({'; '.join(changed)}); "
            "use a new eval.output_dir, or eval.resume=false to discard them"
        )


def run_setting(ev: Evaluation, rollout: RolloutConfig, folder: Path) -> dict[str, Any]:
    """Generate and score every sample of one decoding setting that ``folder`` does not hold yet,
    then (rank 0) merge, summarize and plot."""
    start = time.perf_counter()
    cfg, world = ev.recipe.eval, ev.world
    folder.mkdir(parents=True, exist_ok=True)
    current = settings(ev, rollout)
    if cfg.resume:
        check_settings(folder, current)
    barrier()  # every rank has checked the stored settings before rank 0 rewrites them
    if world.is_main:
        if not cfg.resume:
            jsonl.clear(folder)
        (folder / SETTINGS).write_text(json.dumps(current, indent=2) + "\n")
    barrier()
    done = jsonl.read_all(folder)
    barrier()  # every rank has read the parts before any rank rewrites its own
    pending = [(i, k) for i in range(len(ev.rows)) for k in range(cfg.num_samples) if (i, k) not in done]
    if world.is_main:
        print(f"{ev.recipe.task.name}: {len(ev.rows)} rows x {cfg.num_samples} samples: {len(done)} done, "
              f"{len(pending)} to generate on {world.world_size} rank(s) -> {folder}", flush=True)
    writer = jsonl.PartWriter(folder, world.rank)
    mine = pending[world.rank :: world.world_size]
    # Rank 0 shows its own share; every rank has one of the same size, so its ETA is the run's.
    progress = Progress(f"eval {ev.recipe.task.name}", len(mine), unit="sample", enabled=world.is_main)
    try:
        for s in range(0, len(mine), cfg.batch_size):
            batch = mine[s : s + cfg.batch_size]
            writer.write(generate_and_score(ev, rollout, batch))
            progress.update(len(batch))
    finally:
        progress.close()
        writer.close()
    barrier()
    if not world.is_main:
        return {}
    records = jsonl.merge(folder)
    reward_names = [spec.name for spec in ev.recipe.task.rewards]
    summary = {"task": ev.recipe.task.name, **summarize(records, reward_names, cfg.pass_k), "timing": timing(records, time.perf_counter() - start)}
    (folder / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.plot and cfg.save_trajectory:
        plot_finalization_heatmap(records, folder / "finalization_heatmap.png", title=f"{ev.recipe.task.name}: finalization step by position")
    return summary


def generate_and_score(ev: Evaluation, rollout: RolloutConfig, keys: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """One batch: encode the prompts, generate (or inpaint the references), score, record."""
    cfg, device = ev.recipe.eval, ev.world.device
    rows = [ev.rows[i] for i, _ in keys]
    prompt_ids, prompt_mask, _ = ev.encoder(rows)
    sample_ids = torch.tensor([i * cfg.num_samples + k for i, k in keys], device=device)
    fixed = None
    if cfg.reference_field:
        fixed = reference_tokens(ev.tokenizer, rows, cfg.reference_field, rollout.max_completion_length, ev.model.facts.eos_token_id).to(device)
    start = time.perf_counter()
    out = generate(ev.model, prompt_ids.to(device), prompt_mask.to(device), rollout, sample_ids=sample_ids, fixed_tokens=fixed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return ev.scorer(out, rows, keys, time.perf_counter() - start)


def run_sweep(ev: Evaluation, out: Path) -> dict[str, Any]:
    """One evaluation per combination of ``eval.sweep`` values in ``sweep/<field=value,...>/``,
    then ``sweep.json`` and the accuracy-vs-TPF plot."""
    grid = ev.recipe.eval.sweep
    points = []
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        label = ",".join(f"{k}={v}" for k, v in setting.items())
        rollout = dataclasses.replace(ev.recipe.rollout, **setting)
        summary = run_setting(ev, rollout, out / "sweep" / label)
        if summary:
            points.append({"label": label, "setting": setting, **{k: summary.get(k) for k in SWEEP_KEYS}})
    if not ev.world.is_main:
        return {}
    result = {"task": ev.recipe.task.name, "sweep": points}
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    if ev.recipe.eval.plot:
        plot_accuracy_vs_tpf(points, out / "accuracy_vs_tpf.png", title=f"{ev.recipe.task.name}: accuracy vs tokens per forward")
    return result
