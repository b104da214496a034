"""One denoising step's per-position choice: sample (or argmax) a token and score it.

For the rows that are still masked, compute in one pass over the vocabulary, chunked over rows:
the chosen token (Gumbel-max at ``temperature`` after top-k/top-p, or argmax at 0), its
probability under the untempered model, its log-probability under the sampling distribution, the
top-1 minus top-2 probability margin and the entropy. Nothing of size [rows, vocab] outlives a
chunk. :func:`decode_step_torch` is the exact PyTorch fallback of the fused kernel in
:mod:`diffrl.kernels.decode_triton`; :func:`decode_step` picks one of the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffrl.kernels.dispatch import use_triton
from diffrl.kernels.logprob import rows_per_chunk
from diffrl.rng import STREAM_GUMBEL, counter_uniform


@dataclass
class DecodeResult:
    """Per-row outputs of :func:`decode_step`, each of shape [N].

    ``prob``, ``margin`` (top-1 minus top-2 probability) and ``entropy`` describe the distribution
    chosen by ``stats`` (the raw model's, or the tempered and filtered sampling distribution's);
    ``logprob`` is always the chosen token's log-probability under the sampling distribution.
    """

    token: Tensor
    prob: Tensor
    logprob: Tensor
    margin: Tensor
    entropy: Tensor


def filter_logits(z: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (the top token always stays)."""
    if top_k is not None and 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sorted_z, dim=-1).cumsum(-1)
        drop_sorted = (cum - torch.softmax(sorted_z, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def gumbel_uniforms(noise_keys: Tensor, vocab: int) -> Tensor:
    """Uniforms [N, V] keyed by each row's key and the vocabulary index (float64)."""
    v = torch.arange(vocab, device=noise_keys.device)
    return counter_uniform(STREAM_GUMBEL, noise_keys[:, None], v[None, :])


# The fused kernel keeps top_k + 1 candidates per row, rounded up to a power of two, in one
# vocabulary tile; a wider top-k takes the fallback.
FUSED_MAX_TOP_K = 127


def decode_step(
    hidden: Tensor,
    weight: Tensor,
    *,
    temperature: float,
    noise_keys: Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    suppress_ids: tuple[int, ...] = (),
    stats: str = "model",
    chunk_rows: int | None = None,
) -> DecodeResult:
    """Choose and score a token for each row of ``hidden`` [N, H] under LM head ``weight`` [V, H].

    ``noise_keys`` [N] int64 identify each row's random draw (see :mod:`diffrl.rng`); required
    when ``temperature > 0``. ``suppress_ids`` (e.g. the mask token) can never be chosen.
    ``stats="model"`` scores confidence on the untempered model distribution (LLaDA's rule);
    ``stats="sampling"`` on the tempered, top-k/top-p filtered one (Dream's rule).

    Runs the fused Triton kernel where :func:`diffrl.kernels.dispatch.use_triton` says so and
    ``top_k`` is at most :data:`FUSED_MAX_TOP_K`, the chunked PyTorch fallback otherwise
    (``chunk_rows`` sizes its chunks).
    """
    if stats not in ("model", "sampling"):
        raise ValueError(f"decode stats={stats!r} must be 'model' or 'sampling'")
    if temperature > 0 and noise_keys is None:
        raise ValueError("decode_step with temperature > 0 needs noise_keys")
    vocab = weight.shape[0]
    if any(not 0 <= i < vocab for i in suppress_ids):
        raise ValueError(f"suppress_ids={suppress_ids} must be token ids in [0, {vocab})")
    args = dict(temperature=temperature, noise_keys=noise_keys, top_k=top_k, top_p=top_p, suppress_ids=suppress_ids, stats=stats)
    if hidden.shape[0] and (top_k is None or top_k <= FUSED_MAX_TOP_K) and use_triton(hidden, weight):
        from diffrl.kernels.decode_triton import decode_step_triton

        return decode_step_triton(hidden, weight, **args)
    return decode_step_torch(hidden, weight, **args, chunk_rows=chunk_rows)


def decode_step_torch(
    hidden: Tensor,
    weight: Tensor,
    *,
    temperature: float,
    noise_keys: Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    suppress_ids: tuple[int, ...] = (),
    stats: str = "model",
    chunk_rows: int | None = None,
) -> DecodeResult:
    """The exact PyTorch fallback of :func:`decode_step` (same arguments and results), chunked over rows."""
    n, vocab = hidden.shape[0], weight.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 at least; fp64 stays fp64
    out = {k: hidden.new_empty(n, dtype=acc) for k in ("prob", "logprob", "margin", "entropy")}
    token = torch.empty(n, dtype=torch.long, device=hidden.device)
    # sampling adds int64 hashes and fp64 noise per logit, about 8x the fp32 logits' bytes
    chunk = chunk_rows or max(1, rows_per_chunk(vocab) // (8 if temperature > 0 else 1))
    suppress = torch.tensor(suppress_ids, dtype=torch.long, device=hidden.device)
    for s in range(0, n, chunk):
        logits = (hidden[s : s + chunk] @ weight.T).to(acc)
        if suppress.numel():
            logits.index_fill_(-1, suppress, float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        reshaped = temperature not in (0.0, 1.0) or top_k is not None or top_p is not None
        scaled = logits / temperature if temperature > 0 else logits
        z = torch.log_softmax(filter_logits(scaled, top_k, top_p), dim=-1) if reshaped else logp
        if temperature > 0:
            u = gumbel_uniforms(noise_keys[s : s + chunk], vocab)
            tok = torch.argmax(z.double() - torch.log(-torch.log(u)), dim=-1)
        else:
            tok = torch.argmax(logits, dim=-1)
        sample_logp = z.gather(-1, tok[:, None]).squeeze(-1)
        if stats == "sampling":
            logp = z
        probs = logp.exp()
        top2 = torch.topk(probs, min(2, vocab), dim=-1).values
        token[s : s + chunk] = tok
        out["prob"][s : s + chunk] = probs.gather(-1, tok[:, None]).squeeze(-1)
        out["logprob"][s : s + chunk] = sample_logp
        out["margin"][s : s + chunk] = top2[:, 0] - (top2[:, 1] if vocab > 1 else 0.0)
        out["entropy"][s : s + chunk] = -(probs * logp.masked_fill(probs == 0, 0.0)).sum(-1)
    return DecodeResult(token=token, **out)
