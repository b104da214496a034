"""Runs the model on the windows the KV cache plans and returns the current blocks' hidden states.

The model sees only token ids, a 4-D keep-mask built by the model's own ``build_mask`` (so family
masks live in one place), explicit position ids and the cache. Hidden states are returned for the
block columns only; logits are computed later and only for the rows that need a decision.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffrl.models.base import DiffusionLM
from diffrl.rollout.cache import CachePlan, KVBuffer, Window
from diffrl.rollout.canvas import Canvas
from diffrl.rollout.compiled import compiled_forward


def unique_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Index of one representative per distinct row of ``x`` and each row's representative slot."""
    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), x.shape[0], dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(x.shape[0], device=x.device), reduce="amin")
    return first, inverse


class Runner:
    """Packs windows of the canvas into forwards and keeps the per-sample forward counts."""

    def __init__(self, model: DiffusionLM, canvas: Canvas, cache: CachePlan, num_rows: int, cfg_scale: float = 0.0, compile: bool = False) -> None:
        self.model, self.canvas, self.cache, self.cfg_scale = model, canvas, cache, cfg_scale
        self.compiled = compiled_forward(model) if compile else None
        # With no padding anywhere, a bidirectional forward attends to every key, which SDPA does
        # fastest with no mask at all (the published loops pass none); one sync per rollout.
        self.full_attention = model.facts.attention == "bidirectional" and bool(canvas.key_mask.all())
        device = canvas.tokens.device
        self.buffer = KVBuffer(num_rows, canvas.width) if cache.uses_buffer else None
        # Buffer row of each batch row (-1 once the row has left).
        self.slot = torch.arange(num_rows, device=device)
        self.nfe = torch.zeros(num_rows, dtype=torch.long, device=device)
        self.nfe_cache = torch.zeros(num_rows, dtype=torch.long, device=device)
        self.forwards = 0

    def block_hidden(self, rows: Tensor, lo: Tensor, block: int, rnd: int) -> Tensor:
        """Hidden states [len(rows), block, H] at each row's block columns ``lo + arange(block)``."""
        groups = self.cache.plan(rows, lo, block, rnd)
        out: Tensor | None = None
        for index, window in groups:
            # One window for every row (the usual case): no regrouping, no index bookkeeping.
            single = len(groups) == 1
            hidden = self._forward(rows if single else rows[index], window)
            cols = ((lo if single else lo[index]) - window.start)[:, None] + torch.arange(block, device=lo.device)
            picked = hidden.gather(1, cols[:, :, None].expand(-1, -1, hidden.shape[-1]))
            if single:
                out, counted = picked, slice(None) if rows.numel() == self.nfe.numel() else rows
            else:
                out = picked.new_empty(rows.numel(), block, picked.shape[-1]) if out is None else out
                out[index], counted = picked, rows[index]
            self.nfe[counted] += 1
            self.nfe_cache[counted] += window.writes_cache.long()
        self.cache.advance(rows, lo, rnd)
        assert out is not None, "block_hidden needs at least one row"
        return out

    def _forward(self, rows: Tensor, window: Window) -> Tensor:
        """Hidden states [len(rows), end - start, H] of the window's columns."""
        c, start, end = self.canvas, window.start, window.end
        local = torch.arange(rows.numel(), device=rows.device)
        expand = None
        if self.forwards == 0:
            # The first forward of a rollout sees prompts and masks only: samples of one prompt
            # (num_generations) are identical there, so each prompt is run once and expanded.
            local, expand = unique_rows(torch.cat((c.tokens[rows, :end], c.key_mask[rows, :end].long()), dim=1))
        self.forwards += 1
        # Every row of the canvas, in order: read the canvas without gathering rows.
        fwd = slice(None) if expand is None and rows.numel() == c.tokens.shape[0] else rows[local]
        # A deduplicated forward writes the cache through ``expand``, which the traced binding
        # leaves out: that one forward per rollout runs eagerly.
        traced = self.compiled is not None and (self.buffer is None or expand is None)
        model = self.compiled if traced else self.model
        # Slices of the canvas differ in strides and offsets from step to step; a compiled forward
        # guards on them, so it gets contiguous copies (a few ids per row).
        view = (lambda t: t.clone(memory_format=torch.contiguous_format)) if traced else (lambda t: t)
        if self.buffer is None:
            tokens, key_mask = view(c.tokens[fwd, :end]), None if self.full_attention else view(c.key_mask[fwd, :end])
            hidden = model(tokens, key_mask)
            if self.cfg_scale > 0:
                hidden = self._guided(model, hidden, tokens, key_mask)
        else:
            mask = None if self.full_attention else self._window_mask(fwd, local, window)
            if traced:
                read, write = self.slot[rows] if isinstance(fwd, slice) else self.slot[fwd], self.slot[rows]
            else:
                # Deduplicated rows come in the order of their values, not sorted: their slots are looked up.
                read = self._slots(rows) if isinstance(fwd, slice) else self._slots(fwd) if expand is None else self.slot[fwd]
                write = self._slots(rows)
            self.buffer.bind(read=read, write=write, expand=expand, window=window, traced=traced)
            hidden = model(view(c.tokens[fwd, start:end]), mask, position_ids=view(c.positions[fwd, start:end]), cache=self.buffer)
        return hidden if expand is None else hidden[expand]

    def _window_mask(self, fwd: Tensor | slice, local: Tensor, window: Window) -> Tensor:
        """The keep-mask [rows, 1, end - start, key_end] of the window's queries over its keys."""
        q_cols = torch.arange(window.start, window.end, device=local.device)
        mask = self.model.build_mask(self.canvas.key_mask[fwd, : window.key_end], window.end - window.start, q_cols)
        visible = window.visible(local)
        return mask if visible is None else mask & visible[:, None, None, :]

    def _guided(self, model: Callable[..., Tensor], hidden: Tensor, tokens: Tensor, key_mask: Tensor) -> Tensor:
        """d1's guidance, h_un + (cfg_scale + 1)(h - h_un), with h_un from the prompt all M: the
        LM head is linear (no bias is read), so this guides the logits."""
        blank = tokens.clone()
        blank[:, : self.canvas.prompt_width] = self.model.facts.mask_token_id
        unconditional = model(blank, key_mask)
        return unconditional + (self.cfg_scale + 1) * (hidden - unconditional)

    def _slots(self, rows: Tensor) -> Tensor | None:
        """Buffer rows of sorted batch rows ``rows``; None when that is every buffer row in order."""
        assert self.buffer is not None
        # ``rows`` are sorted active rows and the buffer holds the active rows in order, so as many
        # rows as buffer rows means all of them (no need to compare on the device).
        if rows.numel() == self.buffer.num_rows:
            return None
        return self.slot[rows]

    def drop_inactive(self, active: Tensor) -> None:
        """Free the cache rows of batch rows that are no longer ``active`` [B] (and still hold one)."""
        if self.buffer is None:
            return
        gone = (self.slot >= 0) & ~active
        if gone.any():
            self.drop(gone.nonzero().squeeze(1))

    def drop(self, rows: Tensor) -> None:
        """Batch rows ``rows`` left the rollout: free their cache rows."""
        if self.buffer is None or rows.numel() == 0:
            return
        keep = self.slot >= 0
        keep[rows] = False
        kept = keep.nonzero().squeeze(1)
        self.buffer.keep(self.slot[kept])
        self.slot[rows] = -1
        self.slot[kept] = torch.arange(kept.numel(), device=kept.device)
