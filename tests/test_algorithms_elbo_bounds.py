"""SPG, ESPO and BGPO: their estimators against plain forwards written here, their losses against
hand computations, and BGPO's memory against the naive many-draw ELBO."""

from __future__ import annotations

import math

import pytest
import torch

from diffrl.algorithms import build_algorithm
from diffrl.algorithms.bgpo import boundary_loss
from diffrl.algorithms.elbo_bounds import PerDrawELBO, SandwichedBounds, StratifiedCoupledELBO
from diffrl.algorithms.espo import espo_loss
from diffrl.algorithms.estimators import MonteCarloELBO, masked_prompt
from diffrl.algorithms.spg import SPGConfig, sandwiched_loss
from tests.test_algorithms_estimators import plain_logp, with_mask
from tests.test_estimators import make_batch


def test_spg_block_random_masks(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=16, glen=16)
    est = SandwichedBounds(num_t=2, block_length=4, min_t=0.25, max_t=0.75)
    masked = est.masks(tiny_llada, batch, seed=3)
    block = torch.arange(16) // 4
    c = batch.completion_mask
    chosen = torch.zeros(2, 16, dtype=torch.long)
    for j in range(2):
        for b in range(16):
            m, cb = masked[j, b], c[b]
            # Past the completion every position is M; blocks after the chosen one are all M,
            # blocks before it all clean; the chosen block holds k in [max(1, m/4), 3m/4] masks.
            assert m[~cb].all()
            first = int(block[m & cb].min())
            assert not m[block < first].any() and m[block > first].all()
            n = int(cb[block == first].sum())
            k = int((m & cb)[block == first].sum())
            assert max(1, math.floor(n * 0.25)) <= k <= max(1, math.floor(n * 0.75)), (n, k)
            chosen[j, b] = first
    # The two draws of a full-length sample take distinct blocks.
    full = c.all(1)
    assert full.any() and (chosen[0, full] != chosen[1, full]).all()
    # Keyed by sample id: the same masks in a micro-batch.
    assert torch.equal(est.masks(tiny_llada, batch.select(slice(5, 9)), 3), masked[:, 5:9])


@pytest.mark.parametrize("family", ("llada", "sdar"))
def test_spg_bounds_equal_their_formulas_on_plain_forwards(tiny_checkpoint, family: str) -> None:
    model = tiny_checkpoint(family).load()
    batch = make_batch(model, n=3, glen=8)
    est = SandwichedBounds(num_t=2, block_length=4, p_mask_prompt=0.3, eubo_beta=1.5, mix_weight=0.25)
    got = est(model, batch, seed=9)
    masks = est.masks(model, batch, 9)
    c = batch.completion_mask
    elbo = torch.zeros(c.shape)
    avg_p = torch.zeros(c.shape)
    for j in range(2):
        noisy = with_mask(model, batch, masks[j])
        noisy[:, : batch.prompt_ids.shape[1]] = masked_prompt(batch, 9, 0.3, model.facts.mask_token_id, j)
        lp = plain_logp(model, noisy, batch)
        m = masks[j] & c
        n = m.sum(1, keepdim=True).float()
        elbo += torch.where(m, lp / n, 0.0) / 2
        avg_p += torch.where(m, lp.exp() ** 1.5 / (n / c.sum(1, keepdim=True)), 0.0) / 2
    seen = avg_p > 0
    eubo = torch.where(seen, avg_p.clamp_min(1e-30).log(), 0.0) / (1.5 * seen.sum(1, keepdim=True))
    assert torch.allclose(got.logp[..., 0], elbo, atol=1e-5)
    assert torch.allclose(got.logp[..., 1], 0.25 * eubo + 0.75 * elbo, atol=1e-5)


def test_spg_loss_uses_the_lower_bound_for_positive_and_the_upper_for_negative_advantages() -> None:
    torch.manual_seed(0)
    logp = torch.randn(4, 5, 2, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, 0.0, -0.5, 2.0], dtype=torch.float64)
    lengths = torch.tensor([5, 3, 4, 2])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    weights = mask.double() / mask.sum()  # dapo
    loss, _ = sandwiched_loss(logp, logp.detach(), adv, weights)
    want = -sum(adv[b] * logp[b, :, 0 if adv[b] > 0 else 1].sum() * lengths[b] / lengths.sum() for b in range(4))
    assert torch.allclose(loss, want, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, logp)
    assert (grad[0, :, 1] == 0).all() and (grad[2, :, 0] == 0).all() and (grad[1] == 0).all()
    with pytest.raises(ValueError, match="algorithm.beta"):
        build_algorithm(SPGConfig(beta=0.04))


def test_espo_mask_counts_are_stratified_and_exact(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=32, glen=12)
    est = StratifiedCoupledELBO(num_mc=3)
    masked, x = est.masks(batch, seed=4)
    assert torch.equal(masked.sum(2), x)
    # The three counts are a third of (L + 1) = 13 apart (mod 13), rounded.
    gaps = (x[1:] - x[:-1]) % 13
    assert ((gaps == 4) | (gaps == 5)).all()
    assert len(set(x[0].tolist())) > 6


@pytest.mark.parametrize("family", ("llada", "sdar"))
def test_espo_elbo_equals_the_coupled_formula_on_plain_forwards(tiny_checkpoint, family: str) -> None:
    model = tiny_checkpoint(family).load()
    batch = make_batch(model, n=3, glen=8)
    est = StratifiedCoupledELBO(num_mc=2)
    got = est(model, batch, seed=2)
    masked, x = est.masks(batch, 2)
    c = batch.completion_mask
    want = torch.zeros(c.shape)
    for d in range(2):
        t = x[d].float()[:, None] / 9
        first = plain_logp(model, with_mask(model, batch, masked[d]), batch)
        second = plain_logp(model, with_mask(model, batch, ~masked[d]), batch)
        want += 0.5 * torch.where(masked[d], first / t, second / ((8 - x[d].float()[:, None]) / 9)) / 2
    assert torch.allclose(got.logp[c], want[c], atol=1e-4) and (got.logp[~c] == 0).all()


def test_espo_loss_is_the_clipped_sequence_ratio_plus_k2() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.3, -2.1, -0.4], [0.0, -0.3, 0.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.1, -1.8, -0.5], [-0.3, -0.9, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    weights = mask / mask.sum(1, keepdim=True) / 2  # grpo
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, _ = espo_loss(logp, old, adv, weights, epsilon=0.2, epsilon_high=None, beta=0.1, ref_logp=ref)
    # Row 0: log rho = 0.3 / 3 (inside the clip); row 1: log rho = -0.7 / 2, rho = 0.70 < 0.8 with
    # A < 0: the clipped term 0.8 |A| is the larger loss. Each row carries weight 1/2.
    pg = (-math.exp(0.1) * 1.0 + 0.8 * 2.0) / 2
    # k2 = (ELBO - ELBO_ref)^2 / 2 / |y|: row 0 (0.1 - 0.2 + 0) = -0.1 over 3 tokens, row 1 0.2 over 2.
    k2 = (0.1**2 / 2 / 3 + 0.2**2 / 2 / 2) / 2
    assert abs(loss.item() - (pg + 0.1 * k2)) < 1e-12


def test_per_draw_elbo_channels_average_to_the_naive_monte_carlo_elbo(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=3, glen=8)
    per_draw = PerDrawELBO(num_draws=4)(tiny_llada, batch, seed=6)
    naive = MonteCarloELBO(num_nodes=4, masks_per_node=1, time_sampling="uniform")(tiny_llada, batch, seed=6)
    assert per_draw.logp.shape == (3, 8, 4)
    assert torch.allclose(per_draw.logp.mean(-1), naive.logp, atol=1e-5)
    # And the checkpointed gradient is the naive one.
    params = [p for p in tiny_llada.parameters() if p.requires_grad]
    coef = torch.randn(3, 8)
    g1 = torch.autograd.grad((PerDrawELBO(num_draws=4)(tiny_llada, batch, 6).logp.mean(-1) * coef).sum(), params)
    g2 = torch.autograd.grad((MonteCarloELBO(4, 1, "uniform")(tiny_llada, batch, 6).logp * coef).sum(), params)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))


def test_bgpo_bound_equals_the_objective_on_policy_and_lies_below_it_off_policy() -> None:
    torch.manual_seed(0)
    K = 5
    logp = (-torch.rand(4, 6, K, dtype=torch.float64) * 2).requires_grad_()
    adv = torch.tensor([1.0, -0.5, 0.0, -2.0], dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    weights = mask.double() / mask.sum(1, keepdim=True) / 4

    def objective(old: torch.Tensor, a: torch.Tensor = adv) -> torch.Tensor:
        """-sum_i w_i A_i exp(mean_k x_ik): the ELBO-based objective the bound replaces."""
        counted = mask.double()[..., None]
        x = ((logp - old) * counted).sum(1) / counted.sum(1)
        return -(a * torch.exp(x.mean(1)) * weights.sum(1)).sum()

    loss, _ = boundary_loss(logp, logp.detach(), adv, weights, beta=0.0)
    want = objective(logp.detach())
    assert torch.allclose(loss, want, atol=1e-12)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], torch.autograd.grad(want, logp)[0], atol=1e-12)
    old = logp.detach() + 0.3 * torch.randn_like(logp)
    for b in range(4):
        # One sample at a time: a lower bound of its objective is an upper bound of its loss.
        only = torch.zeros(4, dtype=torch.float64)
        only[b] = 1.0
        bound, _ = boundary_loss(logp, old, adv * only, weights, beta=0.0)
        assert bound.item() >= objective(old, adv * only).item() - 1e-12


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward while ``fn`` runs."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_bgpo_graph_does_not_grow_with_the_number_of_draws_where_the_naive_elbo_does(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=2, glen=8)
    naive = {k: saved_bytes(lambda k=k: MonteCarloELBO(k, 1, "uniform")(tiny_llada, batch, 0)) for k in (2, 8)}
    checkpointed = {k: saved_bytes(lambda k=k: PerDrawELBO(k)(tiny_llada, batch, 0)) for k in (2, 8)}
    # The naive graph holds every draw's activations (4x the draws: ~4x the bytes); the checkpointed
    # one holds each draw's inputs and per-token outputs only.
    assert naive[8] > 3.5 * naive[2]
    assert checkpointed[8] < naive[8] / 5
