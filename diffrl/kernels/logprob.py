"""Selected-token log-probability (and entropy) from hidden states and the LM head, in chunks.

``log_softmax(h @ W.T)[target]`` is computed a block of rows at a time and the backward pass
recomputes each block's logits, so neither the forward nor the saved activations ever hold
[rows, vocab] for more than one chunk. This is the exact PyTorch fallback of the fused kernel in
:mod:`diffrl.kernels.logprob_triton`; :func:`selected_logprobs` picks one of the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels.dispatch import use_triton

DEFAULT_CHUNK_BYTES = 64 * 1024**2


def rows_per_chunk(vocab: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many rows of fp32 logits fit the chunk budget."""
    return max(1, chunk_bytes // (4 * vocab))


def _logits(h: Tensor, weight: Tensor, temperature: float) -> Tensor:
    # fp32 at least (fp64 stays fp64, which the gradient checks rely on)
    logits = (h @ weight.T).to(torch.promote_types(h.dtype, torch.float32))
    return logits if temperature == 1.0 else logits.div_(temperature)


def _dot_rows(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product without materialising ``a * b``."""
    return torch.einsum("nv,nv->n", a, b)


class _SelectedLogProb(torch.autograd.Function):
    # Each chunk costs one [chunk, vocab] logits buffer plus one more (log-probs forward,
    # probabilities backward); the other passes run in place.
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk: int):  # type: ignore[override]
        n = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        logp = hidden.new_empty(n, dtype=acc)
        ent = hidden.new_empty(n, dtype=acc)
        for s in range(0, n, chunk):
            chunk_logp = torch.log_softmax(_logits(hidden[s : s + chunk], weight, temperature), dim=-1)
            logp[s : s + chunk] = chunk_logp.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
            ent[s : s + chunk] = -_dot_rows(chunk_logp.exp(), chunk_logp)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)  # an unused entropy output then costs nothing in backward
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp: Tensor, g_ent: Tensor):  # type: ignore[override]
        hidden, weight, targets = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        g_h = torch.empty_like(hidden) if need_h else None
        g_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk]
            logits = _logits(h, weight, t)
            probs = torch.softmax(logits, dim=-1)
            # d logp / d z = onehot - p ;  d H / d z = -p * (z - E_p[z])
            if g_ent is not None:
                grad = logits.sub_(_dot_rows(probs, logits)[:, None]).mul_(probs).mul_(-g_ent[s : s + chunk, None])
                if g_logp is not None:
                    grad.addcmul_(probs, -g_logp[s : s + chunk, None])
            else:
                grad = probs.mul_(-g_logp[s : s + chunk, None])
            if g_logp is not None:
                grad.scatter_add_(-1, targets[s : s + chunk, None], g_logp[s : s + chunk, None].to(grad.dtype))
            grad = (grad if t == 1.0 else grad.div_(t)).to(weight.dtype)
            if g_h is not None:
                g_h[s : s + chunk] = grad @ weight
            if g_w is not None:
                g_w += grad.T.to(g_w.dtype) @ h.to(g_w.dtype)
        return g_h, (g_w.to(weight.dtype) if g_w is not None else None), None, None, None


def selected_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row ``log softmax(h W^T / T)[target]`` and entropy [N] (fp32, or fp64 for fp64 inputs).

    ``hidden`` is [N, H] (only the rows that need a score), ``weight`` the LM head [V, H]. Runs
    the fused Triton kernel where :func:`diffrl.kernels.dispatch.use_triton` says so, the chunked
    PyTorch fallback otherwise; ``chunk_rows`` sizes the fallback's chunks.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] with targets [N]; got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32) + 0 * weight.sum()
        return empty, empty
    if use_triton(hidden, weight):
        from diffrl.kernels.logprob_triton import selected_logprobs_triton

        return selected_logprobs_triton(hidden, weight, targets, temperature=temperature)
    chunk = chunk_rows or rows_per_chunk(weight.shape[0])
    return _SelectedLogProb.apply(hidden, weight, targets.long(), float(temperature), int(chunk))
