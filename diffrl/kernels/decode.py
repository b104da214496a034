"""One denoising step's per-position choice: sample (or argmax) a token and score it.

For the rows that are still masked, compute in one pass over the vocabulary the chosen token, its
log-probability under the sampling distribution and, as asked by ``needs``, its probability, the
top-1 minus top-2 probability margin and the entropy. Nothing of size [rows, vocab] outlives a
vocabulary chunk.

How a token is drawn (the same in the fallback, the fused kernel and :func:`decode_step_reference`,
so all three choose the same token for the same key; every draw depends only on its row's key):

- temperature 0: the first argmax.
- temperature > 0 without filters, in two exact stages that need no noise per logit: the vocabulary
  is cut into groups of :data:`GROUP` consecutive ids, a Gumbel-max over the groups' tempered
  log-masses picks a group with probability its mass, then a Gumbel-max over the group's
  logits picks the token with probability ``p_i / mass``; the product is ``p_i``. Only the winning
  group's logits are needed for the second stage and they are recomputed (``GROUP`` dot products
  per row).
- with top-k / top-p: a Gumbel-max over the kept tokens, which are found among the row's largest
  logits (``topk(K)`` merged chunk by chunk, ``K`` grown until it holds the kept set; never a sort
  of the vocabulary unless the kept set is a large share of it).

:func:`decode_step_torch` is the exact PyTorch fallback of the fused kernel in
:mod:`diffrl.kernels.decode_triton`; :func:`decode_step` picks one of the two.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor

from diffrl.kernels.dispatch import use_triton
from diffrl.kernels.logprob import DEFAULT_CHUNK_BYTES
from diffrl.kernels.partials import Scratch, entropy_of, lse_of, merge_partials, reduce_partials, softmax_partials

# Bytes of one [rows, vocabulary chunk] fp32 buffer of the fallback (it keeps three): small enough
# that the passes over a chunk run from cache.
DECODE_CHUNK_BYTES = 8 * 1024**2
from diffrl.rng import STREAM_GUMBEL, counter_uniform

# Width of a sampling group; the fused kernel's vocabulary tile must be a multiple of it.
GROUP = 64
# Group draws take their uniforms at these counters, apart from the per-token ones (ids < 2^31).
GROUP_COUNTER = 1 << 31
# Per-position statistics a caller can ask for; the token and its log-probability always come.
ALL_STATS = frozenset({"prob", "margin", "entropy"})
# First candidate list for top-k / top-p, and how it grows; past FULL_SHARE of the vocabulary a
# row's kept set is found by sorting it (it is then a large share of the vocabulary anyway).
FIRST_CANDIDATES = 64
GROWTH = 8
FULL_SHARE = 8

# The fused kernel keeps top_k + 1 candidates per row, rounded up to a power of two, in one
# vocabulary tile; a wider top-k takes the fallback.
FUSED_MAX_TOP_K = 127


@dataclass
class DecodeResult:
    """Per-row outputs of :func:`decode_step`, each of shape [N] (``None`` when not in ``needs``).

    ``prob``, ``margin`` (top-1 minus top-2 probability) and ``entropy`` describe the distribution
    chosen by ``stats`` (the raw model's, or the tempered and filtered sampling distribution's);
    ``logprob`` is always the chosen token's log-probability under the sampling distribution.
    """

    token: Tensor
    logprob: Tensor
    prob: Tensor | None = None
    margin: Tensor | None = None
    entropy: Tensor | None = None


def filter_logits(z: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (the top token always stays)."""
    if top_k is not None and 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        p = torch.softmax(sorted_z, dim=-1)
        drop_sorted = (p.cumsum(-1) - p) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def gumbel_uniforms(noise_keys: Tensor, counters: Tensor | int) -> Tensor:
    """Uniforms (float64) keyed by each row's key [N] and a counter: a vocabulary id, or
    ``GROUP_COUNTER + g`` for group ``g``. An int ``counters`` means every id below it [N, counters]."""
    if isinstance(counters, int):
        counters = torch.arange(counters, device=noise_keys.device)[None, :]
    return counter_uniform(STREAM_GUMBEL, noise_keys[:, None], counters)


def gumbel(noise_keys: Tensor, counters: Tensor | int) -> Tensor:
    """Standard Gumbel noise ``-log(-log u)`` for :func:`gumbel_uniforms`."""
    return -torch.log(-torch.log(gumbel_uniforms(noise_keys, counters)))


def wants_filter(vocab: int, top_k: int | None, top_p: float | None) -> bool:
    """Whether top-k or top-p removes anything."""
    return (top_k is not None and 0 < top_k < vocab) or (top_p is not None and top_p < 1.0)


def check_args(vocab: int, temperature: float, noise_keys: Tensor | None, suppress_ids: tuple[int, ...], stats: str, needs: Collection[str]) -> frozenset[str]:
    """Validate :func:`decode_step`'s arguments; returns ``needs`` as a set."""
    if stats not in ("model", "sampling"):
        raise ValueError(f"decode stats={stats!r} must be 'model' or 'sampling'")
    if temperature > 0 and noise_keys is None:
        raise ValueError("decode_step with temperature > 0 needs noise_keys")
    if any(not 0 <= i < vocab for i in suppress_ids):
        raise ValueError(f"suppress_ids={suppress_ids} must be token ids in [0, {vocab})")
    needs = frozenset(needs)
    if needs - ALL_STATS:
        raise ValueError(f"decode needs={sorted(needs)} may only name {sorted(ALL_STATS)}")
    return needs


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
    needs: Collection[str] = ALL_STATS,
    chunk_bytes: int = DECODE_CHUNK_BYTES,
) -> DecodeResult:
    """Choose and score a token for each row of ``hidden`` [N, H] under LM head ``weight`` [V, H].

    ``noise_keys`` [N] int64 identify each row's random draw (see :mod:`diffrl.rng`); required
    when ``temperature > 0``. ``suppress_ids`` (e.g. the mask token) can never be chosen.
    ``stats="model"`` scores confidence on the untempered model distribution (LLaDA's rule);
    ``stats="sampling"`` on the tempered, top-k/top-p filtered one (Dream's rule). ``needs`` names
    the statistics to compute among :data:`ALL_STATS` (the others come back ``None`` and cost
    nothing): a low-confidence rule needs ``{"prob"}``, a margin rule ``{"margin"}``.

    Runs the fused Triton kernel where :func:`diffrl.kernels.dispatch.use_triton` says so and
    ``top_k`` is at most :data:`FUSED_MAX_TOP_K`, the chunked PyTorch fallback otherwise
    (``chunk_bytes`` bounds its [rows, vocabulary chunk] buffers).
    """
    needs = check_args(weight.shape[0], temperature, noise_keys, suppress_ids, stats, needs)
    args = dict(temperature=temperature, noise_keys=noise_keys, top_k=top_k, top_p=top_p, suppress_ids=suppress_ids, stats=stats, needs=needs)
    if hidden.shape[0] and (top_k is None or top_k <= FUSED_MAX_TOP_K) and use_triton(hidden, weight):
        from diffrl.kernels.decode_triton import decode_step_triton

        return decode_step_triton(hidden, weight, **args)
    return decode_step_torch(hidden, weight, **args, chunk_bytes=chunk_bytes)


# ---------------------------------------------------------------------------------------------
# The two-stage draw without filters.


def group_pass(z: Tensor, start: int, noise_keys: Tensor, scale: float, with_dot: bool, scratch: Scratch) -> tuple[tuple, Tensor, Tensor, Tensor]:
    """First stage on one chunk of logits ``z`` [n, c] (``c`` a multiple of GROUP, the chunk
    starting at vocabulary id ``start``) tempered by ``scale``: the chunk's softmax partials, built
    from its groups', and per row the best group's Gumbel score (float64), index and logits [n, GROUP]."""
    n, c = z.shape
    zg = z.view(n, c // GROUP, GROUP)
    gm, gs, gt = softmax_partials(zg, with_dot, scale, scratch)
    first = start // GROUP
    groups = torch.arange(first, first + c // GROUP, device=z.device)
    score, arg = (gm + torch.log(gs)).double().add_(gumbel(noise_keys, GROUP_COUNTER + groups[None, :])).max(-1)
    return reduce_partials(gm, gs, gt), score, arg + first, zg[torch.arange(n, device=z.device), arg]


def group_logits(hidden: Tensor, weight: Tensor, group: Tensor, suppress: Tensor, acc: torch.dtype) -> Tensor:
    """The logits [n, GROUP] of each row's ``group`` [n] recomputed from the LM head (``-inf`` for
    suppressed ids and past the vocabulary)."""
    vocab = weight.shape[0]
    ids = group[:, None] * GROUP + torch.arange(GROUP, device=group.device)[None, :]
    ids_c = ids.clamp(max=vocab - 1)
    z = torch.empty(ids.shape, dtype=acc, device=hidden.device)
    rows = max(1, DEFAULT_CHUNK_BYTES // (4 * GROUP * weight.shape[1]))
    for s in range(0, ids.shape[0], rows):
        # in the accumulation dtype, as the kernel's logits are
        z[s : s + rows] = torch.bmm(weight[ids_c[s : s + rows]].to(acc), hidden[s : s + rows, :, None].to(acc)).squeeze(-1)
    return z.masked_fill_((ids >= vocab) | torch.isin(ids_c, suppress), float("-inf"))


def pick_in_group(z: Tensor, group: Tensor, noise_keys: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Second stage: Gumbel-max over each row's group logits ``z`` [n, GROUP] at ``temperature``.
    Returns the token and its (untempered) logit."""
    ids = group[:, None] * GROUP + torch.arange(GROUP, device=group.device)[None, :]
    score = (z / temperature).double() + gumbel(noise_keys, ids)
    pick = score.argmax(-1, keepdim=True)
    return ids.gather(-1, pick)[:, 0], z.gather(-1, pick)[:, 0]


# ---------------------------------------------------------------------------------------------
# Filtered sampling from candidates.


def rank_candidates(values: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of candidate logits ``values`` [n, m] with vocabulary ids ``index`` by
    (logit descending, id ascending)."""
    by_index = index.argsort(dim=-1)
    values, index = values.gather(-1, by_index), index.gather(-1, by_index)
    order = values.argsort(dim=-1, descending=True, stable=True)[:, :k]
    return values.gather(-1, order), index.gather(-1, order)


def finish_from_candidates(
    values: Tensor,
    index: Tensor,
    *,
    vocab: int,
    temperature: float,
    noise_keys: Tensor | None,
    top_k: int | None,
    top_p: float | None,
    stats: str,
    needs: frozenset[str],
    lse_t: Tensor,
    model: tuple | None,
) -> tuple[DecodeResult, Tensor]:
    """Filter, draw and score from each row's largest logits ``values`` [n, K] (ranked, ids
    ``index``). ``lse_t`` is the logsumexp of all tempered logits (top-p mass without top-k),
    ``model`` the untempered partials (m, s, t) or ``None`` when ``stats="sampling"``.

    Returns the result and a bool [n] of rows whose kept set may extend past the candidates (it
    reaches the last one): those must be redone with more candidates."""
    n, k_cand = values.shape
    t_samp = temperature if temperature > 0 else 1.0
    scaled = values / t_samp
    keep = scaled > float("-inf")
    lse_kept = lse_t
    if top_k is not None and 0 < top_k < vocab:
        keep &= scaled >= scaled[:, min(top_k, k_cand) - 1 : min(top_k, k_cand)]
        lse_kept = torch.logsumexp(scaled.masked_fill(~keep, float("-inf")), dim=-1)
    if top_p is not None and top_p < 1.0:
        p = torch.exp(scaled.masked_fill(~keep, float("-inf")) - lse_kept[:, None])
        keep &= (p.cumsum(-1) - p) < top_p
    logz = torch.log_softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
    if temperature > 0:
        pick = torch.argmax(logz.double() + gumbel(noise_keys, index), dim=-1, keepdim=True)
    else:
        pick = torch.zeros(n, 1, dtype=torch.long, device=values.device)  # candidate 0 is the first argmax
    token = index.gather(-1, pick)[:, 0]
    result = DecodeResult(token=token, logprob=logz.gather(-1, pick)[:, 0])
    if stats == "model":
        if needs:
            lse = lse_of(model)
        if "prob" in needs:
            result.prob = torch.exp(values.gather(-1, pick)[:, 0] - lse)
        if "margin" in needs:
            result.margin = torch.exp(values[:, 0] - lse) - torch.exp(values[:, 1] - lse) if k_cand > 1 else torch.exp(values[:, 0] - lse)
        if "entropy" in needs:
            result.entropy = entropy_of(model)
    else:
        pz = logz.exp()
        if "prob" in needs:
            result.prob = torch.exp(result.logprob)
        if "margin" in needs:
            result.margin = pz[:, 0] - pz[:, 1] if k_cand > 1 else pz[:, 0]
        if "entropy" in needs:
            result.entropy = -(pz * logz.masked_fill(~keep, 0.0)).sum(-1)
    unsure = keep[:, -1] if vocab > k_cand else torch.zeros_like(keep[:, -1])
    return result, unsure


def candidates_for(vocab: int, top_k: int | None, top_p: float | None, first: int = FIRST_CANDIDATES) -> int:
    """How many largest logits per row to keep first: ``top_k + 1`` for top-k (one more than
    needed, to see a tie at the k-th), ``first`` for top-p alone; at most the vocabulary."""
    if top_k is not None and 0 < top_k < vocab:
        return min(vocab, top_k + 1)
    return min(vocab, first)


# ---------------------------------------------------------------------------------------------
# The fallback.


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
    needs: Collection[str] = ALL_STATS,
    chunk_bytes: int = DECODE_CHUNK_BYTES,
    candidates: int | None = None,
) -> DecodeResult:
    """The exact PyTorch fallback of :func:`decode_step` (same arguments and results).

    One pass over the vocabulary in chunks of columns, all rows at once (the LM head is read once),
    keeping per row only running partials: softmax sums, the top-2 or argmax, the best sampling
    group, or the ``candidates`` largest logits when filtering (default :func:`candidates_for`)."""
    needs = check_args(weight.shape[0], temperature, noise_keys, suppress_ids, stats, needs)
    n, vocab = hidden.shape[0], weight.shape[0]
    device = hidden.device
    acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32 at least; fp64 stays fp64
    top_k_on, top_p_on = top_k is not None and 0 < top_k < vocab, top_p is not None and top_p < 1.0
    filtered = top_k_on or top_p_on
    t_samp = temperature if temperature > 0 else 1.0
    sample_groups = temperature > 0 and not filtered
    same = t_samp == 1.0 and not filtered  # the sampling distribution is the model's
    # What the rows need, and nothing more: tempered partials for the sampling distribution's
    # normaliser, model partials for stats="model", the top-2 for argmax and margin.
    want_tempered = sample_groups or (top_p_on and not top_k_on)
    tempered_dot = "entropy" in needs and (same or stats == "sampling") and not filtered
    want_model = (temperature == 0 and not filtered) or (stats == "model" and bool(needs) and not (same and sample_groups))
    model_dot = "entropy" in needs and (stats == "model" or same)
    want_top2 = not filtered and (temperature == 0 or "margin" in needs)
    k_cand = (candidates or candidates_for(vocab, top_k, top_p)) if filtered else 0

    cols = max(GROUP, (chunk_bytes // (4 * max(n, 1))) // GROUP * GROUP)
    model = tempered = None
    v1 = v2 = torch.full((n,), float("-inf"), dtype=acc, device=device)
    i1 = torch.zeros(n, dtype=torch.long, device=device)
    best = torch.full((n,), float("-inf"), dtype=torch.float64, device=device)
    best_group = torch.zeros(n, dtype=torch.long, device=device)
    cand_v = torch.empty(n, 0, dtype=acc, device=device)
    cand_i = torch.empty(n, 0, dtype=torch.long, device=device)
    best_z = torch.full((n, GROUP), float("-inf"), dtype=acc, device=device) if sample_groups else None
    scratch = Scratch()
    for start in range(0, vocab, cols):
        width = min(cols, vocab - start)
        padded = -(-width // GROUP) * GROUP if sample_groups else width
        z = scratch.get("z", (n, padded), acc, device)
        if hidden.dtype != acc:
            z[:, :width] = hidden @ weight[start : start + width].T
        elif padded > width:
            z[:, :width] = hidden @ weight[start : start + width].T
        else:
            torch.mm(hidden, weight[start : start + width].T, out=z)
        z[:, width:] = float("-inf")
        # The ids are host ints: filling their columns needs no device-side lookup (and no sync).
        for i in suppress_ids:
            if start <= i < start + width:
                z[:, i - start] = float("-inf")
        if sample_groups:
            part, score, group, zg = group_pass(z, start, noise_keys, 1.0 / t_samp, tempered_dot, scratch)
            better = score > best
            best, best_group = torch.where(better, score, best), torch.where(better, group, best_group)
            best_z = torch.where(better[:, None], zg, best_z)
            tempered = merge_partials(tempered, part)
        elif want_tempered:
            tempered = merge_partials(tempered, softmax_partials(z, False, 1.0 / t_samp, scratch))
        if want_model:
            model = merge_partials(model, softmax_partials(z, model_dot, scratch=scratch))
        if want_top2:
            tv, ti = z.topk(min(2, z.shape[1]), dim=-1)
            if tv.shape[1] == 1:
                tv, ti = torch.cat((tv, torch.full_like(tv, float("-inf"))), 1), torch.cat((ti, ti), 1)
            new_first = tv[:, 0] > v1
            v2 = torch.where(new_first, torch.maximum(v1, tv[:, 1]), torch.maximum(v2, tv[:, 0]))
            i1 = torch.where(new_first, ti[:, 0] + start, i1)
            v1 = torch.maximum(v1, tv[:, 0])
        if k_cand:
            tv, ti = z.topk(min(k_cand, width), dim=-1)
            cand_v, cand_i = torch.cat((cand_v, tv), 1), torch.cat((cand_i, ti + start), 1)
            if cand_v.shape[1] > k_cand:
                keep = cand_v.topk(k_cand, dim=-1).indices
                cand_v, cand_i = cand_v.gather(-1, keep), cand_i.gather(-1, keep)
    if same and sample_groups:
        model = tempered

    if filtered:
        values, index = rank_candidates(cand_v, cand_i, k_cand)
        lse_t = lse_of(tempered) if tempered is not None else None
        result, unsure = finish_from_candidates(
            values, index, vocab=vocab, temperature=temperature, noise_keys=noise_keys, top_k=top_k, top_p=top_p,
            stats=stats, needs=needs, lse_t=lse_t, model=model,
        )
        redo = unsure.nonzero().squeeze(1)
        if redo.numel():
            sub = dict(temperature=temperature, noise_keys=None if noise_keys is None else noise_keys[redo], top_k=top_k, top_p=top_p,
                       suppress_ids=suppress_ids, stats=stats, needs=needs)
            if k_cand * GROWTH * FULL_SHARE > vocab:
                again = decode_step_reference(hidden[redo], weight, **sub)
            else:
                again = decode_step_torch(hidden[redo], weight, **sub, chunk_bytes=chunk_bytes, candidates=k_cand * GROWTH)
            for name in ("token", "logprob", *needs):
                getattr(result, name)[redo] = getattr(again, name).to(getattr(result, name).dtype)
        return result

    if temperature > 0:
        token, z_tok = pick_in_group(best_z, best_group, noise_keys, t_samp)
    else:
        token, z_tok = i1, v1
    model_side = stats == "model" or same
    scored = model if model_side else tempered
    return score_unfiltered(
        token, z_tok, t_samp=t_samp, lse_t=lse_of(tempered if temperature > 0 else model), model_side=model_side, needs=needs,
        lse=lse_of(model) if model_side and needs else None, v1=v1, v2=v2, entropy=entropy_of(scored) if "entropy" in needs else None,
    )


def score_unfiltered(
    token: Tensor,
    z_tok: Tensor,
    *,
    t_samp: float,
    lse_t: Tensor,
    model_side: bool,
    needs: frozenset[str],
    lse: Tensor | None,
    v1: Tensor,
    v2: Tensor,
    entropy: Tensor | None,
) -> DecodeResult:
    """The result of an unfiltered step from per-row sums: the token's logit ``z_tok``, the
    logsumexp of the tempered (``lse_t``) and of the model (``lse``) logits, the top-2 logits and
    the entropy of the scored distribution (the model's when ``model_side``, else the tempered one)."""
    result = DecodeResult(token=token, logprob=z_tok / t_samp - lse_t, entropy=entropy)
    if model_side:
        if "prob" in needs:
            result.prob = torch.exp(z_tok - lse)
        if "margin" in needs:
            result.margin = torch.exp(v1 - lse) - torch.exp(v2 - lse)
    else:
        if "prob" in needs:
            result.prob = torch.exp(result.logprob)
        if "margin" in needs:
            result.margin = torch.exp(v1 / t_samp - lse_t) - torch.exp(v2 / t_samp - lse_t)
    return result


def decode_step_reference(
    hidden: Tensor,
    weight: Tensor,
    *,
    temperature: float,
    noise_keys: Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    suppress_ids: tuple[int, ...] = (),
    stats: str = "model",
    needs: Collection[str] = ALL_STATS,
) -> DecodeResult:
    """The plain definition of :func:`decode_step` on full [N, V] logits (sorts for top-p): what
    the tests compare against, and the fallback's last resort for rows whose kept set is a large
    share of the vocabulary."""
    needs = check_args(weight.shape[0], temperature, noise_keys, suppress_ids, stats, needs)
    vocab = weight.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)
    logits = (hidden @ weight.T).to(acc)
    if suppress_ids:
        logits[:, list(suppress_ids)] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    filtered = wants_filter(vocab, top_k, top_p)
    t_samp = temperature if temperature > 0 else 1.0
    z = torch.log_softmax(filter_logits(logits / t_samp, top_k, top_p), dim=-1) if filtered or t_samp != 1.0 else logp
    if temperature > 0 and filtered:
        tok = torch.argmax(z.double() + gumbel(noise_keys, vocab), dim=-1)
    elif temperature > 0:
        padded = -(-vocab // GROUP) * GROUP
        zg = torch.nn.functional.pad(z, (0, padded - vocab), value=float("-inf")).view(len(z), -1, GROUP)
        groups = torch.arange(padded // GROUP, device=z.device)
        group = (torch.logsumexp(zg, -1).double() + gumbel(noise_keys, GROUP_COUNTER + groups[None, :])).argmax(-1)
        inside = zg[torch.arange(len(z)), group].double() + gumbel(noise_keys, group[:, None] * GROUP + torch.arange(GROUP, device=z.device))
        tok = group * GROUP + inside.argmax(-1)
    else:
        tok = torch.argmax(logits, dim=-1)
    dist = z if stats == "sampling" else logp
    probs = dist.exp()
    top2 = torch.topk(probs, min(2, vocab), dim=-1).values
    result = DecodeResult(token=tok, logprob=z.gather(-1, tok[:, None]).squeeze(-1))
    if "prob" in needs:
        result.prob = probs.gather(-1, tok[:, None]).squeeze(-1)
    if "margin" in needs:
        result.margin = top2[:, 0] - (top2[:, 1] if vocab > 1 else 0.0)
    if "entropy" in needs:
        result.entropy = -(probs * dist.masked_fill(probs == 0, 0.0)).sum(-1)
    return result
