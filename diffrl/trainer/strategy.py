"""The model as the chosen strategy runs it: what each backend does differently, behind the typed
calls of :class:`~diffrl.trainer.policy.Policy`.

``single`` is one process, or plain data parallel under torchrun (every rank holds the weights,
gradients are all-reduced); ``fsdp2`` shards weights, gradients and optimizer state with
``fully_shard``; ``deepspeed`` hands the root to a ZeRO-2/3 engine. In every case gradients are
*summed* over ranks, because the loss is normalised by global counts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffrl.models.base import DiffusionLM
from diffrl.trainer.config import Config, OptimConfig
from diffrl.trainer.distributed import sync_gradients
from diffrl.trainer.optim import build_optimizer
from diffrl.trainer.parallelize import Root, apply_deepspeed, deepspeed_config, parallelize

PREFIX = "model."


@dataclass
class Strategy:
    """``strategy(fn, *args)`` runs ``fn(model, *args)`` inside the root's forward; ``backward``,
    ``step`` and ``full_state_dict`` hide the one place each backend differs."""

    name: str
    root: Root
    optimizer: torch.optim.Optimizer | None = None
    max_grad_norm: float = 0.0
    engine: Any = None
    # ZeRO-3 only: the root's structure on the meta device, materialised for rollouts (``generate``).
    replica: Root | None = None
    # FSDP2 only: what the blocks go back to after a rollout.
    reshard_after_forward: bool = True

    @property
    def model(self) -> DiffusionLM:
        return self.root.model

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        out = (self.engine if self.engine is not None else self.root)(fn, *args)
        if self.name == "fsdp2" and not torch.is_grad_enabled():
            # FSDP2 keeps the root gathered after its forward for the backward that follows; a
            # no-grad call has no backward, so free it now.
            self.root.reshard()  # type: ignore[operator]
        return out

    def generate(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a no-grad ``fn(model, *args)`` whose number of forwards may differ between ranks,
        such as a rollout (each rank stops when its own samples finish), on the current full
        weights.

        Sharded weights are gathered by collectives that every rank must join equally often, so
        a rollout cannot gather per layer at each forward. FSDP2 gathers every block once before
        the rollout and frees them after (one all-gather per block per rollout; the full weights
        in ``param_dtype`` are held meanwhile). ZeRO-3 fills a full replica from the partitions
        one module at a time and frees it after. Unsharded strategies call the model as is.
        """
        with torch.no_grad():
            if self.name == "fsdp2":
                return self._generate_unsharded(fn, *args)
            if self.replica is not None:
                self.replica.to_empty(device=next(self.root.parameters()).device)
                try:
                    refresh_replica(self.root, self.replica)
                    return self.replica(fn, *args)
                finally:
                    self.replica.to("meta")  # frees it until the next rollout
            return self(fn, *args)

    def _generate_unsharded(self, fn: Callable[..., Any], *args: Any) -> Any:
        from torch.distributed.fsdp import FSDPModule

        blocks = [m for m in self.root.modules() if isinstance(m, FSDPModule) and m is not self.root]
        for module in [self.root, *blocks]:
            module.unshard()  # type: ignore[operator]
        for block in blocks:
            block.set_reshard_after_forward(False, recurse=False)
        try:
            return self(fn, *args)
        finally:
            for block in blocks:
                block.set_reshard_after_forward(self.reshard_after_forward, recurse=False)
                block.reshard()

    def train(self, mode: bool = True) -> None:
        self.root.train(mode)

    def backward(self, loss: Tensor) -> None:
        if self.engine is not None:
            # DeepSpeed averages gradients over ranks; scaling by the world size turns that into
            # the sum the globally normalised loss needs (exact for power-of-two world sizes).
            self.engine.backward(loss * self.engine.dp_world_size, scale_wrt_gas=False)
        else:
            loss.backward()

    def step(self) -> float:
        """Finish the update: sum gradients where the backend does not, clip to ``max_grad_norm``
        (0 = no clipping), step, zero. Returns the global gradient norm before clipping."""
        if self.engine is not None:
            self.engine.step()
            return float(self.engine.get_global_grad_norm())
        assert self.optimizer is not None, "a strategy without an optimizer cannot step"
        if self.name == "single":
            sync_gradients(self.model)
        norm = clip_grad_norm(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def full_state_dict(self, trainable_only: bool = False) -> dict[str, Tensor]:
        """The model's full (unsharded) tensors under the model's own names, on CPU, on rank 0
        (an empty dict elsewhere). Collective: every rank calls it."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        if self.name == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
            state = get_model_state_dict(self.root, options=options)
        elif self.engine is not None and self.engine.zero_optimization_stage() == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict() or {}
        else:
            state = self.root.state_dict() if rank == 0 else {}
        if trainable_only:
            keep = {n for n, p in self.root.named_parameters() if p.requires_grad}
            state = {k: v for k, v in state.items() if k in keep}
        return {k.removeprefix(PREFIX): v.detach().cpu() for k, v in state.items()} if rank == 0 else {}

    def close(self) -> None:
        """Release the DeepSpeed engine (needed before destroying the process group)."""
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None


def build_strategy(
    model: DiffusionLM, cfg: Config, *, optim: OptimConfig | None, total_steps: int = 1
) -> tuple[Strategy, torch.optim.lr_scheduler.LambdaLR | None]:
    """Parallelize ``model`` as ``cfg.trainer.strategy`` says and build its optimizer and schedule
    (``optim=None``: a frozen model that is only called, e.g. a KL reference)."""
    trainer = cfg.trainer
    root = parallelize(model, trainer.strategy, gradient_checkpointing=cfg.model.gradient_checkpointing, fsdp=trainer.fsdp)
    optimizer, scheduler = build_optimizer(root, optim, total_steps) if optim is not None else (None, None)
    max_grad_norm = optim.max_grad_norm if optim is not None else 0.0
    ds = trainer.deepspeed
    if trainer.strategy == "deepspeed" and (optim is not None or ds.stage == 3):
        config = deepspeed_config(
            stage=ds.stage, bf16=ds.bf16, micro_batch_size=trainer.micro_batch_size, max_grad_norm=max_grad_norm, extra=ds.config or {}
        )
        # ZeRO-3 rollouts run on a full replica (see Strategy.generate), shaped before partitioning.
        replica = copy.deepcopy(root).requires_grad_(False).to("meta") if ds.stage == 3 else None
        if replica is not None and ds.bf16:
            replica.to(torch.bfloat16)
        engine = apply_deepspeed(root, optimizer, config)
        return Strategy(trainer.strategy, root, optimizer, max_grad_norm, engine, replica=replica), scheduler
    if trainer.strategy == "deepspeed" and ds.bf16:
        # A frozen model under ZeRO-2 is a plain replica in the engine's compute dtype.
        root.to(torch.bfloat16)
    return Strategy(trainer.strategy, root, optimizer, max_grad_norm, reshard_after_forward=trainer.fsdp.reshard_after_forward), scheduler


def copy_weights(src: Strategy, dst: Strategy) -> None:
    """Overwrite ``dst``'s weights with ``src``'s, shard by shard (both built by the same
    strategy from copies of one model), e.g. the KL reference after a warm start."""
    with torch.no_grad():
        for target, source in zip(dst.root.parameters(), src.root.parameters(), strict=True):
            target.copy_(source)


def mix_weights(src: Strategy, dst: Strategy, alpha: float) -> None:
    """``dst`` <- alpha x ``src`` + (1 - alpha) x ``dst``, shard by shard (as :func:`copy_weights`)."""
    with torch.no_grad():
        for target, source in zip(dst.root.parameters(), src.root.parameters(), strict=True):
            target.mul_(1 - alpha).add_(source.to(target.dtype), alpha=alpha)


def refresh_replica(root: nn.Module, replica: nn.Module) -> None:
    """Copy ZeRO-3 partitioned weights (and buffers) into a full replica, gathering one module at
    a time (every rank gathers the same modules in the same order, so the collectives match)."""
    import deepspeed

    target = dict(replica.named_parameters())
    for name, module in root.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        with deepspeed.zero.GatheredParameters(list(params.values())):
            for pname, param in params.items():
                target[f"{name}.{pname}" if name else pname].copy_(param)
    # Buffers are never partitioned.
    buffers = dict(replica.named_buffers())
    for name, buffer in root.named_buffers():
        buffers[name].copy_(buffer)


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> float:
    """Global gradient norm over (possibly sharded, DTensor) gradients, clipping to ``max_norm``."""
    from torch.distributed.tensor import DTensor

    params = list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        # The norm of sharded gradients is a partial value on each rank; reduce it to the full one.
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)
