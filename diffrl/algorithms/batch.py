"""The tensors an algorithm trains on: one rollout's prompts, completions and their record."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from diffrl.rollout.trajectory import Rollout


@dataclass
class PolicyBatch:
    """Rows are samples (``num_generations`` consecutive rows per prompt).

    ``sample_ids`` key every random mask an estimator draws, so a row gets the same mask whether it
    is scored in the full batch or in a micro-batch, for the old, reference and current policy.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    sample_ids: Tensor
    step_map: Tensor
    fixed_mask: Tensor
    rollout_logprob: Tensor
    # The rollout's per-step predictions [B, S, Lc] (width 0 unless recorded; MDPO).
    step_tokens: Tensor = None  # type: ignore[assignment]
    step_predicted: Tensor = None  # type: ignore[assignment]
    step_confidence: Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        empty = self.completion_ids.new_zeros(self.completion_ids.shape[0], 0, self.completion_ids.shape[1])
        if self.step_tokens is None:
            self.step_tokens = empty
        if self.step_predicted is None:
            self.step_predicted = empty.bool()
        if self.step_confidence is None:
            self.step_confidence = empty.float()

    @classmethod
    def from_rollout(cls, rollout: Rollout) -> "PolicyBatch":
        return cls(
            prompt_ids=rollout.prompt_ids,
            prompt_mask=rollout.prompt_mask,
            completion_ids=rollout.completion_ids,
            completion_mask=rollout.completion_mask,
            sample_ids=rollout.sample_ids,
            step_map=rollout.step_map,
            fixed_mask=rollout.fixed_mask,
            rollout_logprob=rollout.logprob,
            step_tokens=rollout.step_tokens,
            step_predicted=rollout.step_predicted,
            step_confidence=rollout.step_confidence,
        )

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, index: Tensor | slice) -> "PolicyBatch":
        """Rows ``index`` of every field."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def split(self, micro_batch_size: int) -> list["PolicyBatch"]:
        return [self.select(slice(s, s + micro_batch_size)) for s in range(0, len(self), micro_batch_size)]

    @property
    def input_ids(self) -> Tensor:
        return torch.cat((self.prompt_ids, self.completion_ids), dim=1)

    @property
    def key_mask(self) -> Tensor:
        ones = torch.ones_like(self.completion_ids, dtype=torch.bool)
        return torch.cat((self.prompt_mask.bool(), ones), dim=1)
