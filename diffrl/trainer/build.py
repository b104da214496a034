"""Preparing a run's inputs: the task's rows and the model folder (fresh or published)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffrl.data import DataError, PromptEncoder, load_rows
from diffrl.data.synthetic import synthetic_task
from diffrl.models import random_model, save_pretrained
from diffrl.models.tokenizer import load_tokenizer  # noqa: F401  (re-exported for the loop)
from diffrl.rewards import RewardSpec, check_row, required_fields
from diffrl.trainer.config import ModelConfig, TaskConfig
from diffrl.trainer.distributed import World, barrier


@dataclass
class TaskData:
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    # A tokenizer the task brings (synthetic tasks); None means use the model folder's.
    tokenizer: Any | None = None


def prepare_task(cfg: TaskConfig, run_dir: Path, world: World) -> TaskData:
    """Load the task's parquet rows, generating them first for synthetic tasks."""
    train_files, val_files, tokenizer = list(cfg.train_files), list(cfg.val_files), None
    if cfg.synthetic:
        options = dict(cfg.synthetic)
        task = synthetic_task(options.pop("name"), **options)
        data_dir = run_dir / "data"
        if world.is_main:
            task.write(data_dir)
        barrier()
        train_files, val_files = [str(data_dir / "train.parquet")], [str(data_dir / "val.parquet")]
        tokenizer = task.tokenizer()
    train = load_task_rows(train_files, cfg.rewards)
    val = load_task_rows(val_files, cfg.rewards) if val_files else []
    return TaskData(train_rows=train, val_rows=val, tokenizer=tokenizer)


def load_task_rows(files: list[str], rewards: list[RewardSpec]) -> list[dict[str, Any]]:
    """Every row of ``files``, checked at load for the fields the task's rewards read; a bad row
    stops the run with its file, row and field named."""
    required = required_fields(rewards)
    if not files:
        return load_rows(files, required)  # raises: no data files given
    rows = []
    for path in files:
        for i, row in enumerate(load_rows(path, required)):
            try:
                check_row(rewards, row)
            except ValueError as err:
                raise DataError(f"{path}: row {i}: {err}") from None
            rows.append(row)
    return rows


def prompt_encoder(tokenizer: Any, task: TaskConfig, pad_token_id: int) -> PromptEncoder:
    """The task's prompts as the model's chat template renders them (left-padded with ``pad_token_id``)."""
    return PromptEncoder(
        tokenizer,
        pad_token_id=pad_token_id,
        max_prompt_length=task.max_prompt_length,
        system_prompt=task.system_prompt,
        prompt_prefix=task.prompt_prefix,
    )


def prepare_model_folder(cfg: ModelConfig, task: TaskData, run_dir: Path, world: World) -> Path:
    """The checkpoint folder to load: ``model.path``, or a fresh random model written to
    ``run_dir/init`` in the published layout (so it loads through the same path as a real one)."""
    if cfg.path:
        return Path(cfg.path)
    if not cfg.init_config:
        raise ValueError("set model.path to a checkpoint folder, or model.init_config to build a fresh model")
    if task.tokenizer is None:
        raise ValueError("a fresh model (model.path=null) needs a task that brings its tokenizer (task.synthetic)")
    folder = run_dir / "init"
    tok = task.tokenizer
    config = dict(cfg.init_config)
    for key in ("vocab_size", "embedding_size"):
        if key in config:
            config[key] = len(tok)
    config.update(mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if (folder / "config.json").exists():
        existing = json.loads((folder / "config.json").read_text())
        differs = [k for k in config if k not in ("torch_dtype", "dtype") and existing.get(k) != config[k]]
        if differs:
            raise ValueError(
                f"{folder} holds a fresh model built from a different model.init_config ({', '.join(differs)}); "
                "use a new trainer.output_dir (or delete that folder) to start over"
            )
    elif world.is_main:
        save_pretrained(random_model(config, seed=cfg.init_seed), folder)
        tok.save_pretrained(folder)
    barrier()
    return folder

