"""Building a run: the task's rows, the model folder (fresh or published), the policy under its
strategy, the KL reference, the algorithm, data loader, prompt encoder and rewards (:func:`setup`)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from diffrl.algorithms import Algorithm, build_algorithm
from diffrl.data import PromptEncoder, PromptLoader, load_rows
from diffrl.data.prompts import filter_overlong
from diffrl.data.synthetic import synthetic_task
from diffrl.errors import DiffrlConfigError
from diffrl.kernels import set_backend
from diffrl.models import load_pretrained, random_model, save_pretrained
from diffrl.models.base import DiffusionLM
from diffrl.models.tokenizer import load_tokenizer
from diffrl.rewards import RewardRunner, RewardSpec, check_row, required_fields
from diffrl.trainer.config import Config, ModelConfig, TaskConfig
from diffrl.trainer.distributed import World, barrier
from diffrl.trainer.guards import check_reference_answers
from diffrl.trainer.lora import apply_lora, lora_targets
from diffrl.trainer.policy import AdapterOff, FrozenCopy, Policy, Reference
from diffrl.trainer.strategy import build_strategy


@dataclass
class TaskData:
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    # A tokenizer the task brings (synthetic tasks); None means use the model folder's.
    tokenizer: Any | None = None


@dataclass
class Run:
    """Everything the loop touches, built once by :func:`setup`."""

    cfg: Config
    world: World
    run_dir: Path
    model_dir: Path
    policy: Policy
    # What the KL term scores against (None when beta = 0 or in SFT mode).
    reference: Reference | None
    tokenizer: Any
    algorithm: Algorithm
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: PromptLoader
    encoder: PromptEncoder
    rewards: RewardRunner
    task: TaskData
    # A few of the latest step's samples as text (RL), for the W&B samples table.
    last_samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> DiffusionLM:
        return self.policy.model

    def close(self) -> None:
        """Release the policy's and the reference's backends."""
        self.policy.close()
        if self.reference is not None:
            self.reference.close()


def setup(cfg: Config, world: World) -> Run:
    """Seed, load the task and the model, and wrap the model in the configured strategy."""
    run_dir = Path(cfg.trainer.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.trainer.seed + world.rank)
    set_backend(cfg.trainer.kernels)
    algorithm = build_algorithm(cfg.algorithm)
    answers = cfg.task.sft_response_field if cfg.trainer.mode == "rl" and algorithm.needs.reference_answer else None
    task = prepare_task(cfg.task, run_dir, world, answer_field=answers)
    model_dir = prepare_model_folder(cfg.model, task, run_dir, world)
    tokenizer = load_tokenizer(model_dir)
    model = load_pretrained(model_dir, dtype=cfg.model.dtype, device=world.device, overrides=cfg.model.overrides())
    policy, reference, scheduler = build_policy(model, cfg, model_dir)
    encoder = prompt_encoder(tokenizer, cfg.task, model.facts.pad_token_id)
    train_rows = filter_overlong(task.train_rows, encoder) if cfg.task.filter_overlong_prompts else task.train_rows
    loader = PromptLoader(train_rows, cfg.trainer.batch_size, seed=cfg.trainer.seed, rank=world.rank, world_size=world.world_size)
    rewards = RewardRunner(cfg.task.rewards, allow_unsafe_code=cfg.task.allow_unsafe_code)
    return Run(cfg, world, run_dir, model_dir, policy, reference, tokenizer, algorithm, scheduler, loader, encoder, rewards, task)


def build_policy(model: DiffusionLM, cfg: Config, model_dir: Path) -> tuple[Policy, Reference | None, torch.optim.lr_scheduler.LambdaLR]:
    """The policy (LoRA adapters on ``model`` if enabled) under ``cfg.trainer.strategy`` with its
    optimizer and schedule, and the KL reference when the loss needs one."""
    needs_reference = cfg.trainer.mode == "rl" and cfg.algorithm.beta > 0
    peft = frozen = None
    if cfg.trainer.lora.enabled:
        # Every rank must draw the same initial adapters (they are sharded or replicated from
        # each rank's own copy), so the draw ignores the per-rank seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.trainer.seed)
            peft = apply_lora(model, cfg.trainer.lora, lora_targets(model, cfg.model.lora_target_modules), model_dir)
    elif needs_reference:
        # Full fine-tuning keeps a frozen copy of the initial policy as the KL reference.
        frozen = copy.deepcopy(model).requires_grad_(False)
    strategy, scheduler = build_strategy(model, cfg, optim=cfg.optim, total_steps=cfg.trainer.total_steps)
    assert scheduler is not None
    mbs = cfg.trainer.micro_batch_size
    policy = Policy(strategy, micro_batch_size=mbs, peft=peft)
    reference: Reference | None = None
    if needs_reference and peft is not None:
        reference = AdapterOff(policy)
    elif frozen is not None:
        reference = FrozenCopy(Policy(build_strategy(frozen, cfg, optim=None)[0], micro_batch_size=mbs))
    return policy, reference, scheduler


def prepare_task(cfg: TaskConfig, run_dir: Path, world: World, answer_field: str | None = None) -> TaskData:
    """Load the task's parquet rows, generating them first for synthetic tasks; with
    ``answer_field``, every training row must hold a reference answer there."""
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
    train = load_task_rows(train_files, cfg.rewards, answer_field, on_bad_rows=cfg.on_bad_rows)
    val = load_task_rows(val_files, cfg.rewards, on_bad_rows=cfg.on_bad_rows) if val_files else []
    return TaskData(train_rows=train, val_rows=val, tokenizer=tokenizer)


def load_task_rows(
    files: list[str], rewards: list[RewardSpec], answer_field: str | None = None, on_bad_rows: str = "error"
) -> list[dict[str, Any]]:
    """Every row of ``files``, checked at load for the fields the task's rewards read (and the
    reference answer at ``answer_field``); bad rows are all reported with file, row and field, and
    stop the run (``on_bad_rows="error"``) or are dropped and counted (``"skip"``)."""
    rows = load_rows(files, required_fields(rewards), checks=[partial(check_row, rewards)], on_bad_rows=on_bad_rows)
    if answer_field is not None:
        check_reference_answers(rows, answer_field, ", ".join(files))
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
        raise DiffrlConfigError("set model.path to a checkpoint folder, or model.init_config to build a fresh model")
    if task.tokenizer is None:
        raise DiffrlConfigError("a fresh model (model.path=null) needs a task that brings its tokenizer (task.synthetic)")
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
            raise DiffrlConfigError(
                f"{folder} holds a fresh model built from a different model.init_config ({', '.join(differs)}); "
                "use a new trainer.output_dir (or delete that folder) to start over"
            )
    elif world.is_main:
        save_pretrained(random_model(config, seed=cfg.init_seed), folder)
        tok.save_pretrained(folder)
    barrier()
    return folder

