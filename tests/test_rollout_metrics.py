"""Rollout metrics against plain definitions, and the record a rollout keeps through concatenation."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch

from diffrl.rollout import EditLog, Rollout
from diffrl.rollout.metrics import finalization_parallelism, kendall_tau, rollout_metrics, tokens_per_forward


def plain_tau_b(steps: list[int]) -> float:
    """Kendall's tau-b of (position, step) pairs, positions all distinct."""
    concordant = discordant = ties = 0
    for (i, a), (j, b) in combinations(enumerate(steps), 2):
        if a == b:
            ties += 1
        elif (a < b) == (i < j):
            concordant += 1
        else:
            discordant += 1
    pairs = len(steps) * (len(steps) - 1) / 2
    if len(steps) < 2 or ties == pairs:
        return math.nan
    return (concordant - discordant) / math.sqrt((pairs - ties) * pairs)


STEP_MAP = torch.tensor(
    [
        [0, 1, 2, 3, 4, 5],  # left to right
        [5, 4, 3, 2, 1, 0],  # right to left
        [0, 0, 1, 1, 2, -1],  # two per step, one fixed token
        [3, 0, 3, 1, 0, 2],  # out of order with ties
        [2, 2, 2, 2, 2, 2],  # all at once: undefined
        [1, 0, 4, 4, 4, 4],  # stops after 2 tokens (mask below)
    ]
)
MASK = torch.ones_like(STEP_MAP, dtype=torch.bool)
MASK[5, 2:] = False
NFE = torch.tensor([6, 6, 3, 4, 1, 5])


def test_kendall_tau_matches_the_plain_definition() -> None:
    got = kendall_tau(STEP_MAP, MASK)
    for b in range(len(STEP_MAP)):
        expected = plain_tau_b([s for s, m in zip(STEP_MAP[b].tolist(), MASK[b].tolist()) if m and s >= 0])
        assert (math.isnan(expected) and math.isnan(got[b])) or abs(got[b].item() - expected) < 1e-12, b
    assert got[0] == 1 and got[1] == -1 and math.isnan(got[4])


def test_parallelism_and_tokens_per_forward_count_decoded_tokens() -> None:
    afp = finalization_parallelism(STEP_MAP, MASK)
    for b in range(len(STEP_MAP)):
        steps = [s for s, m in zip(STEP_MAP[b].tolist(), MASK[b].tolist()) if m and s >= 0]
        assert afp[b].item() == pytest.approx(len(steps) / len(set(steps)))
    assert afp.tolist()[:5] == pytest.approx([1.0, 1.0, 5 / 3, 1.5, 6.0])
    assert tokens_per_forward(STEP_MAP, MASK, NFE).tolist() == pytest.approx([1.0, 1.0, 5 / 3, 1.5, 6.0, 2 / 5])


def test_rollout_metrics_and_concat_keep_the_whole_record() -> None:
    def part(rows: slice) -> Rollout:
        n = STEP_MAP[rows].shape[0]
        ids = torch.where(MASK[rows], 3, 9)  # 9 is the stop token
        return Rollout(
            prompt_ids=torch.zeros(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.bool),
            completion_ids=ids, step_map=STEP_MAP[rows], confidence=torch.ones(n, 6), logprob=torch.zeros(n, 6),
            fixed_mask=STEP_MAP[rows] < 0, nfe=NFE[rows], sample_ids=torch.arange(n), stop_token_ids=(9,),
            nfe_cache=torch.ones(n, dtype=torch.long),
            edits=EditLog(*(torch.tensor([0, 1]) for _ in range(5)), torch.tensor([0.5, 0.6])),
        )

    whole = Rollout.concat([part(slice(0, 3)), part(slice(3, 6))])
    assert torch.equal(whole.step_map, STEP_MAP) and torch.equal(whole.nfe, NFE)
    assert whole.edits is not None and whole.edits.row.tolist() == [0, 1, 3, 4]
    metrics = whole.metrics()
    tau = kendall_tau(STEP_MAP, whole.completion_mask)
    assert metrics["rollout/kendall_tau"] == tau.nanmean().item()
    assert metrics["rollout/nfe"] == NFE.float().mean().item() and metrics["rollout/nfe_cache"] == 1.0
    assert metrics["rollout/nfe_denoise"] == pytest.approx(metrics["rollout/nfe"] - 1.0)
    assert metrics["rollout/edits"] == pytest.approx(4 / 6)
    assert metrics == rollout_metrics(STEP_MAP, whole.completion_mask, NFE, torch.ones(6, dtype=torch.long), whole.truncated, num_edits=4)
