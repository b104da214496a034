"""Advantage rules, filters, hooks and losses of the new algorithms, against hand computations."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffrl.algorithms import build_algorithm
from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.estimators import TokenScores
from diffrl.algorithms.igpo import IGPOConfig, IGPOKnobs, entropy_filter, hint_tokens
from diffrl.algorithms.just_grpo import JustGRPOConfig
from diffrl.algorithms.lightning_rl import LightningKnobs, LightningRLConfig, decoupled_advantages, tpf_aware_keep
from diffrl.algorithms.losses import clipped_policy_loss
from diffrl.algorithms.registry import RolloutContext, algorithm_entry
from diffrl.rollout import RolloutConfig, generate
from tests.test_estimators import make_batch

ALGORITHMS = ("diffu_grpo", "coupled_grpo", "igpo", "gdpo", "lightning_rl", "just_grpo")


def outcome(correct: list[int], tpf: list[float], group_size: int, truncated: list[int] | None = None) -> Outcome:
    c = torch.tensor(correct, dtype=torch.bool)
    t = torch.zeros_like(c) if truncated is None else torch.tensor(truncated, dtype=torch.bool)
    return Outcome(c.float(), c, torch.tensor(tpf), t, torch.ones_like(c), group_size)


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("level", ["ragged", "uniform"])
def test_every_loss_at_ratio_one_is_the_plain_policy_gradient(name: str, level: str) -> None:
    """At equal policies (old = current = reference) the gradient of each algorithm's loss with
    respect to the per-token log-likelihoods is -A w: the KL term and the clip are inert."""
    cls, build = algorithm_entry(name)
    algo = build(replace(cls(), beta=0.04))
    torch.manual_seed(0)
    logp = (-torch.rand(4, 6, dtype=torch.float64) * 3).requires_grad_()
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0], dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    if level == "ragged":
        mask[1, 4:] = False
        mask[3, 2:] = False
    # Sequence-level ratios spread a row's gradient evenly over its tokens, so the plain gradient
    # is -A w with w even within each row (grpo-style weights); token-level ones take any weights.
    weights = (mask / mask.sum(1, keepdim=True) / 4).double() if level == "uniform" else mask * torch.rand(4, 6, dtype=torch.float64)
    loss, metrics = algo.loss(logp, logp.detach(), adv, weights, ref_logp=logp.detach())
    (grad,) = torch.autograd.grad(loss, logp)
    sequence_level = name in ("igpo", "gdpo")
    if sequence_level and level == "ragged":
        counted = mask.double()
        want = -adv[:, None] * weights.sum(1, keepdim=True) * counted / counted.sum(1, keepdim=True)
    else:
        want = -adv[:, None] * weights
    assert torch.allclose(grad, want, atol=1e-12)
    assert metrics["actor/pg_clipfrac"] == 0


def test_upper_clip_only_binds_for_positive_advantages() -> None:
    """LightningRL: [1 - eps, 1 + eps_high] for A >= 0, [1 - eps, 1 + eps] otherwise; with the
    standard surrogate the upper bound can only bind when A > 0, so eps_high is that rule."""
    old = torch.zeros(2, 1, dtype=torch.float64)
    w = torch.ones(2, 1, dtype=torch.float64)
    for ratio in (1.25, 1.35):
        logp = torch.full((2, 1), float(torch.log(torch.tensor(ratio))), dtype=torch.float64, requires_grad=True)
        loss, _ = clipped_policy_loss(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), w, epsilon=0.2, epsilon_high=0.3)
        (grad,) = torch.autograd.grad(loss, logp)
        # A > 0: clipped (zero gradient) only beyond 1.3; A < 0: never clipped above 1.
        assert (grad[0, 0] == 0) == (ratio > 1.3)
        assert grad[1, 0] == pytest.approx(ratio)


def test_lightning_advantages_match_a_hand_computed_group() -> None:
    knobs = LightningKnobs()
    o = outcome([1, 0, 1, 0, 0, 0, 0, 1], [2.0, 1.0, 4.0, 1.0, 1.0, 3.0, 2.0, 2.0], group_size=4)
    got = decoupled_advantages(o, knobs)

    def z(xs: list[float]) -> list[float]:
        m = sum(xs) / len(xs)
        s = (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5
        return [(x - m) / s if s else 0.0 for x in xs]

    summed = [a + t for a, t in zip(z([1, 0, 1, 0]) + z([0, 0, 0, 1]), z([2, 1, 4, 1]) + z([1, 3, 2, 2]))]
    assert torch.allclose(got, torch.tensor(z(summed)), atol=1e-6)
    # A completion cut at the length limit counts as wrong.
    cut = outcome([1, 0, 1, 0], [2.0, 1.0, 4.0, 1.0], group_size=4, truncated=[1, 0, 0, 0])
    assert not torch.allclose(decoupled_advantages(cut, knobs), decoupled_advantages(outcome([1, 0, 1, 0], [2.0, 1.0, 4.0, 1.0], 4), knobs))


def test_decoupled_normalisation_ignores_tpf_scale_where_sum_then_normalise_does_not() -> None:
    knobs = LightningKnobs()
    o = outcome([1, 0, 1, 0, 0, 1, 1, 1], [2.0, 1.0, 4.0, 1.5, 1.0, 3.0, 2.0, 2.5], group_size=4)
    scaled = replace(o, tpf=o.tpf * 7)
    assert torch.allclose(decoupled_advantages(o, knobs), decoupled_advantages(scaled, knobs), atol=1e-6)

    def sum_then_normalise(x: Outcome) -> torch.Tensor:
        r = (x.correct.float() + x.tpf).view(-1, 4)
        return ((r - r.mean(1, keepdim=True)) / r.std(1, unbiased=False, keepdim=True)).reshape(-1)

    assert not torch.allclose(sum_then_normalise(o), sum_then_normalise(scaled), atol=1e-3)


def test_tpf_aware_filter_drops_all_wrong_and_flat_tpf_groups_and_keeps_all_correct() -> None:
    knobs = LightningKnobs(filter_tpf_threshold=0.5)
    # groups: all wrong | TPF range 0.2 | all correct with TPF spread | mixed with spread
    o = outcome([0, 0, 1, 0, 1, 1, 1, 0], [1.0, 3.0, 2.0, 2.2, 1.0, 2.0, 1.0, 4.0], group_size=2)
    assert tpf_aware_keep(o, knobs).tolist() == [False, False, False, False, True, True, True, True]
    # Dropped samples do not enter the batch statistics and get advantage 0.
    kept = replace(o, keep=tpf_aware_keep(o, knobs))
    adv = decoupled_advantages(kept, knobs)
    assert (adv[:4] == 0).all() and abs(adv[4:].mean().item()) < 1e-6


def test_lightning_nll_term_covers_only_correct_finished_samples() -> None:
    algo = build_algorithm(LightningRLConfig())
    assert algo.nll is not None and algo.nll.coef == 0.1
    o = outcome([1, 0, 1, 1], [1.0] * 4, group_size=4, truncated=[0, 0, 0, 1])
    assert algo.nll.samples(o).tolist() == [True, False, True, False]
    assert not algo.nll.samples(outcome([0, 0, 0, 0], [1.0] * 4, 4)).any()
    assert build_algorithm(LightningRLConfig(lightning_rl=LightningKnobs(nll_loss_weight=0.0))).nll is None


def test_just_grpo_keeps_only_groups_with_signal_and_scales_by_kept_samples() -> None:
    algo = build_algorithm(JustGRPOConfig(num_generations=2))
    o = Outcome.of_rewards(torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0]), 2)
    keep = algo.keep(o)
    assert keep.tolist() == [True, True, False, False, True, True]
    adv = algo.advantage(replace(o, keep=keep))
    assert (adv[2:4] == 0).all() and (adv[keep] != 0).all()


def test_hints_reveal_trace_chunks_in_order_and_leave_the_tail_free() -> None:
    knobs = IGPOKnobs(min_chunk_size=2, max_chunk_size=3, free_tail=6)
    trace = list(range(100, 130))
    for seed in range(20):
        fixed = hint_tokens(trace, 48, ratio=0.5, knobs=knobs, gen=torch.Generator().manual_seed(seed))
        placed = fixed[fixed >= 0].tolist()
        assert placed and (fixed[-6:] == -1).all()
        # Revealed tokens are trace tokens in trace order.
        assert placed == sorted(placed) and set(placed) <= set(trace)
    # Every chunk revealed (ratio 1) with room to spare: the whole trace, apart from a short tail.
    full = hint_tokens(trace, 80, ratio=1.0, knobs=knobs, gen=torch.Generator().manual_seed(0))
    assert len(full[full >= 0]) >= len(trace) - 1


def test_entropy_filter_keeps_generated_tokens_and_the_highest_entropy_hints() -> None:
    mask = torch.ones(2, 10, dtype=torch.bool)
    fixed = torch.zeros(2, 10, dtype=torch.bool)
    fixed[0, :7] = True
    entropy = torch.arange(20, dtype=torch.float32).view(2, 10).flip(1)
    scores = TokenScores(logp=torch.zeros(2, 10), mask=mask, entropy=entropy)
    batch = make_batch_like(fixed)
    keep = entropy_filter(scores, batch, ratio=0.3)
    # Row 0: 7 hints -> max(1, floor(2.1)) = 2 kept, the two with the highest entropy (positions 0, 1).
    assert keep[0].tolist() == [True, True] + [False] * 5 + [True] * 3
    assert keep[1].all()
    assert entropy_filter(scores, batch, ratio=0.01)[0, :7].sum() == 1


def make_batch_like(fixed: torch.Tensor):
    from diffrl.algorithms import PolicyBatch

    n, length = fixed.shape
    ids = torch.zeros(n, length, dtype=torch.long)
    return PolicyBatch(ids, torch.ones_like(fixed), ids, torch.ones_like(fixed), torch.arange(n), ids, fixed, ids.float())


def igpo_context(model, prompts: torch.Tensor, cfg: RolloutConfig, trace: list[int], calls: list) -> RolloutContext:
    """A real repair context: regeneration through the rollout engine with the hints fixed; a
    sample is correct when its completion contains the trace's first token."""

    def regenerate(index: torch.Tensor, fixed: torch.Tensor):
        calls.append(index.tolist())
        return generate(model, prompts[index], torch.ones_like(prompts[index], dtype=torch.bool), replace(cfg, seed=99), sample_ids=index, fixed_tokens=fixed)

    return RolloutContext(
        regenerate=regenerate,
        correct=lambda new, index: (new.completion_ids == trace[0]).any(1),
        reference_text=lambda i: "trace",
        tokenize=lambda text: trace,
        seed=5,
    )


def test_igpo_is_inert_unless_a_whole_group_fails_and_then_injects_the_trace(tiny_llada) -> None:
    knobs = IGPOKnobs(min_chunk_size=2, max_chunk_size=3, free_tail=2, max_replacements=2, inpaint_ratio_low=1.0, inpaint_ratio_high=1.0)
    algo = build_algorithm(IGPOConfig(num_generations=4, igpo=knobs))
    cfg = RolloutConfig(max_completion_length=16, block_length=16, steps=16, temperature=1.0, stop_at_eos=False)
    prompts = torch.randint(0, 400, (2, 5)).repeat_interleave(4, 0)
    rollout = generate(tiny_llada, prompts, torch.ones_like(prompts, dtype=torch.bool), cfg)
    trace = list(range(200, 212))
    calls: list = []
    ctx = igpo_context(tiny_llada, prompts, cfg, trace, calls)
    # One correct sample in each group: nothing regenerated, nothing replaced.
    some = Outcome.of_rewards(torch.tensor([0.0, 1, 0, 0, 0, 0, 0, 1]), 4)
    same, replaced = algo.repair(rollout, some, ctx)
    assert same is rollout and replaced.numel() == 0 and not calls
    # Group 0 all wrong: only its rows are regenerated; correct inpainted samples replace at most
    # max_replacements of its first slots; group 1 is untouched.
    fail = Outcome.of_rewards(torch.tensor([0.0, 0, 0, 0, 0, 1, 0, 0]), 4)
    repaired, replaced = algo.repair(rollout, fail, ctx)
    assert calls == [[0, 1, 2, 3]]
    assert replaced.tolist() == [0, 1]
    assert torch.equal(repaired.completion_ids[2:], rollout.completion_ids[2:])
    for row in replaced.tolist():
        hints = repaired.fixed_mask[row]
        assert hints.any() and not hints[-knobs.free_tail :].any()
        # The hint positions hold the trace, and the sample is correct.
        assert set(repaired.completion_ids[row][hints].tolist()) <= set(trace)
        assert (repaired.completion_ids[row] == trace[0]).any()


def test_is_correct_reads_the_named_reward_or_the_total_and_names_a_wrong_reward() -> None:
    from diffrl.algorithms.correctness import is_correct
    from diffrl.rewards.registry import RewardBatch

    scored = RewardBatch(
        total=torch.tensor([0.0, 0.5, 2.5, 1.0]),
        per_reward={"math": torch.tensor([0.0, 0.0, 1.0, 1.0]), "format": torch.tensor([0.0, 1.0, 1.0, 0.0])},
        reasons={}, errors=0,
    )
    # Training's default: a positive total (a format-only sample counts; set correctness_reward).
    assert is_correct(scored).tolist() == [False, True, True, True]
    assert is_correct(scored, "math").tolist() == [False, False, True, True]
    # Evaluation's: the named reward at least the threshold.
    assert is_correct(scored, "format", 1.0).tolist() == [False, True, True, False]
    assert is_correct(scored, None, 1.0).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="'code' is not one of this task's rewards: math, format"):
        is_correct(scored, "code")
