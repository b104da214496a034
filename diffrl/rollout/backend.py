"""The boundary an external generation engine would implement to serve rollouts.

The trainer and evaluation only need ``generate(...) -> Rollout``. :class:`InProcessBackend` is
the engine of this package running on the trainer's own module: it reads the parameters in place,
so after an optimizer step the next rollout samples with the new weights and no copy of the model
is made. Under FSDP2 that module is sharded per transformer block and each forward gathers one
block's parameters at a time, so rollout never holds a consolidated copy either. An external
engine (an SGLang or lmdeploy server for block-diffusion families, say) would instead receive the
gathered ``state_dict`` before each rollout and must return the same trajectory record.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from diffrl.models.base import DiffusionLM
from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.engine import generate
from diffrl.rollout.trajectory import Rollout


class RolloutBackend(Protocol):
    """Anything that turns left-padded prompts into a :class:`Rollout` under a recipe."""

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        cfg: RolloutConfig,
        *,
        sample_ids: Tensor | None = None,
        fixed_tokens: Tensor | None = None,
    ) -> Rollout: ...


class InProcessBackend:
    """This package's engine on a live module (the trainer's policy), sharing its parameters."""

    def __init__(self, model: DiffusionLM) -> None:
        self.model = model

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        cfg: RolloutConfig,
        *,
        sample_ids: Tensor | None = None,
        fixed_tokens: Tensor | None = None,
    ) -> Rollout:
        """Generate with the module's current weights (eval mode for the rollout, then restored)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return generate(self.model, prompt_ids, prompt_mask, cfg, sample_ids=sample_ids, fixed_tokens=fixed_tokens)
        finally:
            self.model.train(was_training)
