"""An opt-in record of each denoising step's prediction (``rollout.record_predictions``).

At a sample's step t it keeps x̂0_t, the completion as the canvas held it before the step with
every masked position of the step's block replaced by the model's prediction there, which of
those positions were masked (so the canvas x_t = x̂0_t with them masked again) and the
prediction's probability. MDPO rewards each x̂0_t and trains each x̂0_t given x_t.
"""

from __future__ import annotations

import torch
from torch import Tensor


class PredictionRecord:
    """Per-step records [B, slots, Lc]; a slot a sample never reached keeps tokens -1, nothing
    predicted and confidence 0."""

    def __init__(self, bsz: int, slots: int, length: int, device: torch.device) -> None:
        self.tokens = torch.full((bsz, slots, length), -1, dtype=torch.long, device=device)
        self.predicted = torch.zeros(bsz, slots, length, dtype=torch.bool, device=device)
        self.confidence = torch.zeros(bsz, slots, length, device=device)

    def record(self, rows: Tensor, slot: Tensor, completion: Tensor, comp: Tensor, masked: Tensor, token: Tensor, prob: Tensor) -> None:
        """Step ``slot`` [n] of ``rows`` [n]: their ``completion`` [n, Lc] before the step, with the
        ``masked`` [n, block] positions ``comp`` [n, block] set to ``token`` / ``prob`` [n, block]."""
        x0 = completion.clone()
        predicted = torch.zeros_like(x0, dtype=torch.bool)
        confidence = torch.zeros(x0.shape, device=x0.device)
        r, c = masked.nonzero(as_tuple=True)
        x0[r, comp[r, c]] = token[r, c]
        predicted[r, comp[r, c]] = True
        confidence[r, comp[r, c]] = prob[r, c].float()
        self.tokens[rows, slot] = x0
        self.predicted[rows, slot] = predicted
        self.confidence[rows, slot] = confidence

    def fields(self) -> dict[str, Tensor]:
        """The rollout fields of the record."""
        return {"step_tokens": self.tokens, "step_predicted": self.predicted, "step_confidence": self.confidence}
