"""The trained model under its strategy, and the KL reference, as the few typed calls the loop makes.

:class:`Policy` is the RL policy: the model wrapped by its :class:`~diffrl.trainer.strategy.Strategy`
(single, FSDP2, DeepSpeed ZeRO-2/3; LoRA adapters or full weights). Its methods say what each call
does: ``generate`` a rollout with the current weights, ``score`` a batch without grad,
``loss_and_backward`` on a micro-batch, ``step`` the optimizer. Each runs its model function
inside the strategy's root forward (:class:`~diffrl.trainer.parallelize.Root`), which is what lets
FSDP2 keep the root group (embeddings, LM head) gathered for a whole scoring pass and ZeRO-3
gather the LM head as an external parameter; that mechanism stays inside this module.

:class:`Reference` is what the KL term scores against: a frozen copy of the initial policy
(:class:`FrozenCopy`) or, for LoRA, the policy's own base with the adapters off
(:class:`AdapterOff`). Both answer ``score`` like the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import LikelihoodEstimator, TokenScores
from diffrl.algorithms.objective import Objective, score_in_micro_batches
from diffrl.models.base import DiffusionLM
from diffrl.rollout import Rollout, RolloutConfig, generate_chunked
from diffrl.trainer.checkpoint import load_checkpoint, save_checkpoint
from diffrl.trainer.strategy import Strategy, copy_weights, mix_weights


def _rollout(
    model: DiffusionLM, prompt_ids: Tensor, prompt_mask: Tensor, cfg: RolloutConfig, chunk: int | None, sample_ids: Tensor, fixed_tokens: Tensor | None
) -> Rollout:
    """The rollout engine on ``model`` in eval mode, the mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return generate_chunked(model, prompt_ids, prompt_mask, cfg, chunk=chunk, sample_ids=sample_ids, fixed_tokens=fixed_tokens)
    finally:
        model.train(was_training)


def _no_rollout(model: DiffusionLM) -> None:
    """A gathered call that generates nothing (see :meth:`Policy.keep_in_lockstep`)."""


class Policy:
    """The model under its strategy; ``peft`` is the PeftModel owning the adapters of a LoRA run."""

    def __init__(self, strategy: Strategy, *, micro_batch_size: int, peft: Any | None = None) -> None:
        self.strategy = strategy
        self.micro_batch_size = micro_batch_size
        self.peft = peft
        strategy.train(True)

    @property
    def model(self) -> DiffusionLM:
        return self.strategy.model

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.strategy.optimizer

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        cfg: RolloutConfig,
        *,
        sample_ids: Tensor,
        chunk: int | None = None,
        fixed_tokens: Tensor | None = None,
    ) -> Rollout:
        """:func:`~diffrl.rollout.engine.generate_chunked` with the current weights, in chunks of
        ``chunk`` samples. Collective under sharding: every rank calls it equally often, whatever
        its number of samples (see :meth:`Strategy.generate`)."""
        return self.strategy.generate(_rollout, prompt_ids, prompt_mask, cfg, chunk, sample_ids, fixed_tokens)

    def keep_in_lockstep(self) -> None:
        """Join the other ranks' weight gathering of a rollout without generating: a rank with
        nothing to regenerate in a repair round calls this while the others generate."""
        self.strategy.generate(_no_rollout)

    def score(self, estimator: LikelihoodEstimator, batch: PolicyBatch, seed: int) -> TokenScores:
        """``estimator``'s scores of ``batch`` under the current weights, without grad, in micro-batches."""
        with torch.no_grad():
            return self.strategy(score_in_micro_batches, estimator, batch, seed, self.micro_batch_size)

    def loss_and_backward(self, objective: Objective, batch: PolicyBatch, seed: int) -> dict[str, float]:
        """Backpropagate ``objective`` on one micro-batch (gradients accumulate until :meth:`step`);
        returns its metric terms as floats."""
        loss, terms = self.strategy(objective, batch, seed)
        self.strategy.backward(loss)
        return {name: value.item() for name, value in terms.items()}

    def step(self) -> float:
        """Finish the update: sum gradients over ranks, clip, step, zero. Returns the gradient norm."""
        return self.strategy.step()

    def train(self, mode: bool = True) -> None:
        self.strategy.train(mode)

    def state_dict(self, trainable_only: bool = False) -> dict[str, Tensor]:
        """The full (unsharded) weights under the model's own names on rank 0 (empty elsewhere).
        Collective."""
        return self.strategy.full_state_dict(trainable_only=trainable_only)

    def save_checkpoint(self, root: Path, step: int, trainer_state: dict[str, Any], meta: dict[str, Any], *, keep_last_n: int = 0) -> Path:
        """Write this policy's trainable weights and optimizer state as ``root/step_N``, keeping
        the newest ``keep_last_n`` checkpoints (0 = all; collective)."""
        return save_checkpoint(root, step, self.strategy, trainer_state, meta, keep_last_n=keep_last_n)

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore weights and optimizer state from a checkpoint; returns its trainer state."""
        return load_checkpoint(path, self.strategy)

    def close(self) -> None:
        """Release the backend (a DeepSpeed engine must go before the process group)."""
        self.strategy.close()


class Reference(Protocol):
    """The KL reference the loss compares the policy with."""

    def score(self, estimator: LikelihoodEstimator, batch: PolicyBatch, seed: int) -> TokenScores:
        """Scores of ``batch`` under the reference weights, without grad."""
        ...

    def anchor_to(self, policy: Policy) -> None:
        """Make the policy's current weights the anchor (RL after a warm start anchors there)."""
        ...

    def mix_towards(self, policy: Policy, alpha: float) -> None:
        """reference <- alpha x policy + (1 - alpha) x reference (TRL's ``sync_ref_model``)."""
        ...

    def close(self) -> None: ...


class FrozenCopy:
    """A frozen copy of the initial policy, run by the same strategy (full fine-tuning)."""

    def __init__(self, frozen: Policy) -> None:
        self.frozen = frozen

    def score(self, estimator: LikelihoodEstimator, batch: PolicyBatch, seed: int) -> TokenScores:
        return self.frozen.score(estimator, batch, seed)

    def anchor_to(self, policy: Policy) -> None:
        copy_weights(policy.strategy, self.frozen.strategy)

    def mix_towards(self, policy: Policy, alpha: float) -> None:
        mix_weights(policy.strategy, self.frozen.strategy, alpha)

    def close(self) -> None:
        self.frozen.close()


class AdapterOff:
    """A LoRA run's reference: the policy's own call with the adapters switched off (the base)."""

    def __init__(self, policy: Policy) -> None:
        assert policy.peft is not None, "AdapterOff needs a LoRA policy"
        self.policy = policy

    def score(self, estimator: LikelihoodEstimator, batch: PolicyBatch, seed: int) -> TokenScores:
        with self.policy.peft.disable_adapter():
            return self.policy.score(estimator, batch, seed)

    def anchor_to(self, policy: Policy) -> None:
        """Nothing to copy: a warm start trained the adapters, so the base stays the anchor."""

    def mix_towards(self, policy: Policy, alpha: float) -> None:
        """Nothing to mix: the reference is the frozen base (start-up warns about the setting)."""

    def close(self) -> None:
        """Nothing to release: the policy owns the weights."""
