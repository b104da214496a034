"""CJ-GRPO's decoders (EOS Early Rejection, Ascending Step-Size) and MDPO's running-confidence
remasking: the rules by hand, then in the engine on a real tiny checkpoint."""

from __future__ import annotations

import torch

from diffrl.rollout.schedule import ascending_counts
from diffrl.rollout.trajectory_rules import block_progress, reject_eos, running_confidence_remask


def test_ascending_schedule_doubles_and_the_last_step_takes_the_rest() -> None:
    counts = ascending_counts(torch.tensor([128, 10, 3, 0]), 5)
    assert counts.tolist() == [[1, 2, 4, 8, 113], [1, 2, 4, 3, 0], [1, 2, 0, 0, 0], [0, 0, 0, 0, 0]]
    # gen_length 127 = 2^7 - 1 in 7 steps: 1, 2, ..., 64 (the reference's docstring example).
    assert ascending_counts(torch.tensor([127]), 7).tolist() == [[1, 2, 4, 8, 16, 32, 64]]


def test_eos_gamma_rises_with_the_step_fraction_or_the_committed_share() -> None:
    assert [block_progress(s, 5, ascending=False) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # Under 2^i steps the share committed after step i of 3 is 1/8, 3/8, 7/8.
    assert [block_progress(s, 3, ascending=True) for s in range(3)] == [1 / 8, 3 / 8, 7 / 8]
    assert block_progress(0, 1, ascending=False) == 1.0
    scores = torch.tensor([[0.9, 0.8, 0.7]], dtype=torch.float64)
    tokens = torch.tensor([[5, 2, 2]])
    assert torch.equal(reject_eos(scores, tokens, eos_id=2, gamma=0.5), torch.tensor([[0.9, 0.4, 0.35]], dtype=torch.float64))


def test_running_confidence_remasks_the_least_confident_written_tokens() -> None:
    running = torch.tensor([[0.9, 0.2, 0.5, 0.2, 0.0], [0.3, 0.1, 0.8, 0.6, 0.7]])
    written = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    remask = running_confidence_remask(running, written, torch.tensor([2, 1]))
    # Row 0: the two 0.2 tokens (position 4 was never written); row 1: the 0.1 token.
    assert remask.tolist() == [[False, True, False, True, False], [False, True, False, False, False]]
    assert not running_confidence_remask(running, written, torch.tensor([0, 0])).any()
