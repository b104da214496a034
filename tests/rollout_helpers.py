"""Tiny checkpoints and prompts shared by the rollout tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from diffrl.models import DiffusionLM
from diffrl.rollout import RolloutConfig

VOCAB = 512
BIDIRECTIONAL = ("llada", "dream")
BLOCK_CAUSAL = ("sdar", "sdar_moe", "llada2_moe")
# Every family's tiny checkpoint (``tiny_checkpoint(family)`` in conftest.py).
FAMILIES = BIDIRECTIONAL + BLOCK_CAUSAL
# The shared tiny checkpoints are drawn with std 0.1, which leaves every token near 1/512; a sharper
# LM head gives the clear preferences under which threshold rules commit several tokens per step.
HEAD_SCALE = 4.0


def family_model(tiny_checkpoint, family: str, *, dtype: torch.dtype = torch.float64) -> DiffusionLM:
    """A family's tiny checkpoint loaded through the real loader, LM head sharpened by ``HEAD_SCALE``.

    fp64 by default, so that two exact computations in a different order never pick different
    tokens; fp32 where a test compares logits at the 1e-4 tolerance of the published references.
    """
    model = tiny_checkpoint(family).load(dtype=dtype)
    expected = "block_causal" if family in BLOCK_CAUSAL else "bidirectional"
    assert model.facts.attention == expected, f"{family} loaded as {model.facts.attention}, the tests expect {expected}"
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_SCALE)
    return model


def block_causal(model: DiffusionLM) -> bool:
    return model.facts.attention == "block_causal"


def cache_kind(model: DiffusionLM) -> str:
    """The cache a family serves steps from: dual (bidirectional) or the block cache (block-causal)."""
    return "prefix" if block_causal(model) else "dual"


def left_padded_prompts(lengths: list[int], seed: int = 0, pad: int = VOCAB - 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths, left-padded to the longest."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = torch.randint(0, VOCAB - 8, (n,), generator=gen)
        mask[i, width - n :] = True
    return ids, mask


def config(model: DiffusionLM | None = None, **overrides) -> RolloutConfig:
    """A short rollout of 16 tokens, no stop: two blocks of 8 at one token per step, or, for a
    block-causal ``model``, blocks of its ``block_size`` with 16 steps split among them."""
    base = dict(max_completion_length=16, block_length=8, steps=16, temperature=0.0, stop_at_eos=False)
    if model is not None and block_causal(model):
        assert model.facts.block_size is not None
        base["block_length"] = model.facts.block_size
    return RolloutConfig(**{**base, **overrides})


def block_index(model: DiffusionLM, prompt_mask: torch.Tensor, cfg: RolloutConfig) -> torch.Tensor:
    """Block of every completion position [B, G]: block-causal grids start at each row's first real
    token (the first block holds the prompt's tail), bidirectional ones at the completion."""
    positions = torch.arange(cfg.max_completion_length)[None, :]
    offset = prompt_mask.long().sum(1, keepdim=True) if block_causal(model) else torch.zeros(prompt_mask.shape[0], 1, dtype=torch.long)
    return (offset + positions) // cfg.block_length - offset // cfg.block_length


@contextmanager
def forward_batch_sizes(model: DiffusionLM) -> Iterator[list[int]]:
    """Record the batch size of every forward the model runs inside the block."""
    sizes: list[int] = []
    hook = model.register_forward_hook(lambda _m, args, _out: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        hook.remove()
