"""The new likelihood estimators against plain references written here, on real tiny checkpoints."""

from __future__ import annotations

import pytest
import torch

from diffrl.algorithms import PolicyBatch
from diffrl.algorithms.estimators import AutoregressiveLikelihood, CoupledComplementary, MonteCarloELBO, coupled_masks, gauss_legendre
from diffrl.rollout import RolloutConfig, generate
from tests.test_estimators import make_batch

FAMILIES = ("llada", "dream", "sdar", "llada2_moe")


def plain_logp(model, noisy: torch.Tensor, batch: PolicyBatch) -> torch.Tensor:
    """log p(y) [B, Lc] from full log_softmax logits of one plain forward; block-causal models see
    the two-stream input written out here: [noisy ; clean] with the family's block mask."""
    from diffrl.models.masks import positions_from_mask, two_stream_block_mask

    key = batch.key_mask
    if model.facts.attention == "block_causal":
        pos = positions_from_mask(key)
        hidden = model(torch.cat((noisy, batch.input_ids), 1), two_stream_block_mask(key, model.facts.block_size), torch.cat((pos, pos), 1))[:, : noisy.shape[1]]
    else:
        hidden = model(noisy, key)
    logits = model.logits(hidden)[:, batch.prompt_ids.shape[1] :].float()
    return torch.log_softmax(logits, -1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)


def with_mask(model, batch: PolicyBatch, masked: torch.Tensor) -> torch.Tensor:
    return torch.cat((batch.prompt_ids, torch.where(masked, model.facts.mask_token_id, batch.completion_ids)), 1)


def test_coupled_masks_cover_every_completion_token_exactly_once(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=64, glen=32)
    t, first = coupled_masks(batch, seed=3, t_low=0.2, t_high=0.8)
    second = ~first
    assert not (first & second).any() and (first | second).all()
    assert ((t >= 0.2) & (t <= 0.8)).all() and t.std() > 0.1
    # The share masked in the first pass follows each row's t (binomial bounds over 64 x 32 draws).
    assert (first.float().mean(1) - t.squeeze(1)).abs().mean() < 0.1
    # Keyed by sample id: a row's masks are bit-identical in the whole batch and in a micro-batch.
    for part, rows in zip(batch.split(24), (slice(0, 24), slice(24, 48), slice(48, 64))):
        assert torch.equal(coupled_masks(part, 3, 0.2, 0.8)[1], first[rows])


@pytest.mark.parametrize("family", FAMILIES)
def test_coupled_estimator_equals_three_plain_passes(tiny_checkpoint, family: str) -> None:
    model = tiny_checkpoint(family).load()
    batch = make_batch(model, n=4, glen=8)
    got = CoupledComplementary()(model, batch, seed=7)
    t, first = coupled_masks(batch, 7, 0.2, 0.8)
    full = plain_logp(model, with_mask(model, batch, torch.ones_like(first)), batch)
    pass_b = plain_logp(model, with_mask(model, batch, first), batch)
    pass_c = plain_logp(model, with_mask(model, batch, ~first), batch)
    want = 0.5 * (full + torch.where(first, pass_b / t, pass_c / (1 - t)))
    m = batch.completion_mask
    assert torch.allclose(got.logp[m], want[m], atol=1e-4) and (got.logp[~m] == 0).all()
    # Each token carries weight 1/t or 1/(1-t) once, besides the full pass.
    assert torch.equal(got.mask, m)


def test_gauss_nodes_and_weights_integrate_polynomials_exactly() -> None:
    for n in (1, 2, 3, 5):
        nodes, weights = gauss_legendre(n)
        assert ((nodes > 0) & (nodes < 1)).all() and abs(weights.sum().item() - 1) < 1e-12
        for k in range(2 * n):
            assert abs((weights * nodes**k).sum().item() - 1 / (k + 1)) < 1e-12
        assert abs((weights * nodes ** (2 * n)).sum().item() - 1 / (2 * n + 1)) > 1e-6


@pytest.mark.parametrize("family", ("llada", "sdar"))
def test_elbo_estimator_equals_masked_plain_passes_and_is_reproducible(tiny_checkpoint, family: str) -> None:
    from diffrl.algorithms.estimators import completion_uniforms

    model = tiny_checkpoint(family).load()
    batch = make_batch(model, n=3, glen=8)
    est = MonteCarloELBO(num_nodes=2, masks_per_node=2)
    got = est(model, batch, seed=5)
    assert torch.equal(got.logp, est(model, batch, seed=5).logp)
    assert not torch.equal(got.logp, est(model, batch, seed=6).logp)
    nodes, weights = gauss_legendre(2)
    want = torch.zeros_like(got.logp)
    for n in range(2):
        for k in range(2):
            masked = completion_uniforms(batch, 5, n, k) < nodes[n]
            lp = plain_logp(model, with_mask(model, batch, masked), batch)
            # Only masked positions carry signal (and gradient).
            want += torch.where(masked & batch.completion_mask, lp, 0.0) * float(weights[n] / 2 / nodes[n])
    assert torch.allclose(got.logp, want, atol=1e-4)


def test_sdmc_has_lower_variance_than_double_monte_carlo_at_equal_forwards(tiny_checkpoint) -> None:
    """300 independent estimates of one sequence's ELBO each way (3 forwards per estimate)."""
    model = tiny_checkpoint("llada").load()
    one = make_batch(model, n=2, glen=16).select(slice(1, 2))
    draws = 300
    batch = PolicyBatch(**{k: v.expand(draws, *v.shape[1:]) for k, v in vars(one).items() if k != "sample_ids"}, sample_ids=torch.arange(draws))
    with torch.no_grad():
        sdmc = MonteCarloELBO(num_nodes=3, time_sampling="gauss")(model, batch, seed=1).sequence()
        double = MonteCarloELBO(num_nodes=3, time_sampling="uniform")(model, batch, seed=1).sequence()
    assert sdmc.var() < 0.5 * double.var(), (sdmc.var().item(), double.var().item())
    # Both estimate the same ELBO: their means agree within a few standard errors of double MC.
    assert (sdmc.mean() - double.mean()).abs() < 4 * (double.var() / draws).sqrt()


@pytest.mark.parametrize("family", ("llada", "dream", "sdar", "llada2_moe"))
def test_batched_autoregressive_likelihood_equals_a_token_by_token_loop(tiny_checkpoint, family: str) -> None:
    """The loop is one plain forward per position of [prompt, y<i, M...M] (single stream, the
    family's own attention), reading position i."""
    model = tiny_checkpoint(family).load()
    batch = make_batch(model, n=2, plen=5, glen=8)
    est = AutoregressiveLikelihood(rows_per_forward=5)
    logp = est(model, batch, seed=0).logp
    length = batch.completion_ids.shape[1]
    loop = torch.zeros_like(logp)
    for i in range(length):
        masked = torch.arange(length)[None, :].expand_as(batch.completion_mask) >= i
        hidden = model(with_mask(model, batch, masked), batch.key_mask)
        logits = model.logits(hidden)[:, batch.prompt_ids.shape[1] + i].float()
        loop[:, i] = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids[:, i : i + 1]).squeeze(-1)
    m = batch.completion_mask
    assert torch.allclose(logp[m], loop[m], atol=1e-4) and (logp[~m] == 0).all()
    # The gradient through the recomputed chunks equals the gradient of the plain sum.
    model.zero_grad()
    est(model, batch, seed=0).logp.sum().backward()
    batched = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = 0.0
    for i in range(length):
        masked = torch.arange(length)[None, :].expand_as(m) >= i
        logits = model.logits(model(with_mask(model, batch, masked), batch.key_mask))[:, batch.prompt_ids.shape[1] + i].float()
        total = total + (torch.log_softmax(logits, -1).gather(-1, batch.completion_ids[:, i : i + 1]).squeeze(-1) * m[:, i]).sum()
    total.backward()
    assert all(torch.allclose(a, p.grad, atol=1e-4) for a, p in zip(batched, model.parameters()))


@pytest.mark.parametrize("family", ("llada", "sdar"))
def test_autoregressive_rollout_decodes_left_to_right(tiny_checkpoint, family: str) -> None:
    from diffrl.algorithms.just_grpo import autoregressive_order

    model = tiny_checkpoint(family).load()
    # A parallel, confidence-ordered recipe: the algorithm's rewrite makes it one token per step.
    cfg = autoregressive_order(RolloutConfig(max_completion_length=8, block_length=4, steps=2, temperature=1.0, stop_at_eos=False))
    prompts = torch.randint(0, 400, (3, 5))
    rollout = generate(model, prompts, torch.ones_like(prompts, dtype=torch.bool), cfg)
    assert torch.equal(rollout.step_map, torch.arange(8).expand(3, -1))
