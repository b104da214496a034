"""What a rollout returns: completions plus the record of how each token was decided."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def completion_mask(completion_ids: Tensor, stop_token_ids: tuple[int, ...]) -> Tensor:
    """True up to and including each row's first stop token (every position when there is none)."""
    stops = torch.tensor(stop_token_ids, device=completion_ids.device)
    is_stop = torch.isin(completion_ids, stops)
    length = completion_ids.shape[1]
    first = torch.where(is_stop.any(1), is_stop.float().argmax(1), torch.full_like(is_stop[:, 0], length, dtype=torch.long))
    return torch.arange(length, device=completion_ids.device)[None, :] <= first[:, None]


@dataclass
class Rollout:
    """A batch of generated completions and their trajectories.

    ``step_map[b, i]`` is the 0-based decoding step of sample ``b`` that committed completion token
    ``i`` (-1: never decoded, i.e. a fixed/inpainted token or fill after the sample stopped);
    ``confidence`` is the model's probability of that token at that step and ``logprob`` its
    log-probability under the sampling distribution then.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    step_map: Tensor
    confidence: Tensor
    logprob: Tensor
    fixed_mask: Tensor
    nfe: Tensor
    sample_ids: Tensor
    stop_token_ids: tuple[int, ...]
    completion_mask: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.completion_mask = completion_mask(self.completion_ids, self.stop_token_ids)

    @property
    def truncated(self) -> Tensor:
        """Samples whose completion contains no stop token."""
        stops = torch.tensor(self.stop_token_ids, device=self.completion_ids.device)
        return ~torch.isin(self.completion_ids, stops).any(1)

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(1)

    @property
    def decoding_steps(self) -> Tensor:
        """Distinct decoding steps that committed a completion token, per sample."""
        steps = torch.where(self.completion_mask & (self.step_map >= 0), self.step_map, -1).sort(1).values
        new = torch.cat((steps[:, :1] >= 0, (steps[:, 1:] != steps[:, :-1]) & (steps[:, 1:] >= 0)), dim=1)
        return new.sum(1)

    @property
    def tokens_per_forward(self) -> Tensor:
        """TPF per sample: decoded completion tokens over the steps that decoded them."""
        decoded = (self.completion_mask & (self.step_map >= 0)).sum(1).float()
        return decoded / self.decoding_steps.clamp_min(1)

    def metrics(self) -> dict[str, float]:
        lengths = self.lengths.float()
        return {
            "response_length/mean": lengths.mean().item(),
            "response_length/max": lengths.max().item(),
            "response_length/min": lengths.min().item(),
            "response_length/clip_ratio": self.truncated.float().mean().item(),
            "rollout/nfe": self.nfe.float().mean().item(),
            "rollout/tpf": self.tokens_per_forward.mean().item(),
        }
