"""The decode step's chunked PyTorch fallback against its plain definition on full logits, and the
distribution its keyed draws follow. No Triton here (``test_kernels_decode.py`` runs the kernel).
"""

from __future__ import annotations

import pytest
import torch

from diffrl.kernels.decode import FIRST_CANDIDATES, GROUP, decode_step_reference, decode_step_torch
from diffrl.rng import counter_hash

N, H, V = 23, 40, 3 * GROUP + 11  # the last sampling group is partial
SUPPRESS = (7, V - 2)
FIELDS = ("logprob", "prob", "margin", "entropy")


def lm_head(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows from flat to peaked, an LM head, one key per row."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen) * torch.linspace(0.2, 3.0, N)[:, None]
    weight = torch.randn(V, H, generator=gen) * 0.4
    return hidden, weight, counter_hash(seed, torch.arange(N), 5)


def assert_same(got, want, fields=FIELDS) -> None:
    assert torch.equal(got.token, want.token), (got.token, want.token)
    for name in fields:
        a, b = getattr(got, name), getattr(want, name)
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), (name, (a - b).abs().max())


CASES = [
    dict(temperature=0.0),
    dict(temperature=1.0),
    dict(temperature=0.7),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_k=6, top_p=0.9),
    dict(temperature=0.0, top_k=10, top_p=0.8),
    dict(temperature=1.5, top_p=0.9),
    dict(temperature=0.0, top_p=0.95),
]


@pytest.mark.parametrize("stats", ["model", "sampling"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fallback_equals_the_plain_definition(case: dict, stats: str) -> None:
    """Same tokens and scores, whether the vocabulary is read in one chunk or in chunks of one
    sampling group (so group, candidate and softmax partials merge across chunks)."""
    hidden, weight, keys = lm_head(0)
    want = decode_step_reference(hidden, weight, noise_keys=keys, suppress_ids=SUPPRESS, stats=stats, **case)
    for chunk_bytes in (4 * N * GROUP, 1 << 24):
        got = decode_step_torch(hidden, weight, noise_keys=keys, suppress_ids=SUPPRESS, stats=stats, chunk_bytes=chunk_bytes, **case)
        assert_same(got, want)
        assert not torch.isin(got.token, torch.tensor(SUPPRESS)).any()


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=["argmax", "sample", "filtered"])
def test_needs_computes_only_the_named_statistics(case: dict) -> None:
    """Each subset of statistics: the named ones equal the full call's, the others are None; the
    token and log-probability never change."""
    hidden, weight, keys = lm_head(1)
    full = decode_step_torch(hidden, weight, noise_keys=keys, suppress_ids=SUPPRESS, **case)
    for needs in (set(), {"prob"}, {"margin"}, {"entropy"}, {"prob", "entropy"}):
        got = decode_step_torch(hidden, weight, noise_keys=keys, suppress_ids=SUPPRESS, needs=needs, **case)
        assert_same(got, full, fields=("logprob", *sorted(needs)))
        assert all(getattr(got, f) is None for f in set(FIELDS) - {"logprob"} - needs)
    with pytest.raises(ValueError, match="needs"):
        decode_step_torch(hidden, weight, noise_keys=keys, needs={"confidence"}, **case)


def test_top_p_nucleus_wider_than_the_candidates_grows_them() -> None:
    """A flat row at high temperature has a nucleus of hundreds of ids: more than the first
    candidate list and more than it grown once; the result still equals the sorted definition."""
    gen = torch.Generator().manual_seed(3)
    vocab = FIRST_CANDIDATES * 64 + 5
    hidden = torch.randn(6, 16, generator=gen) * torch.tensor([0.05, 0.3, 1.0, 2.0, 4.0, 8.0])[:, None]
    weight = torch.randn(vocab, 16, generator=gen)
    keys = counter_hash(3, torch.arange(6))
    probs = torch.softmax(hidden @ weight.T / 1.2, -1).sort(-1, descending=True).values
    nucleus = ((probs.cumsum(-1) - probs) < 0.9).sum(-1)
    assert (nucleus > FIRST_CANDIDATES * 8).any() and (nucleus < FIRST_CANDIDATES).any(), nucleus
    for stats in ("model", "sampling"):
        args = dict(temperature=1.2, noise_keys=keys, top_p=0.9, stats=stats)
        assert_same(decode_step_torch(hidden, weight, **args), decode_step_reference(hidden, weight, **args))


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).double() / len(tokens)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.8, None, None), (1.0, None, 0.7), (1.3, 8, None)])
def test_keyed_draws_follow_the_sampling_distribution(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """One row drawn under 40000 keys: token frequencies against the tempered, filtered softmax.
    The bound is about six standard errors of the largest probability; a draw that favoured one
    group or ignored the within-group stage (off by 1/GROUP of the mass) fails it."""
    gen = torch.Generator().manual_seed(4)
    draws = 40000
    hidden = torch.randn(1, H, generator=gen).expand(draws, -1)
    weight = torch.randn(V, H, generator=gen) * 0.25
    logits = (hidden[:1] @ weight.T) / temperature
    logits[0, list(SUPPRESS)] = float("-inf")
    from diffrl.kernels.decode import filter_logits

    want = torch.softmax(filter_logits(logits, top_k, top_p), -1)[0].double()
    got = decode_step_torch(hidden, weight, temperature=temperature, noise_keys=counter_hash(11, torch.arange(draws)), top_k=top_k, top_p=top_p, suppress_ids=SUPPRESS, needs=())
    freq = frequencies(got.token, V)
    assert freq[want == 0].sum() == 0
    bound = 6 * (want.max() / draws) ** 0.5
    assert (freq - want).abs().max() < bound, ((freq - want).abs().max(), bound)
    # the whole distribution, not only its largest entry: total variation within sampling noise
    assert 0.5 * (freq - want).abs().sum() < 0.03


def test_draws_depend_on_the_keys_not_the_batch() -> None:
    """Shuffled rows with their keys give the shuffled tokens; a row alone gives its token."""
    hidden, weight, keys = lm_head(5)
    args = dict(temperature=0.9, suppress_ids=SUPPRESS)
    whole = decode_step_torch(hidden, weight, noise_keys=keys, **args)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    assert torch.equal(decode_step_torch(hidden[perm], weight, noise_keys=keys[perm], **args).token, whole.token[perm])
    alone = decode_step_torch(hidden[4:5], weight, noise_keys=keys[4:5], chunk_bytes=4 * GROUP, **args)
    assert torch.equal(alone.token, whole.token[4:5])
    assert not torch.equal(decode_step_torch(hidden, weight, noise_keys=keys + 1, **args).token, whole.token)


@pytest.mark.parametrize("case", [dict(temperature=0.0), dict(temperature=0.7)])
def test_an_unfiltered_step_never_waits_on_the_device(case: dict) -> None:
    """Suppressed ids are host ints filled per vocabulary chunk: no bool index, no ``nonzero``.
    (Top-k and top-p read the device once per call: which rows' candidates may be too few, a tie
    at the k-th or a nucleus past the candidates, and need a wider pass.)"""
    from diffrl.rollout.syncs import SyncCounter

    hidden, weight, keys = lm_head(3)
    counter = SyncCounter()
    with counter:
        decode_step_torch(hidden, weight, **case, noise_keys=keys if case["temperature"] else None, suppress_ids=SUPPRESS, chunk_bytes=4 * N * GROUP)
    assert counter.total == 0, dict(counter.calls)
