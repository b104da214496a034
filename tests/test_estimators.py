"""Likelihood estimators and the chunked log-prob they rest on."""

from __future__ import annotations

import pytest
import torch

from diffrl.algorithms import PolicyBatch
from diffrl.algorithms.estimators import AutoregressiveLikelihood, CoupledComplementary, MonteCarloELBO, OneStepMeanField
from diffrl.kernels import selected_logprobs


def make_batch(model, n: int = 4, plen: int = 6, glen: int = 8, seed: int = 0) -> PolicyBatch:
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, 500, (n, plen), generator=gen)
    prompt_mask = torch.ones(n, plen, dtype=torch.bool)
    prompt_mask[0, :2] = False
    prompt[0, :2] = model.facts.pad_token_id
    completion = torch.randint(0, 500, (n, glen), generator=gen)
    completion_mask = torch.ones(n, glen, dtype=torch.bool)
    completion_mask[1, 5:] = False
    zeros = torch.zeros(n, glen)
    return PolicyBatch(prompt, prompt_mask, completion, completion_mask, torch.arange(100, 100 + n), zeros.long(), zeros.bool(), zeros)


def test_selected_logprobs_equal_log_softmax_gather_in_value_and_grad() -> None:
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 53, (37,))
    logp, ent = selected_logprobs(h, w, t, chunk_rows=5, temperature=0.7)
    ref = torch.log_softmax(h @ w.T / 0.7, -1)
    ref_logp, ref_ent = ref.gather(-1, t[:, None]).squeeze(-1), -(ref.exp() * ref).sum(-1)
    assert torch.allclose(logp, ref_logp, atol=1e-12) and torch.allclose(ent, ref_ent, atol=1e-12)
    coef = torch.randn(37, dtype=torch.float64)
    got = torch.autograd.grad((logp * coef).sum() + ent.sum(), (h, w))
    want = torch.autograd.grad((ref_logp * coef).sum() + ref_ent.sum(), (h, w))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want))


def test_one_step_estimator_equals_direct_log_softmax(tiny_llada) -> None:
    """Hand-built case: the noisy input is rebuilt here and scored with a plain log_softmax."""
    batch = make_batch(tiny_llada)
    est = OneStepMeanField(p_mask_prompt=0.0)
    scores = est(tiny_llada, batch, seed=5)
    mask_id = tiny_llada.facts.mask_token_id
    noisy = torch.cat((batch.prompt_ids, torch.full_like(batch.completion_ids, mask_id)), 1)
    logits = tiny_llada.logits(tiny_llada(noisy, batch.key_mask))[:, batch.prompt_ids.shape[1] :]
    direct = torch.log_softmax(logits.float(), -1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
    assert torch.allclose(scores.logp[batch.completion_mask], direct[batch.completion_mask], atol=1e-5)
    assert (scores.logp[~batch.completion_mask] == 0).all()
    assert torch.equal(scores.mask, batch.completion_mask)


@pytest.mark.parametrize(
    ("estimator", "copies"),
    [(OneStepMeanField(p_mask_prompt=0.1), 1), (CoupledComplementary(), 3), (MonteCarloELBO(num_nodes=2), 1), (AutoregressiveLikelihood(rows_per_forward=8), 1)],
    ids=["one_step", "coupled", "elbo", "autoregressive"],
)
def test_estimators_build_no_batch_length_vocab_tensor(tiny_llada_dir, estimator, copies: int) -> None:
    """No single allocation during the estimate and its backward is as large as the fp32
    probabilities [copies x B, L, V] of the noisy copies one forward scores (coupled-GRPO runs its
    three passes as one forward of 3B rows)."""
    from diffrl.models import load_pretrained

    model = load_pretrained(tiny_llada_dir, dtype=torch.float32)
    batch = make_batch(model, n=8, glen=32)
    vocab = model.facts.vocab_size
    full = copies * len(batch) * batch.completion_ids.shape[1] * vocab * 4
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        scores = estimator(model, batch, seed=1)
        scores.logp.sum().backward()
    # Each op's own allocations: a recomputing backward nests a whole chunk's forward under one event.
    biggest = max(e.self_cpu_memory_usage for e in prof.events())
    naive = sum(1 for e in prof.events() if e.self_cpu_memory_usage >= full)
    assert naive == 0, f"an op allocated {biggest} bytes >= the [B, L, V] size {full}"


def test_prompt_masks_follow_seed_and_sample_not_batching(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=6)
    est = OneStepMeanField(p_mask_prompt=0.5)
    whole = est(tiny_llada, batch, seed=11)
    parts = [est(tiny_llada, mb, seed=11) for mb in batch.split(4)]
    assert torch.allclose(torch.cat([p.logp for p in parts]), whole.logp, atol=1e-6)
    other = est(tiny_llada, batch, seed=12)
    assert not torch.allclose(other.logp, whole.logp)
    # p = 0: the estimate does not depend on the seed.
    zero = OneStepMeanField(p_mask_prompt=0.0)
    assert torch.equal(zero(tiny_llada, batch, 1).logp, zero(tiny_llada, batch, 2).logp)


def test_prompt_mask_rate_is_p(tiny_llada) -> None:
    from diffrl.models.masks import positions_from_mask
    from diffrl.rng import STREAM_PROMPT_MASK, counter_uniform

    ids = torch.arange(4000)[:, None]
    pos = positions_from_mask(torch.ones(4000, 50, dtype=torch.bool))
    rate = (counter_uniform(STREAM_PROMPT_MASK, 3, ids, pos) < 0.3).float().mean().item()
    assert abs(rate - 0.3) < 4 * (0.3 * 0.7 / 200000) ** 0.5
