"""Selected-token log-probability (and entropy) from hidden states and the LM head, in chunks.

``log_softmax(h @ W.T / T)[target]`` is computed one vocabulary chunk at a time for a block of
rows (every row at once unless ``chunk_rows`` says otherwise), keeping per row only running
softmax sums, so the LM head is read once and no [rows, vocab] tensor outlives a chunk. The
backward pass reuses the forward's logits where they fit ``save_bytes`` and recomputes only the
chunks that do not; the entropy is computed only when asked for. This is the exact PyTorch
fallback of the fused kernel in :mod:`diffrl.kernels.logprob_triton`; :func:`selected_logprobs`
picks one of the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels.dispatch import use_triton
from diffrl.kernels.partials import Scratch, merge_partials, row_dot, softmax_partials

DEFAULT_CHUNK_BYTES = 64 * 1024**2
# One [rows, vocabulary chunk] fp32 buffer: small enough for the passes over it to run from cache.
VOCAB_CHUNK_BYTES = 8 * 1024**2
# Forward logits kept for the backward pass, at most; past it the backward recomputes them.
DEFAULT_SAVE_BYTES = 256 * 1024**2


def vocab_chunks(rows: int, vocab: int, chunk_bytes: int = VOCAB_CHUNK_BYTES) -> list[tuple[int, int]]:
    """(start, stop) of the vocabulary chunks whose [rows, chunk] fp32 logits fit ``chunk_bytes``."""
    cols = max(64, chunk_bytes // (4 * max(rows, 1)))
    return [(v, min(v + cols, vocab)) for v in range(0, vocab, cols)]


class _SelectedLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk: int, with_entropy: bool, save_bytes: int):  # type: ignore[override]
        n = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        lse = hidden.new_empty(n, dtype=acc)
        ent = hidden.new_empty(n, dtype=acc) if with_entropy else None
        scratch, saved, budget = Scratch(), {}, save_bytes if any(ctx.needs_input_grad[:2]) else 0
        for r in range(0, n, chunk):
            h = hidden[r : r + chunk]
            part = None
            for v0, v1 in vocab_chunks(h.shape[0], weight.shape[0]):
                size = h.shape[0] * (v1 - v0) * 4
                keep = size <= budget
                z = _logits(h, weight[v0:v1], temperature, None if keep else scratch.get("z", (h.shape[0], v1 - v0), acc, h.device))
                if keep:
                    saved[(r, v0)], budget = z, budget - size
                part = merge_partials(part, softmax_partials(z, with_entropy, scratch=scratch))
            lse[r : r + chunk] = part[0] + torch.log(part[1])
            if with_entropy:
                ent[r : r + chunk] = torch.log(part[1]) - part[2] / part[1]
        # the target's logit directly: one dot product per row
        z_t = row_dot(hidden.to(acc), weight[targets].to(acc)) / temperature
        ctx.save_for_backward(hidden, weight, targets, lse, ent if with_entropy else lse)
        ctx.temperature, ctx.chunk, ctx.with_entropy, ctx.saved = temperature, chunk, with_entropy, saved
        ctx.set_materialize_grads(False)  # an unused entropy output then costs nothing in backward
        return z_t - lse, ent

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_ent: Tensor | None):  # type: ignore[override]
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        t, chunk, saved = ctx.temperature, ctx.chunk, ctx.saved
        if not ctx.with_entropy:
            g_ent = None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        g_h = torch.zeros_like(hidden, dtype=acc) if need_h else None
        g_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        scratch = Scratch()
        n = hidden.shape[0]
        zero = hidden.new_zeros(n, dtype=acc)
        g_lp = g_logp if g_logp is not None else zero
        # d logp / d z = onehot - p ;  d H / d z = -p (log p + H): the gradient is p * (a + b log p)
        a = -g_lp - (g_ent * ent if g_ent is not None else zero)
        b = -g_ent if g_ent is not None else None
        for r in range(0, n, chunk):
            h = hidden[r : r + chunk].to(acc)
            rows = slice(r, r + chunk)
            for v0, v1 in vocab_chunks(h.shape[0], weight.shape[0]):
                z = saved.pop((r, v0), None)
                if z is None:
                    z = _logits(hidden[rows], weight[v0:v1], t, scratch.get("z", (h.shape[0], v1 - v0), acc, h.device))
                logp = z.sub_(lse[rows, None])  # the saved logits are used once: in place
                if b is None:
                    grad = logp.exp_().mul_(a[rows, None])
                else:
                    p = torch.exp(logp, out=scratch.like("p", logp))
                    grad = logp.mul_(b[rows, None]).add_(a[rows, None]).mul_(p)
                if g_logp is not None:
                    here = ((targets[rows] >= v0) & (targets[rows] < v1)).nonzero().squeeze(1)
                    grad[here, targets[rows][here] - v0] += g_logp[rows][here].to(grad.dtype)
                if t != 1.0:
                    grad.div_(t)
                if g_h is not None:
                    g_h[rows].addmm_(grad, weight[v0:v1].to(acc))
                if g_w is not None:
                    g_w[v0:v1].addmm_(grad.T, h)
        return (
            None if g_h is None else g_h.to(hidden.dtype),
            None if g_w is None else g_w.to(weight.dtype),
            None, None, None, None, None,
        )


def _logits(h: Tensor, weight: Tensor, temperature: float, out: Tensor | None) -> Tensor:
    """fp32 at least (fp64 stays fp64, which the gradient checks rely on) logits / temperature."""
    acc = torch.promote_types(h.dtype, torch.float32)
    if out is not None and h.dtype == acc and weight.dtype == acc:
        z = torch.mm(h, weight.T, out=out)
    else:
        z = (h @ weight.T).to(acc)
    return z if temperature == 1.0 else z.div_(temperature)


def selected_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = True,
    chunk_rows: int | None = None,
    save_bytes: int = DEFAULT_SAVE_BYTES,
) -> tuple[Tensor, Tensor | None]:
    """Per-row ``log softmax(h W^T / T)[target]`` and entropy [N] (fp32, or fp64 for fp64 inputs).

    ``hidden`` is [N, H] (only the rows that need a score), ``weight`` the LM head [V, H]. Runs
    the fused Triton kernel where :func:`diffrl.kernels.dispatch.use_triton` says so, the chunked
    PyTorch fallback otherwise. ``entropy=False`` returns ``None`` for it and the fallback skips
    computing it. The fallback works on ``chunk_rows`` rows at a time (default: all) and keeps at
    most ``save_bytes`` of forward logits for the backward pass.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] with targets [N]; got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32) + 0 * weight.sum()
        return empty, (empty if entropy else None)
    if use_triton(hidden, weight):
        from diffrl.kernels.logprob_triton import selected_logprobs_triton

        logp, ent = selected_logprobs_triton(hidden, weight, targets, temperature=temperature)
        return logp, (ent if entropy else None)
    chunk = chunk_rows or hidden.shape[0]
    return _SelectedLogProb.apply(hidden, weight, targets.long(), float(temperature), int(chunk), bool(entropy), int(save_bytes))
