"""MDPO: the engine's per-step prediction record against plain forwards, the step advantages,
the choice of training steps, the lambda_t weights and the loss against hand computations."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.mdpo import MaskedPredictions, MDPOKnobs, mdpo_loss, mdpo_step_advantages, reached_predictions, step_advantages, step_weights, train_steps
from diffrl.algorithms.losses import token_weights
from diffrl.rollout import RolloutConfig, generate
from tests.test_algorithms_estimators import plain_logp, with_mask


def test_step_advantage_is_the_reward_gain_plus_one_plus_the_later_mean_z_scored_per_step() -> None:
    rewards = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    # Sample 0: (0, 1-0, 1-1) + 1 + (mean(1, 1), mean(1), r_T=1) = (2, 3, 2);
    # sample 1: (0, 0, 1) + 1 + (mean(0, 1), mean(1), 1) = (1.5, 2, 3).
    raw = torch.tensor([[2.0, 3.0, 2.0], [1.5, 2.0, 3.0]])
    got = step_advantages(rewards, group_size=2)
    for t in range(3):
        a, b = raw[0, t].item(), raw[1, t].item()
        std = abs(a - b) / math.sqrt(2)  # sample std of two values
        assert got[0, t].item() == pytest.approx((a - b) / 2 / (std + 1e-4))
        assert got[1, t].item() == pytest.approx((b - a) / 2 / (std + 1e-4))
    # A group whose samples' step advantages agree has none.
    assert torch.equal(step_advantages(torch.ones(2, 4), group_size=2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="num_generations"):
        step_advantages(rewards, group_size=1)


def test_training_steps_are_those_with_the_largest_total_absolute_advantage() -> None:
    adv = torch.tensor([[1.0, -3.0, 0.5], [2.0, 1.0, -0.5]])  # sum_b |A_t| = 3, 4, 1
    assert train_steps(adv, 2).tolist() == [1, 0]
    assert sorted(train_steps(adv, 16).tolist()) == [0, 1, 2]


def test_lambda_weights_are_length_over_masks_times_the_confidence_token_mean() -> None:
    predicted = torch.tensor([[True, True, False, False], [True, False, False, False]])
    confidence = torch.tensor([[0.5, 1.0, 0.9, 0.3], [0.8, 0.1, 0.1, 0.1]])
    # Row 0: lambda = 4 / 2 = 2, token mean of c: weights c * 2 / 2; row 1: lambda 4, one mask.
    assert torch.allclose(step_weights(predicted, confidence), torch.tensor([[0.5, 1.0, 0, 0], [3.2, 0, 0, 0]]))


def test_loss_is_the_step_mean_of_the_clipped_lambda_weighted_token_means() -> None:
    gen = torch.Generator().manual_seed(0)
    b, length, k = 2, 4, 3
    predicted = torch.rand(b, k, length, generator=gen) < 0.6
    predicted[:, :, 0] = True
    confidence = torch.rand(b, k, length, generator=gen)
    logp = torch.randn(b, length, k, generator=gen) * 0.3
    old = logp + torch.randn(b, length, k, generator=gen) * 0.4  # some ratios leave [0.8, 1.2]
    adv = torch.randn(b, k, generator=gen)
    shares = step_weights(predicted, confidence).transpose(1, 2)
    weights = token_weights(torch.ones(b, length, dtype=torch.bool), "grpo", b, length)
    loss, _ = mdpo_loss(torch.stack((logp, shares), -1), torch.stack((old, shares), -1), adv, weights, epsilon=0.2, epsilon_high=None, beta=0.0)
    # compute_loss per step: -min(rho A, clip(rho) A) * lambda_t * c summed over M_t / |M_t|,
    # a mean over the batch's samples, then over the K steps.
    want = 0.0
    for s in range(b):
        for t in range(k):
            masks = predicted[s, t]
            lam = length / int(masks.sum())
            for i in masks.nonzero().flatten().tolist():
                rho = math.exp(logp[s, i, t] - old[s, i, t])
                a = adv[s, t].item()
                per_token = -min(rho * a, min(max(rho, 0.8), 1.2) * a) * lam
                want += per_token * confidence[s, t, i].item() / int(masks.sum()) / b / k
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_the_hook_rewards_every_reached_step_and_keeps_the_chosen_ones(tiny_llada) -> None:
    prompts = torch.randint(0, 50, (4, 3), generator=torch.Generator().manual_seed(0))
    cfg = RolloutConfig(max_completion_length=8, block_length=8, steps=8, temperature=1.0, record_predictions=True)
    rollout = generate(tiny_llada, prompts, torch.ones_like(prompts, dtype=torch.bool), cfg)
    seen = []

    def score(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens)
        return tokens.float().sum(-1)  # any reward that differs between steps

    narrowed, adv = mdpo_step_advantages(rollout, score, knobs=MDPOKnobs(sample_train_steps=3), group_size=2)
    predictions = seen[0]
    assert torch.equal(predictions, reached_predictions(rollout))
    # Steps a sample never reached are scored as its final completion.
    for b in range(4):
        for t in range(predictions.shape[1]):
            if rollout.step_tokens[b, t, 0] < 0:
                assert torch.equal(predictions[b, t], rollout.completion_ids[b])
    full = step_advantages(predictions.float().sum(-1), 2)
    steps = train_steps(full, 3)
    assert torch.equal(adv, full[:, steps])
    assert torch.equal(narrowed.step_tokens, rollout.step_tokens[:, steps])
    assert narrowed.step_predicted.shape == (4, 3, 8)


@pytest.mark.parametrize("running_confidence", (False, True))
def test_the_record_holds_each_steps_greedy_prediction_and_canvas(tiny_llada, running_confidence: bool) -> None:
    model = tiny_llada
    prompts = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(prompts, dtype=torch.bool)
    cfg = RolloutConfig(max_completion_length=8, block_length=8, steps=4, temperature=0.0, stop_at_eos=False, running_confidence=running_confidence)
    plain = generate(model, prompts, mask, cfg)
    rollout = generate(model, prompts, mask, replace(cfg, record_predictions=True))
    # Recording changes nothing of the rollout; off, the record has width 0.
    assert torch.equal(plain.completion_ids, rollout.completion_ids) and torch.equal(plain.step_map, rollout.step_map)
    assert plain.step_tokens.shape == (2, 0, 8)
    mask_id = model.facts.mask_token_id
    steps = int((rollout.step_tokens[..., 0] >= 0).sum(1).max())
    assert steps == 4
    batch = PolicyBatch.from_rollout(rollout)
    for t in range(steps):
        x0, predicted = rollout.step_tokens[:, t], rollout.step_predicted[:, t]
        canvas = torch.where(predicted, mask_id, x0)
        if t == 0:
            assert predicted.all()
        if not running_confidence:
            # Without remasking, x_t masks exactly the tokens committed at step t or later.
            assert torch.equal(predicted, rollout.step_map >= t)
        # x̂0_t is the argmax of one plain forward on x_t at its masked positions, c_t its probability.
        logits = model.logits(model(torch.cat((prompts, canvas), 1), batch.key_mask))[:, prompts.shape[1] :].float()
        logits[..., mask_id] = float("-inf")
        probs = torch.softmax(logits, -1)
        assert torch.equal(probs.argmax(-1)[predicted], x0[predicted])
        assert torch.allclose(probs.max(-1).values[predicted], rollout.step_confidence[:, t][predicted], atol=1e-5)
        assert torch.equal(x0[~predicted], canvas[~predicted])
    # The last step's prediction is the completion.
    last = rollout.step_tokens[:, steps - 1]
    if not running_confidence:
        assert torch.equal(last, rollout.completion_ids)


def test_masked_predictions_score_each_training_step_on_its_canvas(tiny_llada) -> None:
    model = tiny_llada
    prompts = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(2))
    cfg = RolloutConfig(max_completion_length=8, block_length=8, steps=4, temperature=1.0, stop_at_eos=False, record_predictions=True)
    batch = PolicyBatch.from_rollout(generate(model, prompts, torch.ones_like(prompts, dtype=torch.bool), cfg))
    with torch.no_grad():
        scores = MaskedPredictions(rows_per_forward=3)(model, batch, seed=0)
    # One slot per step the grid allows; slots past the 4 steps taken train nothing.
    slots = batch.step_tokens.shape[1]
    assert scores.logp.shape == (2, 8, slots, 2) and slots > 4
    assert not scores.logp[:, :, 4:].any()
    for t in range(4):
        predicted = batch.step_predicted[:, t]
        at_step = replace(batch, completion_ids=batch.step_tokens[:, t])
        want = plain_logp(model, with_mask(model, at_step, predicted), at_step)
        assert torch.allclose(scores.logp[..., t, 0][predicted], want[predicted], atol=1e-5)
        assert torch.equal(scores.logp[..., t, 0][~predicted], torch.zeros(int((~predicted).sum())))
        assert torch.allclose(scores.logp[..., t, 1], step_weights(predicted, batch.step_confidence[:, t]))
    with pytest.raises(ValueError, match="record_predictions"):
        MaskedPredictions()(model, PolicyBatch.from_rollout(generate(model, prompts, torch.ones_like(prompts, dtype=torch.bool), replace(cfg, record_predictions=False))), seed=0)


def test_the_record_travels_with_its_rows_through_chunks_and_selection(tiny_llada) -> None:
    from diffrl.rollout.engine import generate_chunked

    prompts = torch.randint(0, 50, (4, 3), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(prompts, dtype=torch.bool)
    cfg = RolloutConfig(max_completion_length=8, block_length=4, steps=4, temperature=1.0, record_predictions=True)
    whole = generate_chunked(tiny_llada, prompts, mask, cfg)
    chunked = generate_chunked(tiny_llada, prompts, mask, cfg, chunk=3)
    for name in ("step_tokens", "step_predicted"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name
    # A forward over a different set of rows may round the confidences differently in the last bits.
    torch.testing.assert_close(whole.step_confidence, chunked.step_confidence, rtol=1e-5, atol=1e-6)
    picked = whole.select(torch.tensor([2, 0]))
    assert torch.equal(picked.step_tokens, whole.step_tokens[[2, 0]])
    # Two blocks: a step predicts only its own block's masked positions.
    first_block = whole.step_predicted[:, 0]
    assert first_block[:, :4].any() and not first_block[:, 4:].any()
