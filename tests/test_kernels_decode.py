"""The fused decode step against its PyTorch fallback, run through Triton's interpreter on CPU.

Shapes are small but ragged: rows not a multiple of the row block, a hidden size not a multiple of
the hidden slice, a vocabulary not a multiple of the tile, split over three programs, and a
suppressed id in the last, partial tile.
"""

from __future__ import annotations

import pytest
import torch

from diffrl.kernels import decode_step, use_backend
from diffrl.kernels.decode import decode_step_torch
from diffrl.rng import STREAM_GUMBEL, counter_hash
from tests.triton_interpret import DEVICE, TRITON_MARKS

pytestmark = TRITON_MARKS

N, H, V = 19, 40, 203
TILES = dict(block_n=16, block_v=64, block_h=16, splits=3)
SUPPRESS = (7, 200)
FIELDS = ("prob", "logprob", "margin", "entropy")


def lm_head(seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden rows with different scales (peaked and flat distributions), an LM head, row keys."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 3.0, N)[:, None]
    hidden = (torch.randn(N, H, generator=gen) * scale).to(dtype).to(DEVICE)
    weight = (torch.randn(V, H, generator=gen) * 0.4).to(dtype).to(DEVICE)
    keys = counter_hash(seed, torch.arange(N), 3).to(DEVICE)
    return hidden, weight, keys


def fused(hidden, weight, **kw):
    from diffrl.kernels.decode_triton import decode_step_triton

    return decode_step_triton(hidden, weight, suppress_ids=SUPPRESS, **TILES, **kw)


def assert_same_decode(got, want, atol: float = 2e-5) -> None:
    assert torch.equal(got.token.cpu(), want.token.cpu()), (got.token, want.token)
    for name in FIELDS:
        a, b = getattr(got, name).float().cpu(), getattr(want, name).float().cpu()
        assert torch.allclose(a, b, atol=atol, rtol=1e-5), (name, (a - b).abs().max())


CASES = [
    dict(temperature=0.0),
    dict(temperature=1.0),
    dict(temperature=0.7, stats="sampling"),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_k=6, stats="sampling"),
    dict(temperature=0.0, top_k=10, top_p=0.8, stats="sampling"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fused_decode_matches_fallback_fp32(case: dict) -> None:
    hidden, weight, keys = lm_head(0)
    got = fused(hidden, weight, noise_keys=keys, **case)
    want = decode_step_torch(hidden, weight, noise_keys=keys, suppress_ids=SUPPRESS, **case)
    assert_same_decode(got, want)
    assert not torch.isin(got.token.cpu(), torch.tensor(SUPPRESS)).any()


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3]], ids=["argmax", "sample", "top_k"])
def test_fused_decode_bf16_matches_fallback_on_the_same_values(case: dict) -> None:
    """The kernel multiplies bf16 inputs with fp32 accumulation and keeps fp32 logits, which is
    the fallback run on the same values in fp32 (the fallback itself rounds logits to bf16)."""
    hidden, weight, keys = lm_head(1, torch.bfloat16)
    got = fused(hidden, weight, noise_keys=keys, **case)
    want = decode_step_torch(hidden.float(), weight.float(), noise_keys=keys, suppress_ids=SUPPRESS, **case)
    assert_same_decode(got, want)
    plain = decode_step_torch(hidden, weight, noise_keys=keys, suppress_ids=SUPPRESS, **case)
    assert torch.allclose(got.logprob.cpu(), plain.logprob.cpu(), atol=0.1)


def test_top_p_rows_wider_than_the_candidates_are_recomputed_exactly() -> None:
    """Top-p alone: rows whose nucleus fits the 16 candidates are finished from them, the others by
    the fallback; the data has both kinds and every row matches."""
    temperature, top_p, candidates = 1.5, 0.9, 16
    hidden, weight, keys = lm_head(2)
    logits = (hidden @ weight.T).cpu() / temperature
    logits[:, list(SUPPRESS)] = float("-inf")
    probs = torch.softmax(logits, -1).sort(-1, descending=True).values
    nucleus = ((probs.cumsum(-1) - probs) < top_p).sum(-1)
    assert (nucleus < candidates).any() and (nucleus >= candidates).any(), nucleus
    got = fused(hidden, weight, noise_keys=keys, temperature=temperature, top_p=top_p, stats="sampling", top_p_candidates=candidates)
    want = decode_step_torch(hidden, weight, noise_keys=keys, temperature=temperature, top_p=top_p, stats="sampling", suppress_ids=SUPPRESS)
    assert_same_decode(got, want)


def test_sampled_tokens_follow_the_keys_not_the_batch() -> None:
    """The same keys give the same tokens in any row order; other keys give other tokens."""
    hidden, weight, keys = lm_head(3)
    whole = fused(hidden, weight, noise_keys=keys, temperature=1.0)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    shuffled = fused(hidden[perm], weight, noise_keys=keys[perm], temperature=1.0)
    assert torch.equal(shuffled.token, whole.token[perm])
    other = fused(hidden, weight, noise_keys=keys + 1, temperature=1.0)
    assert not torch.equal(other.token, whole.token)


def test_counter_bits_in_triton_equal_diffrl_rng_bit_for_bit() -> None:
    """The kernel's uint32 hash against diffrl.rng's int64 one, over keys where the golden-ratio
    addition does and does not carry past 32 bits."""
    from tests.triton_probes import counter_bits_kernel

    keys = torch.tensor([0, 1, 2**32 - 1, 2**40 + 5, 123456789, -7, 2**31, 99], dtype=torch.long)
    cols = torch.arange(256)
    row_hash = counter_hash(STREAM_GUMBEL, keys)
    carries = ((row_hash[:, None] ^ cols[None, :]) + 0x9E3779B9) >= 2**32
    assert carries.any() and (~carries).any()
    out = torch.empty(len(keys), len(cols), dtype=torch.long, device=DEVICE)
    counter_bits_kernel[(len(cols) // 64,)](row_hash.to(DEVICE), out, len(cols), BLOCK_N=len(keys), BLOCK_V=64)
    assert torch.equal(out.cpu(), counter_hash(STREAM_GUMBEL, keys[:, None], cols[None, :]))


def test_dispatch_routes_decode_by_backend() -> None:
    """``triton`` runs the kernel (identical to calling it), ``torch`` the fallback (identical to
    calling it); a top-k wider than the kernel's candidate list falls back under any backend."""
    from diffrl.kernels.decode_triton import decode_step_triton

    hidden, weight, keys = lm_head(4)
    args = dict(temperature=0.8, noise_keys=keys, suppress_ids=SUPPRESS)
    with use_backend("triton"):
        routed = decode_step(hidden, weight, **args)
        wide = decode_step(hidden, weight, top_k=150, **args)
    assert all(torch.equal(getattr(routed, f), getattr(decode_step_triton(hidden, weight, **args), f)) for f in ("token",) + FIELDS)
    with use_backend("torch"):
        plain = decode_step(hidden, weight, **args)
    assert all(torch.equal(getattr(plain, f), getattr(decode_step_torch(hidden, weight, **args), f)) for f in ("token",) + FIELDS)
    fallback_wide = decode_step_torch(hidden, weight, top_k=150, **args)
    assert all(torch.equal(getattr(wide, f), getattr(fallback_wide, f)) for f in ("token",) + FIELDS)
