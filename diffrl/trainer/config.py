"""The typed schema of a run; every recipe composes into it and unknown keys are rejected."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from diffrl.algorithms.registry import AlgorithmConfig, algorithm_config_class, build_algorithm, registered_algorithms
from diffrl.errors import DiffrlConfigError
from diffrl.kernels.dispatch import BACKENDS
from diffrl.models.config import FactOverrides
from diffrl.rewards.registry import RewardSpec
from diffrl.rollout.config import RolloutConfig
from diffrl.trainer.guards import check_algorithm


@dataclass
class ModelConfig:
    # Published-layout checkpoint folder (config.json + safetensors); null builds a fresh model.
    path: str | None = None
    # config.json fields of a fresh random model (needs model_type); vocab size and special ids
    # are filled in from the task's tokenizer.
    init_config: dict[str, Any] | None = None
    # Parameter dtype: auto (the checkpoint's), float32, bfloat16.
    dtype: str = "auto"
    # Corrections to the checkpoint's token facts (null = read from config/tokenizer files).
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    # Extra stop tokens (text or id), e.g. the chat template's end-of-turn token.
    stop_tokens: list[Any] = field(default_factory=list)
    # Block size of block-causal families (null = from config.json).
    block_size: int | None = None
    # Recompute each block's activations in backward to save memory.
    gradient_checkpointing: bool = False
    # Seed of a fresh model's random weights.
    init_seed: int = 0
    # LoRA target modules: leaf names (ff_out) or dotted suffixes (self_attn.q_proj) of linear
    # layers inside the transformer blocks (null = the family's ``lora_target_modules``, else
    # every linear layer in the blocks; never the LM head).
    lora_target_modules: list[str] | None = None

    def overrides(self) -> FactOverrides:
        return FactOverrides(
            mask_token_id=self.mask_token_id,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
            stop_tokens=list(self.stop_tokens),
            block_size=self.block_size,
        )


@dataclass
class TaskConfig:
    # Name used in metric keys and run names.
    name: str = "task"
    # verl-format parquet files to train on.
    train_files: list[str] = field(default_factory=list)
    # Held-out parquet files.
    val_files: list[str] = field(default_factory=list)
    # Generate the data instead: {name: sort_digits, ...its options}.
    synthetic: dict[str, Any] | None = None
    # Leading system message (null = none).
    system_prompt: str | None = None
    # Text prepended to the last user message (d1's format instructions).
    prompt_prefix: str = ""
    # Prompts longer than this keep their last tokens.
    max_prompt_length: int = 256
    # What to do with rows that fail validation: error (stop, listing them) or skip (drop them
    # and log how many).
    on_bad_rows: str = "error"
    # Drop training prompts longer than max_prompt_length tokens after the chat template (verl's
    # data.filter_overlong_prompts) instead of keeping their last tokens.
    filter_overlong_prompts: bool = False
    # Rewards and their weights: [{name, weight, kwargs}], or your own function:
    # [{fn: my_pkg.my_module:my_reward (or path/to/file.py:my_reward), weight, kwargs, pooled, bounds}].
    rewards: list[RewardSpec] = field(default_factory=list)
    # Run the code reward even where the sandbox cannot keep its verdict out of the sample's reach.
    allow_unsafe_code: bool = False
    # Dotted field holding a reference response, for supervised warm starts.
    sft_response_field: str = "extra_info.answer"


@dataclass
class OptimConfig:
    # AdamW learning rate.
    lr: float = 1e-6
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    # Gradient clipping by global norm (0 = off).
    max_grad_norm: float = 1.0
    # Linear warmup steps.
    warmup_steps: int = 0
    # constant, cosine or linear decay after warmup.
    lr_schedule: str = "constant"
    # Final learning rate as a fraction of lr for cosine/linear.
    min_lr_ratio: float = 0.0
    # Fresh AdamW state and schedule at every RL step, the schedule then counting the optimizer
    # steps within the rollout (LightningRL relaunches its trainer, with warmup, every step).
    reset_each_step: bool = False


@dataclass
class WarmStartConfig:
    # Supervised masked-diffusion steps on task.sft_response_field before RL (0 = none).
    steps: int = 0
    lr: float = 1e-4
    # Examples per warm-start step.
    batch_size: int = 64


@dataclass
class FSDPConfig:
    # Dtype the blocks compute in (gathered weights); null = the parameters' own dtype.
    # bfloat16 on GPU with float32 parameters gives fp32 master weights and optimizer state.
    param_dtype: str | None = None
    # Dtype gradients are reduced in across ranks (null = param_dtype).
    reduce_dtype: str | None = "float32"
    # Free each block's gathered weights after its forward: less memory, one more all-gather per
    # block in backward and in every rollout step.
    reshard_after_forward: bool = True


@dataclass
class DeepSpeedConfig:
    # ZeRO stage: 2 (optimizer state and gradients sharded) or 3 (parameters too).
    stage: int = 2
    # bf16 weights and compute with fp32 master weights in the optimizer (GPU).
    bf16: bool = False
    # Raw DeepSpeed config merged over ours, e.g. {zero_optimization: {offload_optimizer: {device: cpu}}}.
    config: dict[str, Any] | None = None


@dataclass
class LoraConfig:
    # Train low-rank adapters (peft) instead of every weight; the KL reference is the base model
    # with the adapter disabled.
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "diffrl"
    # Run name (null = the output folder's name).
    name: str | None = None
    # auto (online when WANDB_API_KEY is set, else offline), online, offline or disabled.
    mode: str = "auto"


@dataclass
class TrainerConfig:
    # Run folder: checkpoints, metrics.jsonl, W&B files, plots, final model.
    output_dir: str = "runs/default"
    # rl (rollout -> reward -> policy update) or sft (masked-diffusion cross-entropy on
    # task.sft_response_field); both run the same loop.
    mode: str = "rl"
    # single (no sharding: one process, or replicated weights under torchrun), fsdp2 or deepspeed.
    strategy: str = "single"
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Training steps (one rollout batch, or one SFT batch, each).
    total_steps: int = 100
    # Prompts per step over all ranks; each gets algorithm.num_generations samples (sft: examples).
    batch_size: int = 8
    # Samples per forward/backward pass.
    micro_batch_size: int = 16
    # Prompts (over all ranks) per optimizer step within a rollout (verl's name; null = the whole
    # batch, one step per epoch). Global prompt p trains in mini-batch p mod (batch_size / this).
    ppo_mini_batch_size: int | None = None
    # Passes over the rollout, each over every mini-batch with old log-probs fixed (verl's name;
    # null = algorithm.num_iterations, TRL's name for the same count).
    ppo_epochs: int | None = None
    # Samples per generate call (null = all of a rank's samples at once).
    rollout_batch_size: int | None = None
    seed: int = 0
    # auto (cuda if available), cpu, cuda.
    device: str = "auto"
    # Kernel backend: auto (Triton on CUDA tensors when triton imports, else the exact PyTorch
    # fallbacks), torch, or triton.
    kernels: str = "auto"
    # Checkpoint every N steps (0 = only at the end).
    save_every: int = 0
    # Keep only the newest N complete checkpoints (0 = keep every one).
    keep_last_n: int = 0
    # auto (latest complete checkpoint in output_dir), never, or a checkpoint path.
    resume: str = "auto"
    # Print a progress bar with reward, step time and ETA.
    progress_bar: bool = True
    # Log a W&B table of a few prompts, completions and rewards every N steps (0 = never).
    log_samples_every: int = 10
    # How many samples that table shows (rank 0's first ones).
    log_samples_count: int = 4
    # Write a PNG of the reward curve into the run folder at the end.
    plot: bool = True
    # Validate every N steps on the first val_size rows of task.val_files, logged as
    # val/<task>/acc, val/<task>/tpf, ... (0 = never; see diffrl/trainer/validate.py).
    val_every: int = 0
    val_size: int = 64
    wandb: WandbConfig = field(default_factory=WandbConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    algorithm: Any = field(default_factory=dict)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def to_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Validate a composed recipe against the schema and return typed objects.

    ``algorithm`` is checked against the config class registered for ``algorithm.name``, so its
    own knobs are typed too.
    """
    container = OmegaConf.to_container(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, resolve=True)
    raw = {k: container[k] for k in ("model", "task", "algorithm", "rollout", "optim", "trainer") if k in container}  # type: ignore[index]
    algo_raw = raw.get("algorithm") or {}
    name = algo_raw.get("name", AlgorithmConfig.name)
    algo_cls = algorithm_config_class(name)
    algorithm = typed(algo_cls, algo_raw, prefix="algorithm.", owner=f"algorithm={name}")
    config: Config = typed(Config, {k: v for k, v in raw.items() if k != "algorithm"})
    config.algorithm = algorithm
    check_trainer(config.trainer)
    check_task(config.task)
    # unmasking_grpo trains the unmasking policy with the dLLM frozen, outside the dLLM's RL step.
    if config.trainer.mode == "rl" and config.algorithm.name in registered_algorithms():
        check_algorithm(config, build_algorithm(config.algorithm))
    return config


def typed(schema: type, raw: dict[str, Any], *, prefix: str = "", owner: str | None = None) -> Any:
    """``raw`` merged into the dataclass ``schema``; an unknown key or a value of the wrong type
    raises :class:`DiffrlConfigError` naming the dotted key (``prefix`` + its path) and the fix."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))
    except OmegaConfBaseException as err:
        key = f"{prefix}{err.full_key}"
        if not isinstance(err, ConfigKeyError):
            raise DiffrlConfigError(f"{key}: {err.msg}; give it a value of the type the schema declares") from None
        known = [f.name for f in fields(err.object_type)] if is_dataclass(err.object_type) else []
        close = difflib.get_close_matches(str(err.key), known, n=1)
        parent = key.rpartition(".")[0]
        fix = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else f"known settings: {', '.join(known)}"
        where = owner or (err.object_type.__name__ if err.object_type else "the config")
        raise DiffrlConfigError(f"{key} is not a setting of {where}; remove it or fix its name ({fix})") from None


MODES = ("rl", "sft")
BAD_ROWS = ("error", "skip")
# Strategies that shard over a process group, which only a launcher (torchrun) sets up.
SHARDED = ("fsdp2", "deepspeed")
STRATEGIES = ("single", "fsdp2", "deepspeed")
DTYPES = ("float32", "bfloat16", "float16")


def check_trainer(cfg: TrainerConfig) -> None:
    """Reject trainer settings that cannot run, naming the field and the fix."""
    if cfg.mode not in MODES:
        raise DiffrlConfigError(f"trainer.mode={cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.strategy not in STRATEGIES:
        raise DiffrlConfigError(f"trainer.strategy={cfg.strategy!r} is not one of {', '.join(STRATEGIES)}")
    if cfg.kernels not in BACKENDS:
        raise DiffrlConfigError(f"trainer.kernels={cfg.kernels!r} is not one of {', '.join(BACKENDS)}")
    for name in ("param_dtype", "reduce_dtype"):
        value = getattr(cfg.fsdp, name)
        if value is not None and value not in DTYPES:
            raise DiffrlConfigError(f"trainer.fsdp.{name}={value!r} is not one of {', '.join(DTYPES)} or null")
    if cfg.deepspeed.stage not in (2, 3):
        raise DiffrlConfigError(f"trainer.deepspeed.stage={cfg.deepspeed.stage} is not supported; use 2 or 3")
    if cfg.val_every < 0:
        raise DiffrlConfigError(f"trainer.val_every={cfg.val_every} must be >= 0 (0 = no validation)")
    if cfg.val_every and cfg.val_size < 1:
        raise DiffrlConfigError(f"trainer.val_size={cfg.val_size} must be >= 1 when trainer.val_every is set; use val_every=0 to turn validation off")
    if cfg.lora.enabled and cfg.lora.r <= 0:
        raise DiffrlConfigError(f"trainer.lora.r={cfg.lora.r} must be positive")
    if cfg.keep_last_n < 0:
        raise DiffrlConfigError(f"trainer.keep_last_n={cfg.keep_last_n} must be >= 0 (0 keeps every checkpoint)")


def check_task(cfg: TaskConfig) -> None:
    """Reject task settings that cannot run, naming the field and the fix."""
    if cfg.on_bad_rows not in BAD_ROWS:
        raise DiffrlConfigError(f"task.on_bad_rows={cfg.on_bad_rows!r} is not one of {', '.join(BAD_ROWS)}")
    if cfg.max_prompt_length <= 0:
        raise DiffrlConfigError(f"task.max_prompt_length={cfg.max_prompt_length} must be positive (prompts keep their last max_prompt_length tokens)")


def check_launch(cfg: TrainerConfig) -> None:
    """A sharded strategy needs the process group a launcher sets up; say how to launch it."""
    if cfg.strategy in SHARDED and "RANK" not in os.environ:
        raise DiffrlConfigError(
            f"trainer.strategy={cfg.strategy} shards over several processes and needs a launcher: "
            f"run `torchrun --nproc_per_node <N> -m diffrl.train ...`, or use trainer=single for one process"
        )
