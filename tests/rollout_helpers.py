"""Tiny checkpoints and prompts shared by the rollout tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from diffrl.models import DiffusionLM, load_pretrained
from diffrl.models.tiny import write_tiny_checkpoint
from diffrl.rollout import RolloutConfig

VOCAB = 512
# Test model name -> published folder under shared/hf.
SOURCES = {"llada": "LLaDA-8B-Instruct"}


def tiny_model(shared: Path, folder: Path, name: str, *, dtype: torch.dtype = torch.float64, std: float = 0.3, seed: int = 0) -> DiffusionLM:
    """A tiny random checkpoint of a published architecture (512-token vocabulary), written to
    ``folder`` and loaded back through the real loader. fp64 by default, so that two exact
    computations in a different order never pick different tokens; ``std`` large enough that the
    model has clear preferences (threshold rules then commit several tokens per step)."""
    path = folder / name
    if not (path / "config.json").exists():
        write_tiny_checkpoint(shared / "hf" / SOURCES[name], path, vocab_size=VOCAB, seed=seed, std=std)
    return load_pretrained(path, dtype=dtype).eval()


def with_logit_shift(model: DiffusionLM) -> DiffusionLM:
    """The same weights read with Dream's one-position logit shift (``facts.logit_shift = 1``),
    which exercises every place the engine handles a shifted family."""
    model.facts = replace(model.facts, logit_shift=1)
    return model


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


def config(**overrides) -> RolloutConfig:
    """A short rollout: 16 tokens in two blocks of 8, one token per step, no stop."""
    base = dict(max_completion_length=16, block_length=8, steps=16, temperature=0.0, stop_at_eos=False)
    return RolloutConfig(**{**base, **overrides})


@contextmanager
def forward_batch_sizes(model: DiffusionLM) -> Iterator[list[int]]:
    """Record the batch size of every forward the model runs inside the block."""
    sizes: list[int] = []
    hook = model.register_forward_hook(lambda _m, args, _out: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        hook.remove()
