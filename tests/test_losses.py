"""Advantages, token aggregation and the clipped policy loss."""

from __future__ import annotations

import pytest
import torch

from diffrl.algorithms.advantages import group_advantages
from diffrl.algorithms.losses import clipped_policy_loss, k3, token_weights


def test_group_mean_and_leave_one_out() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    assert torch.allclose(group_advantages(r, 3), torch.tensor([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]))
    loo = group_advantages(r, 3, baseline="leave_one_out")
    assert torch.allclose(loo, torch.tensor([1.0, -0.5, -0.5, -1.0, 0.5, 0.5]))
    z = group_advantages(r, 3, scale_rewards="group")
    assert torch.allclose(z[:3], (r[:3] - r[:3].mean()) / (r[:3].std() + 1e-4))
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(r, 4)


def test_ratio_one_gives_the_plain_policy_gradient() -> None:
    torch.manual_seed(0)
    logp = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(4, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.3
    w = token_weights(mask, "dapo", 4, 6).double()
    loss, metrics = clipped_policy_loss(logp, logp.detach(), adv, w, epsilon=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    (plain,) = torch.autograd.grad(-(adv[:, None] * logp * w).sum(), logp)
    assert torch.allclose(grad, plain, atol=1e-12)
    assert metrics["actor/pg_clipfrac"] == 0 and metrics["actor/ppo_kl"] == 0


def test_clipped_tokens_have_zero_gradient() -> None:
    old = torch.zeros(1, 4, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]], dtype=torch.float64)).requires_grad_()
    w = torch.full((1, 4), 0.25, dtype=torch.float64)
    loss, metrics = clipped_policy_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), w, epsilon=0.2)
    (grad,) = torch.autograd.grad(loss, logp)
    # A > 0: ratio 1.5 is clipped (no gradient); 0.5 is below the range but unclipped in the min.
    assert grad[0, 0] == 0 and grad[0, 1] != 0 and grad[0, 2] != 0
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.25)


def test_epsilon_high_widens_the_upper_clip_only() -> None:
    old = torch.zeros(1, 1, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.25]], dtype=torch.float64)).requires_grad_()
    w = torch.ones(1, 1, dtype=torch.float64)
    for eps_high, clipped in ((0.2, True), (0.28, False)):
        loss, _ = clipped_policy_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), w, epsilon=0.2, epsilon_high=eps_high)
        (grad,) = torch.autograd.grad(loss, logp)
        assert (grad[0, 0] == 0) == clipped


def test_aggregations() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    per_token = torch.arange(16, dtype=torch.float32).view(4, 4)
    grpo = (token_weights(mask, "grpo", 4, 4) * per_token).sum()
    assert torch.isclose(grpo, torch.stack([per_token[i][mask[i]].mean() for i in range(4)]).mean())
    dapo = token_weights(mask, "dapo", 2, 4)
    assert torch.isclose((dapo * per_token).sum(), per_token[mask].mean())
    bnpo = token_weights(mask, "bnpo", 2, 4)
    halves = [per_token[:2][mask[:2]].mean(), per_token[2:][mask[2:]].mean()]
    assert torch.isclose((bnpo * per_token).sum(), sum(halves) / 2)
    # dr_grpo is invariant to extra padding columns.
    wide = torch.cat((mask, torch.zeros(4, 3, dtype=torch.bool)), 1)
    assert torch.isclose((token_weights(wide, "dr_grpo", 4, 8)[:, :4] * per_token).sum(), (token_weights(mask, "dr_grpo", 4, 8) * per_token).sum())


def test_kl_term_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    logp = torch.randn(3, 5)
    assert torch.allclose(k3(logp, logp), torch.zeros(3, 5))
    assert (k3(logp, logp + 0.3) > 0).all()


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_a_batch_with_every_sample_dropped_weighs_nothing(loss_type: str) -> None:
    """JustGRPO and LightningRL drop groups without reward variance; when that is every group the
    step must train nothing instead of turning the loss into 0/0."""
    none = torch.zeros(4, 6, dtype=torch.bool)
    weights = token_weights(none, loss_type, micro_batch_size=2, max_completion_length=6, global_tokens=0, global_sequences=0)
    assert torch.equal(weights, torch.zeros(4, 6))
    logp = torch.randn(4, 6, requires_grad=True)
    loss, _ = clipped_policy_loss(logp, logp.detach(), torch.zeros(4), weights, epsilon=0.2)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(4, 6))
