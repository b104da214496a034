"""The KV-cache manager: what each forward computes, and where its keys and values come from.

Every forward runs a contiguous window of canvas columns ``[start, end)`` as queries. Its post-RoPE
K/V are written into a per-layer buffer ``[rows, kv_heads, canvas width, head_dim]`` at those
columns, and attention reads the buffer up to ``key_end``: columns outside the window hold what an
earlier forward wrote there. A cache plan (:data:`CachePlan`) decides the window per row:

* :class:`NoCache`: the whole canvas every step (block-causal: up to the last block being decoded).
* :class:`BidirectionalCache` (LLaDA, Dream): a full refresh forward when a row starts a block
  (and every ``cache_refresh_steps`` steps), then ``prefix``: the block and everything after it
  against the cached prefix, or ``dual``: the block alone against the cached prefix and suffix
  (Fast-dLLM). Approximate, because cached K/V go stale as tokens are committed.
* :class:`BlockCache` (SDAR, LLaDA2): the current block against the completed blocks. Exact,
  because a block-causal model's earlier blocks never see later ones. A completed block's clean
  K/V are stored by the next forward that includes it (the first step of the next block), so
  storing costs no extra forward.

Windows start ``facts.logit_shift`` columns early so that a shifted model's prediction for the
block's first column (read from the column before it) is in the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffrl.models.base import ModelFacts
from diffrl.rollout.canvas import Canvas
from diffrl.rollout.config import RolloutConfig


@dataclass
class Window:
    """One forward: query columns ``[start, end)``, keys ``[0, key_end)``.

    ``writes_cache`` [rows]: the forward (re)computes a row's cached K/V (a refresh, or the store of
    a completed block), counted apart in the NFE split. ``cached_before`` [rows] (block cache
    only): keys left of it hold valid cached K/V; other keys outside the window are hidden.
    """

    start: int
    end: int
    key_end: int
    writes_cache: Tensor
    cached_before: Tensor | None = None

    def visible(self, index: Tensor) -> Tensor | None:
        """Key columns rows ``index`` of the window may read [n, key_end], or None when every real
        key is valid."""
        if self.cached_before is None:
            return None
        cols = torch.arange(self.key_end, device=index.device)
        return (cols < self.cached_before[index, None]) | ((cols >= self.start) & (cols < self.end))[None, :]


class KVBuffer:
    """The ``KVCache`` the model's attention calls: writes the window, returns the keys to attend.

    ``bind`` says, before each forward, which buffer rows the forward's rows are (``read``) and
    which buffer rows its K/V go to (``write``, with ``expand`` mapping each written row to a
    forwarded one when identical rows were forwarded once). None means every buffer row in order,
    which avoids copies. ``traced=True`` (a compiled forward) binds every index as a tensor, rows
    and columns alike, so the forward's code takes one path whatever the window and one compiled
    graph serves every step (Python ints and None-or-tensor branches would each be a recompile).
    """

    def __init__(self, num_rows: int, width: int) -> None:
        self.num_rows, self.width = num_rows, width
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}
        self.read: Tensor | None = None
        self.write: Tensor | None = None
        self.expand: Tensor | None = None
        self.start = self.end = self.key_end = 0
        self.cols: Tensor | None = None
        self.keys: Tensor | None = None

    def bind(self, read: Tensor | None, write: Tensor | None, expand: Tensor | None, window: Window, traced: bool = False) -> None:
        self.read, self.write, self.expand = read, write, expand
        self.start, self.end, self.key_end = window.start, window.end, window.key_end
        self.cols = self.keys = None
        if traced:
            if read is None or write is None or expand is not None:
                raise ValueError("a traced forward binds its read and write rows as tensors and no expansion (the deduplicated first forward runs eagerly)")
            self.cols = torch.arange(window.start, window.end, device=read.device)
            self.keys = torch.arange(window.key_end, device=read.device)

    def _buffers(self, layer_idx: int, k: Tensor) -> tuple[Tensor, Tensor]:
        if layer_idx not in self.k:
            shape = (self.num_rows, k.shape[1], self.width, k.shape[3])
            self.k[layer_idx] = k.new_zeros(shape)
            self.v[layer_idx] = k.new_zeros(shape)
        return self.k[layer_idx], self.v[layer_idx]

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        buf_k, buf_v = self._buffers(layer_idx, k)
        if self.cols is not None:
            return self._traced_update(buf_k, buf_v, k, v)
        if self.expand is not None:
            k, v = k[self.expand], v[self.expand]
        cols = slice(self.start, self.end)
        if self.write is None:
            buf_k[:, :, cols], buf_v[:, :, cols] = k, v
        else:
            buf_k[self.write, :, cols], buf_v[self.write, :, cols] = k, v
        keys = slice(0, self.key_end)
        if self.read is None:
            return buf_k[:, :, keys], buf_v[:, :, keys]
        return buf_k[self.read, :, keys], buf_v[self.read, :, keys]

    def _traced_update(self, buf_k: Tensor, buf_v: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        assert self.read is not None and self.write is not None and self.cols is not None and self.keys is not None
        # Row and column index tensors around the head slice put [rows, cols] first: [n, L, H, D].
        buf_k[self.write[:, None], :, self.cols[None, :]] = k.transpose(1, 2)
        buf_v[self.write[:, None], :, self.cols[None, :]] = v.transpose(1, 2)
        read, keys = self.read[:, None], self.keys[None, :]
        return buf_k[read, :, keys].transpose(1, 2), buf_v[read, :, keys].transpose(1, 2)

    def keep(self, rows: Tensor) -> None:
        """Keep only buffer rows ``rows`` (samples that left the batch free their cache)."""
        for store in (self.k, self.v):
            for layer, t in store.items():
                store[layer] = t[rows]
        self.num_rows = int(rows.numel())


class NoCache:
    """Every forward runs the canvas from column 0; nothing is kept between forwards."""

    uses_buffer = False

    def __init__(self, facts: ModelFacts, width: int) -> None:
        self.block_causal = facts.attention == "block_causal"
        self.width = width

    def plan(self, rows: Tensor, lo: Tensor, block: int, rnd: int) -> list[tuple[Tensor, Window]]:
        # A block-causal block never sees later columns, so the canvas past it is not needed.
        end = int((lo + block).max()) if self.block_causal else self.width
        return [(torch.arange(rows.numel(), device=rows.device), Window(0, end, end, writes_cache=torch.zeros_like(rows, dtype=torch.bool)))]

    def advance(self, rows: Tensor, lo: Tensor, rnd: int) -> None:
        """Record that ``rows`` ran a forward in round ``rnd`` (nothing to track without a cache)."""


class BidirectionalCache:
    """Fast-dLLM's prefix or dual cache, refreshed per block (and every ``refresh_steps`` steps)."""

    uses_buffer = True

    def __init__(self, mode: str, refresh_steps: int, facts: ModelFacts, num_rows: int, width: int, grid_start: int, device: torch.device) -> None:
        self.mode, self.refresh_steps, self.shift, self.width = mode, refresh_steps, facts.logit_shift, width
        # Every row of a bidirectional batch decodes on one grid starting at this column, so the
        # windows are known on the host.
        self.grid_start = grid_start
        self.round = torch.full((num_rows,), -1, dtype=torch.long, device=device)
        self.count = torch.zeros(num_rows, dtype=torch.long, device=device)

    def plan(self, rows: Tensor, lo: Tensor, block: int, rnd: int) -> list[tuple[Tensor, Window]]:
        fresh_block = self.round[rows] != rnd
        periodic = (self.count[rows] % self.refresh_steps == 0) if self.refresh_steps else torch.zeros_like(fresh_block)
        refresh = fresh_block | periodic
        some, every = torch.stack((refresh.any(), refresh.all())).tolist()  # the plan's one sync
        lo_host = self.grid_start + rnd * block
        full = Window(0, self.width, self.width, writes_cache=torch.ones_like(rows, dtype=torch.bool))
        cached = Window(
            lo_host - self.shift, self.width if self.mode == "prefix" else lo_host + block, self.width,
            writes_cache=torch.zeros_like(rows, dtype=torch.bool),
        )
        whole = torch.arange(rows.numel(), device=rows.device)
        if every or not some:
            return [(whole, full if every else cached)]
        index, rest = refresh.nonzero().squeeze(1), (~refresh).nonzero().squeeze(1)
        return [
            (index, Window(full.start, full.end, full.key_end, writes_cache=full.writes_cache[index])),
            (rest, Window(cached.start, cached.end, cached.key_end, writes_cache=cached.writes_cache[rest])),
        ]

    def advance(self, rows: Tensor, lo: Tensor, rnd: int) -> None:
        """Count the forward each row of ``rows`` just ran in round ``rnd``."""
        new = self.round[rows] != rnd
        self.count[rows] = torch.where(new, 1, self.count[rows] + 1)
        self.round[rows] = rnd


class BlockCache:
    """The exact cache of completed blocks of a block-causal model."""

    uses_buffer = True

    def __init__(self, facts: ModelFacts, first_real: Tensor) -> None:
        self.shift = facts.logit_shift
        # Left padding is never read (the key mask hides it), so it counts as cached from the start:
        # a row whose prompt fits in its first block stores nothing with its first forward.
        self.cached_before = first_real.clone()

    def plan(self, rows: Tensor, lo: Tensor, block: int, rnd: int) -> list[tuple[Tensor, Window]]:
        cached = self.cached_before[rows]
        # One window from the earliest uncached column to the last block end: rows whose cache
        # reaches further recompute a few clean columns, which writes the same K/V again.
        first, last = torch.stack((cached.min(), (lo + block).max())).tolist()  # the plan's one sync
        start, end = max(0, first - self.shift), last
        window = Window(start, end, end, writes_cache=cached < lo, cached_before=cached)
        return [(torch.arange(rows.numel(), device=rows.device), window)]

    def advance(self, rows: Tensor, lo: Tensor, rnd: int) -> None:
        """Everything before each row's current block was in the window with its final tokens."""
        self.cached_before[rows] = lo


# What a rollout's runner asks for the windows of each step.
CachePlan = NoCache | BidirectionalCache | BlockCache


def make_cache(cfg: RolloutConfig, facts: ModelFacts, canvas: Canvas) -> CachePlan:
    """The cache plan of a rollout on ``canvas``, from the recipe and the model's attention kind."""
    num_rows, width, device = canvas.tokens.shape[0], canvas.width, canvas.tokens.device
    if cfg.kv_cache == "none":
        return NoCache(facts, width)
    if facts.attention == "block_causal":
        if cfg.kv_cache == "dual":
            raise ValueError(
                "rollout.kv_cache=dual keeps a stale suffix for bidirectional models; a block-causal model's "
                "blocks never see their suffix, so use rollout.kv_cache=prefix (the exact completed-block cache)"
            )
        return BlockCache(facts, first_real=(~canvas.key_mask[:, : canvas.prompt_width]).sum(1))
    return BidirectionalCache(cfg.kv_cache, cfg.cache_refresh_steps, facts, num_rows, width, canvas.prompt_width, device)
