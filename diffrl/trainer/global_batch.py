"""Advantages over the global batch: every rule sees every rank's samples.

A rule that normalises over the batch (``scale_rewards=batch``, LightningRL's batch z-score) must
use the statistics of the global batch, or N ranks would not take the one-process step. Each rank
gathers every rank's outcome (a few scalars per sample), applies the filter and the advantage rule
to all of it, and keeps its own rows.
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import Tensor

from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.registry import Algorithm
from diffrl.collectives import all_gather_rows, all_gather_varying
from diffrl.trainer.distributed import World


def gather_outcome(outcome: Outcome, device: torch.device) -> Outcome:
    """Every rank's outcome, concatenated in rank order."""
    tensors = {f.name: all_gather_varying(getattr(outcome, f.name), device) for f in fields(Outcome) if f.name != "group_size"}
    return Outcome(**tensors, group_size=outcome.group_size)


def global_advantages(algorithm: Algorithm, outcome: Outcome, world: World) -> tuple[Tensor, Tensor]:
    """(keep, advantages) of this rank's samples, computed by the algorithm's filter and advantage
    rule on the global batch."""
    counts = all_gather_rows(torch.tensor([outcome.rewards.shape[0]], device=world.device), world.device).tolist()
    start = sum(counts[: world.rank])
    mine = slice(start, start + counts[world.rank])
    everyone = gather_outcome(outcome, world.device)
    if algorithm.keep is not None:
        everyone.keep = algorithm.keep(everyone)
    return everyone.keep[mine], algorithm.advantage(everyone)[mine]
