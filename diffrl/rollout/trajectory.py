"""What a rollout returns: completions plus the record of how each token was decided."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from diffrl.rollout import metrics


def completion_mask(completion_ids: Tensor, stop_token_ids: tuple[int, ...]) -> Tensor:
    """True up to and including each row's first stop token (every position when there is none)."""
    stops = torch.tensor(stop_token_ids, device=completion_ids.device)
    is_stop = torch.isin(completion_ids, stops)
    length = completion_ids.shape[1]
    first = torch.where(is_stop.any(1), is_stop.float().argmax(1), torch.full_like(is_stop[:, 0], length, dtype=torch.long))
    return torch.arange(length, device=completion_ids.device)[None, :] <= first[:, None]


@dataclass
class EditLog:
    """LLaDA2.1 edits, one entry per replaced token: batch row, completion position, the step that
    replaced it, the old and new token and the new token's confidence."""

    row: Tensor
    position: Tensor
    step: Tensor
    old_token: Tensor
    new_token: Tensor
    confidence: Tensor

    @classmethod
    def empty(cls, device: torch.device) -> "EditLog":
        long = torch.zeros(0, dtype=torch.long, device=device)
        return cls(long, long, long, long, long, torch.zeros(0, device=device))

    @classmethod
    def cat(cls, logs: list["EditLog"], row_offsets: list[int] | None = None) -> "EditLog":
        """Concatenate logs, shifting each one's rows by its offset (for concatenated batches)."""
        offsets = row_offsets or [0] * len(logs)
        parts = {f.name: torch.cat([getattr(log, f.name) for log in logs]) for f in fields(cls) if f.name != "row"}
        rows = torch.cat([log.row + off for log, off in zip(logs, offsets)])
        return cls(row=rows, **parts)


@dataclass
class Rollout:
    """A batch of generated completions and their trajectories.

    ``step_map[b, i]`` is the 0-based denoising step of sample ``b`` (its own count of the steps it
    took part in) that last wrote completion token ``i`` (-1: never decoded, i.e. a fixed/inpainted
    token or fill after the sample stopped); ``confidence`` is the token's score probability at
    that step and ``logprob`` its log-probability under the sampling distribution then. ``nfe``
    counts the forwards each sample took part in, ``nfe_cache`` those of them that (re)computed
    cached K/V (refreshes, block stores; each also decoded, so they are part of ``nfe``).
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
    nfe_cache: Tensor | None = None
    edits: EditLog | None = None
    completion_mask: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.completion_mask = completion_mask(self.completion_ids, self.stop_token_ids)
        if self.nfe_cache is None:
            self.nfe_cache = torch.zeros_like(self.nfe)
        if self.edits is None:
            self.edits = EditLog.empty(self.completion_ids.device)

    @property
    def truncated(self) -> Tensor:
        """Samples whose completion contains no stop token."""
        stops = torch.tensor(self.stop_token_ids, device=self.completion_ids.device)
        return ~torch.isin(self.completion_ids, stops).any(1)

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(1)

    @property
    def tokens_per_forward(self) -> Tensor:
        """TPF per sample: decoded completion tokens over the forwards the sample took part in."""
        return metrics.tokens_per_forward(self.step_map, self.completion_mask, self.nfe)

    def metrics(self) -> dict[str, float]:
        assert self.nfe_cache is not None and self.edits is not None
        return metrics.rollout_metrics(
            self.step_map, self.completion_mask, self.nfe, self.nfe_cache, self.truncated, num_edits=int(self.edits.row.numel())
        )

    @classmethod
    def concat(cls, parts: list["Rollout"]) -> "Rollout":
        """One rollout from several generated for the same recipe (prompts left-padded to one width)."""
        width = max(p.prompt_ids.shape[1] for p in parts)

        def left_pad(t: Tensor, value: int | bool) -> Tensor:
            return torch.cat((t.new_full((t.shape[0], width - t.shape[1]), value), t), dim=1)

        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + p.completion_ids.shape[0])
        names = ("completion_ids", "step_map", "confidence", "logprob", "fixed_mask", "nfe", "sample_ids", "nfe_cache")
        return cls(
            prompt_ids=torch.cat([left_pad(p.prompt_ids, int(p.prompt_ids[0, 0])) for p in parts]),
            prompt_mask=torch.cat([left_pad(p.prompt_mask, False) for p in parts]),
            stop_token_ids=parts[0].stop_token_ids,
            edits=EditLog.cat([p.edits for p in parts if p.edits is not None], offsets),
            **{k: torch.cat([getattr(p, k) for p in parts]) for k in names},
        )
