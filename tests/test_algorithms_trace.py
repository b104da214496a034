"""TraceRL and CJ-GRPO: the decode-trace replay, their advantage rules and losses, against hand
computations and plain forwards on real tiny checkpoints."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.cj_grpo import step_mean_loss
from diffrl.algorithms.replay import TraceReplay, completion_blocks, decode_rounds, round_rows, round_shares
from diffrl.algorithms.trace_rl import TraceRLKnobs, accuracy_band, trace_advantages
from diffrl.rollout import RolloutConfig, generate
from tests.test_algorithms_estimators import plain_logp, with_mask
from tests.test_estimators import make_batch


def test_rounds_rank_steps_per_sample_per_block_and_merge_by_shrink() -> None:
    steps = torch.tensor([[0, 0, 1, 2, 3, 3, -1, 5], [4, 3, 2, 1, 0, 0, 1, 2]])
    assert decode_rounds(steps, 1).tolist() == [[0, 0, 1, 2, 3, 3, -1, 4], [4, 3, 2, 1, 0, 0, 1, 2]]
    # shrink 2 merges steps (0, 1), (2, 3), (5) of the first sample into rounds 0, 1, 2.
    assert decode_rounds(steps, 2).tolist() == [[0, 0, 0, 1, 1, 1, -1, 2], [2, 1, 1, 0, 0, 0, 0, 1]]
    # Two blocks of 4: each block ranks its own steps from 0.
    block = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]] * 2)
    assert decode_rounds(steps, 1, block).tolist() == [[0, 0, 1, 2, 0, 0, -1, 1], [3, 2, 1, 0, 0, 0, 1, 2]]
    with pytest.raises(ValueError, match="shrink"):
        decode_rounds(steps, 0)


def test_round_rows_mask_every_later_token_and_partition_the_targets(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=3, glen=8)
    steps = torch.tensor([[0, 0, 1, 2, 3, 3, 4, 4], [4, 3, 2, 1, 0, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7]])
    fixed = torch.zeros_like(batch.fixed_mask)
    steps[2, 3], fixed[2, 3] = -1, True  # an inpainted hint: clean in every row, never a target
    batch = replace(batch, step_map=steps, fixed_mask=fixed)
    rounds = decode_rounds(steps, 1)
    samples, masked, targets = round_rows(batch, rounds)
    for b in range(3):
        rows = samples == b
        # The targets of a sample's rows are disjoint and cover its decoded completion tokens.
        assert torch.equal(targets[rows].sum(0), ((rounds[b] >= 0) & batch.completion_mask[b]).long())
        for r, (m, t) in enumerate(zip(masked[rows], targets[rows])):
            step = rounds[b][t][0]
            assert torch.equal(m, rounds[b] >= step) and torch.equal(t, (rounds[b] == step) & batch.completion_mask[b])
    # Sample 1 stops at position 5: rounds whose only targets lie past it make no row.
    assert int((samples == 1).sum()) == int(rounds[1][:5].unique().numel())


@pytest.mark.parametrize("family", ("llada", "sdar"))
def test_trace_replay_equals_one_plain_forward_per_round(tiny_checkpoint, family: str) -> None:
    model = tiny_checkpoint(family).load()
    batch = make_batch(model, n=2, glen=8)
    gen = torch.Generator().manual_seed(1)
    steps = torch.stack([torch.randperm(8, generator=gen) // 2 for _ in range(2)])
    batch = replace(batch, step_map=steps)
    got = TraceReplay(rows_per_forward=3)(model, batch, seed=0)
    rounds = decode_rounds(steps, 1, completion_blocks(model, batch))
    want = torch.zeros_like(got.logp)
    for b in range(2):
        for r in range(int(rounds[b].max()) + 1):
            masked = rounds >= r
            lp = plain_logp(model, with_mask(model, batch, masked), batch)
            want[b] = torch.where(rounds[b] == r, lp[b], want[b])
    m = got.mask
    assert torch.equal(m, batch.completion_mask)
    assert torch.allclose(got.logp[m], want[m], atol=1e-4) and (got.logp[~m] == 0).all()


def test_trace_replay_of_a_real_rollout_has_one_row_per_decode_step(tiny_llada) -> None:
    cfg = RolloutConfig(max_completion_length=8, block_length=8, steps=4, temperature=1.0, stop_at_eos=False, seed=3)
    prompts = torch.randint(0, 500, (2, 5), generator=torch.Generator().manual_seed(0))
    from diffrl.algorithms import PolicyBatch

    batch = PolicyBatch.from_rollout(generate(tiny_llada, prompts, torch.ones_like(prompts, dtype=torch.bool), cfg))
    samples, _, _ = round_rows(batch, decode_rounds(batch.step_map, 1))
    assert samples.tolist() == [0] * 4 + [1] * 4
    samples, _, _ = round_rows(batch, decode_rounds(batch.step_map, 2))
    assert samples.tolist() == [0] * 2 + [1] * 2


def outcome(rewards: list[float], correct: list[int], group_size: int) -> Outcome:
    r = torch.tensor(rewards)
    c = torch.tensor(correct, dtype=torch.bool)
    return Outcome(r, c, torch.ones_like(r), torch.zeros_like(c), torch.ones_like(c), group_size)


def test_trace_advantage_is_the_population_z_score_and_the_band_drops_easy_and_hard_groups() -> None:
    o = outcome([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0], [1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0], 4)
    adv = trace_advantages(o)
    # Group 0: mean 0.5, population std 0.5; group 1 and 3 flat; group 2: mean 1/4, std sqrt(3)/4.
    s3 = 3**0.5
    assert torch.allclose(adv, torch.tensor([1, -1, -1, 1, 0, 0, 0, 0, -1 / s3, -1 / s3, -1 / s3, s3, 0, 0, 0, 0]), atol=1e-6)
    # Accuracy 0.5 and 0.25 lie in [0.2, 0.8]; 1.0 and 0.0 do not.
    keep = accuracy_band(o, TraceRLKnobs())
    assert keep.view(4, 4).all(1).tolist() == [True, False, True, False] and keep.view(4, 4).any(1).tolist() == [True, False, True, False]


def test_step_shares_average_tokens_within_a_step_then_steps() -> None:
    rounds = torch.tensor([[0, 1, 1, 1, 2, -1], [0, 0, 0, 0, 0, 0]])
    scored = rounds >= 0
    shares = round_shares(rounds, scored)
    # Sample 0: 3 steps holding 1, 3, 1 tokens; sample 1: one step of 6 tokens.
    assert torch.allclose(shares[0], torch.tensor([1 / 3, 1 / 9, 1 / 9, 1 / 9, 1 / 3, 0]))
    assert torch.allclose(shares[1], torch.full((6,), 1 / 6))


def test_cj_grpo_loss_is_the_mean_over_steps_of_step_token_means() -> None:
    torch.manual_seed(0)
    rounds = torch.tensor([[0, 1, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1]])
    shares = round_shares(rounds, rounds >= 0).double()
    logp = (-torch.rand(2, 6, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(2, 6, dtype=torch.float64)
    adv = torch.tensor([1.5, -0.7], dtype=torch.float64)
    weights = torch.full((2, 6), 1 / 12, dtype=torch.float64)  # grpo: each row sums to 1/2
    loss, _ = step_mean_loss(torch.stack((logp, shares), -1), torch.stack((old, shares), -1), adv, weights, epsilon=0.5, epsilon_high=None, beta=0.0)
    want = 0.0
    for b in range(2):
        rho = torch.exp(logp[b] - old[b])
        per_token = -torch.minimum(rho * adv[b], rho.clamp(0.5, 1.5) * adv[b])
        steps = rounds[b].unique()
        want = want + sum(per_token[rounds[b] == s].mean() for s in steps) / len(steps) / 2
    assert torch.allclose(loss, want, atol=1e-12)
    g1, g2 = torch.autograd.grad(loss, logp)[0], torch.autograd.grad(want, logp)[0]
    assert torch.allclose(g1, g2, atol=1e-12)


def test_replaying_algorithms_refuse_decoders_that_rewrite_committed_tokens() -> None:
    from diffrl.algorithms import build_algorithm
    from diffrl.algorithms.cj_grpo import CJGRPOConfig
    from diffrl.algorithms.trace_rl import TraceRLConfig

    for cfg in (TraceRLConfig(), CJGRPOConfig()):
        hook = build_algorithm(cfg).rollout_config
        assert hook is not None and hook(RolloutConfig()) == RolloutConfig()
        with pytest.raises(ValueError, match="running_confidence"):
            hook(RolloutConfig(running_confidence=True))
        with pytest.raises(ValueError, match="editing_threshold"):
            hook(RolloutConfig(editing_threshold=0.9))
