"""The fused selected-token log-prob against its chunked PyTorch fallback (values and gradients),
through Triton's interpreter on CPU, and the fallback's peak memory against the naive path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from diffrl.kernels import selected_logprobs, use_backend
from tests.triton_interpret import DEVICE, requires_triton

N, H, V = 37, 40, 301
TILES = dict(block_n=16, block_v=64, block_h=16, splits=2)


def inputs(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen).to(dtype).to(DEVICE).requires_grad_()
    weight = (torch.randn(V, H, generator=gen) * 0.4).to(dtype).to(DEVICE).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=gen).to(DEVICE)
    return hidden, weight, targets


def fused(hidden, weight, targets, temperature: float = 1.0):
    from diffrl.kernels.logprob_triton import selected_logprobs_triton

    return selected_logprobs_triton(hidden, weight, targets, temperature=temperature, **TILES)


def fallback(hidden, weight, targets, temperature: float = 1.0):
    with use_backend("torch"):
        return selected_logprobs(hidden, weight, targets, temperature=temperature, chunk_rows=8)


def scores_and_grads(fn, hidden, weight, targets, temperature, use_entropy=True, wrt=("h", "w")):
    logp, ent = fn(hidden, weight, targets, temperature)
    coef = torch.linspace(-1.0, 2.0, N, device=DEVICE)
    loss = (logp * coef).sum() + (0.3 * ent.sum() if use_entropy else 0.0)
    grads = torch.autograd.grad(loss, [{"h": hidden, "w": weight}[k] for k in wrt])
    return logp.detach(), ent.detach(), grads


def close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """Within ``rtol`` of the larger tensor's scale (gradients have entries near zero)."""
    return (a.float() - b.float()).abs().max().item() <= rtol * b.float().abs().max().item() + 1e-7


@requires_triton
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_logprob_matches_fallback_fp32(temperature: float) -> None:
    hidden, weight, targets = inputs(0, torch.float32)
    got = scores_and_grads(fused, hidden, weight, targets, temperature)
    want = scores_and_grads(fallback, hidden, weight, targets, temperature)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
    assert all(close(a, b, 1e-5) for a, b in zip(got[2], want[2]))


@requires_triton
@pytest.mark.parametrize(("use_entropy", "wrt"), [(False, ("h",)), (True, ("w",))], ids=["logp-only-dh", "dw-only"])
def test_fused_logprob_partial_gradients(use_entropy: bool, wrt: tuple[str, ...]) -> None:
    """An unused entropy output and a frozen side each skip their part of the backward kernel."""
    hidden, weight, targets = inputs(1, torch.float32)
    got = scores_and_grads(fused, hidden, weight, targets, 0.9, use_entropy, wrt)
    want = scores_and_grads(fallback, hidden, weight, targets, 0.9, use_entropy, wrt)
    assert all(close(a, b, 1e-5) for a, b in zip(got[2], want[2]))


@requires_triton
def test_fused_logprob_bf16() -> None:
    """bf16 inputs: the kernel's fp32 logits equal the fallback's on the same values in fp32; the
    gradients, rounded to bf16 as the fallback rounds them, agree with the bf16 fallback."""
    hidden, weight, targets = inputs(2, torch.bfloat16)
    got = scores_and_grads(fused, hidden, weight, targets, 1.0)
    h32, w32 = (x.detach().float().requires_grad_() for x in (hidden, weight))
    want32 = scores_and_grads(fallback, h32, w32, targets, 1.0)
    assert torch.allclose(got[0], want32[0], atol=1e-5) and torch.allclose(got[1], want32[1], atol=1e-5)
    want = scores_and_grads(fallback, hidden, weight, targets, 1.0)
    assert all(g.dtype == torch.bfloat16 for g in got[2])
    assert all(close(a, b, 2.0**-5) for a, b in zip(got[2], want[2]))


@requires_triton
def test_dispatch_routes_logprob_by_backend_and_dtype() -> None:
    """``triton`` runs the kernel, ``torch`` the fallback; fp64 always takes the fallback."""
    hidden, weight, targets = inputs(3, torch.float32)
    with torch.no_grad(), use_backend("triton"):
        routed = selected_logprobs(hidden, weight, targets)
        fp64 = selected_logprobs(hidden.double(), weight.double(), targets)
    from diffrl.kernels.logprob_triton import selected_logprobs_triton

    with torch.no_grad():
        direct = selected_logprobs_triton(hidden, weight, targets)
        plain64 = fallback(hidden.double(), weight.double(), targets)
    assert torch.equal(routed[0], direct[0]) and torch.equal(routed[1], direct[1])
    assert fp64[0].dtype == torch.float64 and torch.equal(fp64[0], plain64[0])


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from diffrl.kernels import selected_logprobs, use_backend
    path = sys.argv[1]
    torch.manual_seed(0)
    b, l, h_dim, vocab = 4, 1024, 64, 126464
    hidden = torch.randn(b * l, h_dim, requires_grad=True)
    weight = (torch.randn(vocab, h_dim) * 0.1).requires_grad_()
    targets = torch.randint(0, vocab, (b * l,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if path == "chunked":
        with use_backend("torch"):
            logp, _ = selected_logprobs(hidden, weight, targets)
    else:
        logp = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_bytes": (peak - before) * 1024, "logp_sum": float(logp.sum())}))
    """
)


def peak_rss(path: str) -> dict:
    """Growth of a fresh process's peak resident memory while it runs one log-prob path."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_chunked_logprob_peak_memory_is_under_a_quarter_of_naive() -> None:
    """[4, 1024] rows at V=126464, autograd on: the naive path holds [4096, V] fp32 logits and
    log-probs (about 4 GB); the fallback holds a few 64 MiB chunks. Both give the same log-probs."""
    chunked, naive = peak_rss("chunked"), peak_rss("naive")
    logits_bytes = 4 * 1024 * 126464 * 4
    assert naive["peak_bytes"] >= logits_bytes, naive  # the measurement sees the naive logits
    assert chunked["peak_bytes"] < naive["peak_bytes"] / 4, (chunked, naive)
    assert abs(chunked["logp_sum"] - naive["logp_sum"]) < 1e-3 * abs(naive["logp_sum"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fallback_saved_and_recomputed_logits_give_the_plain_values_and_gradients(temperature: float) -> None:
    """Backward from the forward's saved logits (all of them, some, none) against autograd through
    plain log_softmax; ``entropy=False`` skips the entropy and gives the same log-probs and
    gradients of the log-probs."""
    hidden, weight, targets = inputs(6, torch.float64)
    hidden, weight = hidden.detach().cpu().requires_grad_(), weight.detach().cpu().requires_grad_()
    targets = targets.cpu()
    coef = torch.linspace(-1.0, 2.0, N, dtype=torch.float64)
    logp_all = torch.log_softmax(hidden @ weight.T / temperature, -1)
    plain_logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    plain_ent = -(logp_all.exp() * logp_all).sum(-1)
    plain = torch.autograd.grad((plain_logp * coef).sum() + 0.3 * plain_ent.sum(), (hidden, weight), retain_graph=True)
    plain_lp_only = torch.autograd.grad((plain_logp * coef).sum(), (hidden, weight))
    chunk_logits = 8 * V * 8  # fp64 logits of one 8-row chunk: save_bytes below keeps some chunks
    for save_bytes in (0, 2 * chunk_logits, 1 << 30):
        with use_backend("torch"):
            logp, ent = selected_logprobs(hidden, weight, targets, temperature=temperature, chunk_rows=8, save_bytes=save_bytes)
            grads = torch.autograd.grad((logp * coef).sum() + 0.3 * ent.sum(), (hidden, weight))
            logp_only, none = selected_logprobs(hidden, weight, targets, temperature=temperature, entropy=False, chunk_rows=8, save_bytes=save_bytes)
            grads_lp = torch.autograd.grad((logp_only * coef).sum(), (hidden, weight))
        assert none is None
        assert torch.allclose(logp, plain_logp, atol=1e-10) and torch.allclose(ent, plain_ent, atol=1e-10)
        assert torch.allclose(logp_only, plain_logp, atol=1e-10)
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, plain)), save_bytes
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads_lp, plain_lp_only)), save_bytes
