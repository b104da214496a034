"""What a rollout returns: completions plus the record of how each token was decided.

:class:`Rollout` declares its per-sample fields once, in the dataclass field metadata, and every
row operation (``select``, ``concat``, ``replace_rows``, ``gather``) reads that declaration, so a
new per-sample field is carried everywhere by adding it in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from diffrl.rollout import metrics
from diffrl.collectives import all_gather_rows, all_gather_varying, current_rank

# Kinds of per-sample fields (``field(metadata={"rows": kind})``):
#   prompt    left-padded prompt columns (concatenation pads them to one width)
#   identity  what names the sample's slot (kept when IGPO's repair replaces the row's completion)
#   record    the completion and how it was generated (replaced by ``replace_rows``)
PROMPT, IDENTITY, RECORD = "prompt", "identity", "record"
# Records with a step or decision axis (x̂0 at every step, the unmasking policy's decisions): each
# [rows, steps, ...], tens of MB a step at recipe scale, and no run metric reads them.
STEP_RECORDS = ("step_tokens", "step_predicted", "step_confidence", "unmask_logprob", "unmask_features", "unmask_commits")


def _rows(kind: str, **kwargs: Any) -> Any:
    return field(metadata={"rows": kind}, **kwargs)


def first_stop(completion_ids: Tensor, stop_ids: Tensor) -> Tensor:
    """Position of each row's first stop token [B]; the completion length where there is none."""
    is_stop = torch.isin(completion_ids, stop_ids)
    none = torch.full_like(completion_ids[:, 0], completion_ids.shape[1], dtype=torch.long)
    return torch.where(is_stop.any(1), is_stop.float().argmax(1), none)


def completion_mask(completion_ids: Tensor, stop_token_ids: tuple[int, ...]) -> Tensor:
    """True up to and including each row's first stop token (every position when there is none)."""
    first = first_stop(completion_ids, torch.tensor(stop_token_ids, device=completion_ids.device))
    return torch.arange(completion_ids.shape[1], device=completion_ids.device)[None, :] <= first[:, None]


def decode_completions(completion_ids: Tensor, stop_token_ids: tuple[int, ...], tokenizer: Any) -> list[str]:
    """Each row's text up to and including its first stop token, special tokens dropped."""
    mask = completion_mask(completion_ids, stop_token_ids)
    ids = [row[keep].tolist() for row, keep in zip(completion_ids.cpu(), mask.cpu())]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def _row_index(index: Tensor | slice, num_rows: int, device: torch.device) -> Tensor:
    return torch.arange(num_rows, device=device)[index] if isinstance(index, slice) else index.to(device)


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

    def __len__(self) -> int:
        return int(self.row.numel())

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

    def entries(self, keep: Tensor) -> "EditLog":
        """The entries where ``keep`` [len(self)] is True, rows unchanged."""
        return EditLog(*(getattr(self, f.name)[keep] for f in fields(self)))

    def remap(self, rows: Tensor, num_rows: int, to: Tensor | None = None) -> "EditLog":
        """The entries of batch rows ``rows`` (of ``num_rows``), row ``rows[i]`` renumbered to
        ``to[i]`` (default ``i``, its place in ``rows``)."""
        device = self.row.device
        new_row = torch.full((num_rows,), -1, dtype=torch.long, device=device)
        new_row[rows.to(device)] = torch.arange(rows.numel(), device=device) if to is None else to.to(device)
        kept = self.entries(new_row[self.row] >= 0)
        return replace(kept, row=new_row[kept.row])


@dataclass
class Rollout:
    """A batch of generated completions and their trajectories.

    ``step_map[b, i]`` is the 0-based denoising step of sample ``b`` (its own count of the steps it
    took part in) that last wrote completion token ``i`` (-1: never decoded, i.e. a fixed/inpainted
    token or fill after the sample stopped); ``confidence`` is the token's score probability at
    that step and ``logprob`` its log-probability under the sampling distribution then. ``nfe``
    counts the forwards each sample took part in, ``nfe_cache`` those of them that (re)computed
    cached K/V (refreshes, block stores; each also decoded, so they are part of ``nfe``).

    With a learned unmasking rule, ``unmask_logprob[b, s]`` is the log-probability of sample
    ``b``'s commit decision at its step ``s`` (0 after its last step), ``unmask_features[b, s]``
    the policy's input then [block, F] and ``unmask_commits[b, s]`` what it committed [block], so
    the decisions can be rescored by an updated policy; without one they have width 0.

    With ``rollout.record_predictions``, ``step_tokens[b, s]`` is x̂0 at sample ``b``'s step ``s``
    (the completion before the step, its block's masked positions replaced by the prediction; -1
    after the sample's last step), ``step_predicted[b, s]`` those positions and
    ``step_confidence[b, s]`` the prediction's probability there (see
    :mod:`~diffrl.rollout.prediction_record`); without it they have width 0.
    """

    prompt_ids: Tensor = _rows(PROMPT)
    prompt_mask: Tensor = _rows(PROMPT)
    completion_ids: Tensor = _rows(RECORD)
    step_map: Tensor = _rows(RECORD)
    confidence: Tensor = _rows(RECORD)
    logprob: Tensor = _rows(RECORD)
    fixed_mask: Tensor = _rows(RECORD)
    nfe: Tensor = _rows(RECORD)
    sample_ids: Tensor = _rows(IDENTITY)
    stop_token_ids: tuple[int, ...]
    nfe_cache: Tensor = _rows(RECORD, default=None)
    unmask_logprob: Tensor = _rows(RECORD, default=None)
    unmask_features: Tensor = _rows(RECORD, default=None)
    unmask_commits: Tensor = _rows(RECORD, default=None)
    step_tokens: Tensor = _rows(RECORD, default=None)
    step_predicted: Tensor = _rows(RECORD, default=None)
    step_confidence: Tensor = _rows(RECORD, default=None)
    # Row-indexed, not one entry per row: every row operation renumbers it.
    edits: EditLog = None  # type: ignore[assignment]
    completion_mask: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.completion_mask = completion_mask(self.completion_ids, self.stop_token_ids)
        if self.nfe_cache is None:
            self.nfe_cache = torch.zeros_like(self.nfe)
        rows, device = len(self), self.completion_ids.device
        if self.unmask_logprob is None:
            self.unmask_logprob = torch.zeros(rows, 0, device=device)
        if self.unmask_features is None:
            self.unmask_features = torch.zeros(rows, 0, 0, 0, device=device)
        if self.unmask_commits is None:
            self.unmask_commits = torch.zeros(rows, 0, 0, dtype=torch.bool, device=device)
        length = self.completion_ids.shape[1]
        if self.step_tokens is None:
            self.step_tokens = torch.zeros(rows, 0, length, dtype=torch.long, device=device)
        if self.step_predicted is None:
            self.step_predicted = torch.zeros(rows, 0, length, dtype=torch.bool, device=device)
        if self.step_confidence is None:
            self.step_confidence = torch.zeros(rows, 0, length, device=device)
        if self.edits is None:
            self.edits = EditLog.empty(self.completion_ids.device)

    @classmethod
    def per_sample_fields(cls, *kinds: str) -> tuple[str, ...]:
        """Names of the per-sample fields of the given kinds (all kinds when none is given)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("rows") in (kinds or (PROMPT, IDENTITY, RECORD)))

    def __len__(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def truncated(self) -> Tensor:
        """Samples whose completion contains no stop token."""
        stops = torch.tensor(self.stop_token_ids, device=self.completion_ids.device)
        return first_stop(self.completion_ids, stops) == self.completion_ids.shape[1]

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(1)

    @property
    def tokens_per_forward(self) -> Tensor:
        """TPF per sample: decoded completion tokens over the forwards the sample took part in."""
        return metrics.tokens_per_forward(self.step_map, self.completion_mask, self.nfe)

    def decode(self, tokenizer: Any) -> list[str]:
        """Completion text up to and including the first stop token, special tokens dropped."""
        return decode_completions(self.completion_ids, self.stop_token_ids, tokenizer)

    def metrics(self) -> dict[str, float]:
        return metrics.rollout_metrics(self.step_map, self.completion_mask, self.nfe, self.nfe_cache, self.truncated, num_edits=len(self.edits))

    def global_metrics(self, device: torch.device) -> dict[str, float]:
        """:meth:`metrics` over every rank's samples, gathering only what they read (the
        :data:`STEP_RECORDS` stay on their rank). Collective: every rank calls it."""
        return replace(self, **{name: getattr(self, name)[:, :0] for name in STEP_RECORDS}).gather(device).metrics()

    def select(self, index: Tensor | slice) -> "Rollout":
        """Rows ``index`` (in that order), with their edits."""
        rows = _row_index(index, len(self), self.completion_ids.device)
        return replace(self, **{name: getattr(self, name)[rows] for name in self.per_sample_fields()}, edits=self.edits.remap(rows, len(self)))

    @classmethod
    def concat(cls, parts: list["Rollout"]) -> "Rollout":
        """One rollout from several generated for the same recipe (prompts left-padded to one width)."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.prompt_ids.shape[1] for p in parts)

        def left_pad(t: Tensor, value: int | bool) -> Tensor:
            return torch.cat((t.new_full((t.shape[0], width - t.shape[1]), value), t), dim=1)

        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + len(p))
        names = cls.per_sample_fields(IDENTITY, RECORD)
        return cls(
            prompt_ids=torch.cat([left_pad(p.prompt_ids, int(p.prompt_ids[0, 0])) for p in parts]),
            prompt_mask=torch.cat([left_pad(p.prompt_mask, False) for p in parts]),
            stop_token_ids=parts[0].stop_token_ids,
            edits=EditLog.cat([p.edits for p in parts], offsets),
            **{k: torch.cat([getattr(p, k) for p in parts]) for k in names},
        )

    def replace_rows(self, dest: Tensor, new: "Rollout", source: Tensor) -> "Rollout":
        """This rollout with the completions of rows ``dest`` (and how they were generated, edits
        included) taken from ``new``'s rows ``source``; each row keeps its prompt and sample id,
        which keys its estimator masks (IGPO's group repair)."""
        patched = {}
        for name in self.per_sample_fields(RECORD):
            values = getattr(self, name).clone()
            values[dest] = getattr(new, name)[source]
            patched[name] = values
        replaced = torch.zeros(len(self), dtype=torch.bool, device=self.edits.row.device)
        replaced[dest.to(replaced.device)] = True
        kept = self.edits.entries(~replaced[self.edits.row])
        return replace(self, **patched, edits=EditLog.cat([kept, new.edits.remap(source, len(new), to=dest)]))

    def gather(self, device: torch.device) -> "Rollout":
        """Every rank's completions, their records and edits in rank order, for global metrics
        (prompts left out: each rank pads them to its own width). Collective: every rank calls it."""
        gathered = {k: all_gather_rows(getattr(self, k), device) for k in self.per_sample_fields(IDENTITY, RECORD)}
        none = gathered["completion_ids"][:, :0]
        # Each rank numbers its rows from 0 and every rank holds ``len(self)`` rows.
        local = replace(self.edits, row=self.edits.row + current_rank() * len(self))
        edits = EditLog(*(all_gather_varying(getattr(local, f.name).to(device), device) for f in fields(EditLog)))
        return Rollout(prompt_ids=none, prompt_mask=none.bool(), stop_token_ids=self.stop_token_ids, edits=edits, **gathered)
