"""Parallelism composed around a plain model, in torchtitan's manner: small ``apply_*`` functions
on plain arguments, called in a fixed order by :func:`parallelize`. The model files know nothing
of any of it.

Every strategy wraps the model in one :class:`Root` and calls it as ``root(fn, *args)``, which runs
``fn(model, *args)`` inside a single forward. That is what lets a whole rollout or a whole scoring
pass read the LM head weight directly (the chunked vocabulary kernels take the weight, not the
module): FSDP2 keeps the root group (embeddings, final norm, LM head) gathered for the whole call,
and ZeRO-3 gathers the head as an external parameter of the root, in forward and again in backward.
Transformer blocks are gathered one at a time when they run ("gathered per layer").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from diffrl.models.base import DiffusionLM
from diffrl.models.checkpoint import resolve_dtype

class Root(nn.Module):
    """The module a strategy wraps: ``root(fn, *args)`` returns ``fn(model, *args)``.

    A function whose result needs a backward must return tensors in a tuple or dict (ZeRO-3
    re-gathers the root's weights from hooks on those outputs).
    """

    def __init__(self, model: DiffusionLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


def apply_ac(model: DiffusionLM) -> None:
    """Activation checkpointing per block, through the model's own ``run_block``: each block's
    activations are recomputed in backward instead of kept."""
    model.gradient_checkpointing = True


def apply_fsdp(
    root: Root,
    blocks: Iterable[nn.Module],
    *,
    param_dtype: torch.dtype | None,
    reduce_dtype: torch.dtype | None,
    reshard_after_forward: bool = True,
) -> None:
    """FSDP2: ``fully_shard`` every block, then the root (embeddings, final norm, LM head).

    Gradients are summed over ranks rather than averaged: the loop's losses are already normalised
    by global token and sequence counts, so a sum makes N ranks compute exactly the one-process
    gradient of the same global batch.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in blocks:
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # The root's inputs are whole batches, advantages and old log-probs; casting them to a low
    # param_dtype would lose precision the loss needs, so only the blocks cast their inputs.
    root_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    fully_shard(root, mp_policy=root_policy)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def deepspeed_config(
    *, stage: int, bf16: bool, micro_batch_size: int, max_grad_norm: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Our DeepSpeed config, with ``extra`` (``trainer.deepspeed.config``) merged over it.

    No ``optimizer`` block: our own torch AdamW is passed in (a DeepSpeed optimizer block would
    compile fused Adam kernels). Gradient accumulation is unmanaged: the loop calls ``backward``
    once per micro-batch and ``step`` once per update, whatever the number of micro-batches.
    """
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(config, extra)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_deepspeed(root: Root, optimizer: torch.optim.Optimizer | None, config: dict[str, Any]) -> Any:
    """Wrap the root in a DeepSpeed engine (ZeRO stage from ``config``); returns the engine.

    Call ``engine.destroy()`` before destroying the process group: without it ZeRO-3 runs abort at
    exit. On CPU the first use compiles DeepSpeed's shared-memory op (30-80 s) into torch's
    extension cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions/<python tag>``),
    which later runs reuse.
    """
    import deepspeed

    if config["zero_optimization"]["stage"] == 3:
        deepspeed.zero.register_external_parameter(root, root.model.lm_head.weight)
    engine, *_ = deepspeed.initialize(model=root, optimizer=optimizer, config=config, dist_init_required=False)
    return engine


def parallelize(model: DiffusionLM, strategy: str, *, gradient_checkpointing: bool, fsdp: Any) -> Root:
    """The model-side part of a strategy in torchtitan's order: activation checkpointing, then
    sharding (``fsdp``: the ``trainer.fsdp`` settings). DeepSpeed wraps the root later, once the
    optimizer exists (:func:`apply_deepspeed`)."""
    if gradient_checkpointing:
        apply_ac(model)
    root = Root(model)
    if strategy == "fsdp2":
        apply_fsdp(
            root,
            model.blocks(),
            param_dtype=_dtype(fsdp.param_dtype),
            reduce_dtype=_dtype(fsdp.reduce_dtype),
            reshard_after_forward=fsdp.reshard_after_forward,
        )
    return root


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else resolve_dtype(name, {})
