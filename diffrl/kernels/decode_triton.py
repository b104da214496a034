"""Fused decode step: choose and score a token per row in one pass over the vocabulary.

Every program walks its vocabulary split tile by tile (see :mod:`diffrl.kernels.lmhead_triton`)
and keeps, per row: the online logsumexp and entropy sums of the model distribution and of the
tempered one, the top-2 logits and the argmax, and, when sampling without filters, the first stage
of :mod:`diffrl.kernels.decode`'s two-stage draw: each tile is cut into groups of ``GROUP`` ids and
the best Gumbel score of a group's tempered log-mass is kept. The second stage (a Gumbel-max over
the winning group's logits, recomputed) is the fallback's own PyTorch code. The Gumbel uniforms are
:mod:`diffrl.rng`'s counter hash recomputed with uint32 arithmetic, bit for bit, so the kernel and
the fallback sample the same token.

Top-k / top-p take a second, small pass. The kernel also keeps each row's ``K`` largest logits
and their indices (:func:`insert_candidates`); the filters, the Gumbel draw over the survivors and
the sampling-distribution statistics are then computed in PyTorch on those [rows, K] candidates. A row is exact when its kept set ends inside the
candidates; a row whose kept set reaches the last candidate (a top-p nucleus wider than ``K``,
or a tie at the k-th logit) is recomputed by the PyTorch fallback.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from diffrl.kernels.decode import (
    ALL_STATS,
    GROUP,
    GROUP_COUNTER,
    DecodeResult,
    decode_step_torch,
    finish_from_candidates,
    group_logits,
    pick_in_group,
    rank_candidates,
)
from diffrl.kernels.lmhead_triton import (
    check_lm_head,
    contiguous_rows,
    dot_precision,
    logits_tile,
    merge_softmax_partials,
    online_softmax_update,
    program_rows,
    program_tiles,
    vocab_grid,
)
from diffrl.rng import _C1, _C2, _GOLDEN, STREAM_GUMBEL, counter_hash

TOP_P_CANDIDATES = 64

GOLDEN = tl.constexpr(_GOLDEN)
C1 = tl.constexpr(_C1)
C2 = tl.constexpr(_C2)
SAMPLE_GROUP = tl.constexpr(GROUP)
GROUP_BASE = tl.constexpr(GROUP_COUNTER)

# Float planes of the per-split partials, in order.
_F32 = ("m", "s", "t", "m_t", "s_t", "t_t", "v1", "v2")


@triton.jit
def counter_bits(row_hash, cols):
    """uint32 ``counter_hash(STREAM_GUMBEL, key, col)`` [BLOCK_N, BLOCK_V] from ``row_hash``
    [BLOCK_N] ``= counter_hash(STREAM_GUMBEL, key)``: the last mixing round of diffrl.rng.

    diffrl.rng adds the golden constant in int64, so the sum can carry into bit 32, and the
    following ``x ^ (x >> 16)`` moves that bit to bit 16: the carry is put back explicitly.
    """
    a = row_hash.to(tl.uint32)[:, None] ^ cols.to(tl.uint32)[None, :]
    x = a + GOLDEN
    carry = (x < a).to(tl.uint32)
    x = x ^ (x >> 16) ^ (carry << 16)
    x = x * C1
    x = x ^ (x >> 15)
    x = x * C2
    return x ^ (x >> 16)


@triton.jit
def gumbel_noise(row_hash, cols):
    """``-log(-log u)`` in fp64 with ``u = counter_uniform(STREAM_GUMBEL, key, col)``."""
    u = (counter_bits(row_hash, cols).to(tl.float64) + 0.5) / 4294967296.0
    return -tl.log(-tl.log(u))


@triton.jit
def insert_candidates(cand_v, cand_i, z, cols):
    """Fold tile ``z`` into each row's running ``K`` largest logits ``cand_v`` and their indices
    ``cand_i`` (unordered), ranking by (logit descending, index ascending).

    Tiles come in index order, so a tile's entry displaces a candidate only if it is strictly
    larger than the smallest one; the candidate displaced is the smallest, the latest on ties.
    The loop runs as often as the busiest row of the block inserts, a few times per tile once the
    candidates have settled.
    """
    slots = tl.arange(0, cand_v.shape[1])
    floor = tl.min(cand_v, axis=1)
    best = tl.max(z, axis=1)
    while tl.max((best > floor).to(tl.int32), axis=0) > 0:
        arg = tl.argmax(z, axis=1, tie_break_left=True)
        worst = tl.argmax(tl.where(cand_v == floor[:, None], cand_i, -1), axis=1, tie_break_left=True)
        put = (best > floor)[:, None] & (slots[None, :] == worst[:, None])
        cand_v = tl.where(put, best[:, None], cand_v)
        cand_i = tl.where(put, tl.min(cols) + arg[:, None], cand_i)
        z = tl.where(cols[None, :] == tl.min(cols) + arg[:, None], float("-inf"), z)
        floor = tl.min(cand_v, axis=1)
        best = tl.max(z, axis=1)
    return cand_v, cand_i


@triton.jit
def _decode_kernel(
    h_ptr,
    w_ptr,
    suppress_ptr,
    row_hash_ptr,
    f32_ptr,
    i64_ptr,
    score_ptr,
    cand_v_ptr,
    cand_i_ptr,
    n_rows,
    vocab,
    n_hidden,
    stride_h,
    stride_w,
    temperature,
    tiles_per_split,
    SAMPLE: tl.constexpr,
    N_CAND: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, row_ok = program_rows(n_rows, BLOCK_N)
    lanes = tl.arange(0, BLOCK_V)
    neg_inf = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    zeros = tl.zeros((BLOCK_N,), tl.float32)
    m, s, t = neg_inf, zeros, zeros
    m_t, s_t, t_t = neg_inf, zeros, zeros
    v1, v2 = neg_inf, neg_inf
    i1 = tl.zeros((BLOCK_N,), tl.int64)
    if SAMPLE:
        row_hash = tl.load(row_hash_ptr + rows, mask=row_ok, other=0)
        best = tl.full((BLOCK_N,), float("-inf"), tl.float64)
        i_best = tl.zeros((BLOCK_N,), tl.int64)
    if N_CAND > 0:
        cand_v = tl.full((BLOCK_N, N_CAND), float("-inf"), tl.float32)
        cand_i = tl.full((BLOCK_N, N_CAND), 2147483647, tl.int32)
    first, last = program_tiles(vocab, tiles_per_split, BLOCK_V)
    for tile in range(first, last):
        z, cols, col_ok = logits_tile(h_ptr, w_ptr, rows, row_ok, tile, vocab, n_hidden, stride_h, stride_w, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION)
        excluded = tl.load(suppress_ptr + cols, mask=col_ok, other=1) != 0
        z = tl.where(excluded[None, :], float("-inf"), z)
        zs = z / temperature
        m, s, t = online_softmax_update(m, s, t, z)
        m_t, s_t, t_t = online_softmax_update(m_t, s_t, t_t, zs)
        # top-2 logits and the first argmax
        top = tl.max(z, axis=1)
        arg = tl.argmax(z, axis=1, tie_break_left=True)
        second = tl.max(tl.where(lanes[None, :] == arg[:, None], float("-inf"), z), axis=1)
        i1 = tl.where(top > v1, tile * BLOCK_V + arg, i1)
        v2 = tl.maximum(tl.maximum(tl.minimum(v1, top), v2), second)
        v1 = tl.maximum(v1, top)
        if SAMPLE:
            # first stage of the draw: Gumbel-max over the groups' tempered log-masses
            zg = tl.reshape(zs, (BLOCK_N, BLOCK_V // SAMPLE_GROUP, SAMPLE_GROUP))
            g_max = tl.max(zg, axis=2)
            g_lse = g_max + tl.log(tl.sum(tl.exp(zg - tl.where(g_max == float("-inf"), 0.0, g_max)[:, :, None]), axis=2))
            groups = tile * (BLOCK_V // SAMPLE_GROUP) + tl.arange(0, BLOCK_V // SAMPLE_GROUP)
            score = g_lse.to(tl.float64) + gumbel_noise(row_hash, groups.to(tl.int64) + GROUP_BASE)
            tile_best = tl.max(score, axis=1)
            arg_s = tl.argmax(score, axis=1, tie_break_left=True)
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            i_best = tl.where(better, tile * (BLOCK_V // SAMPLE_GROUP) + arg_s, i_best)
        if N_CAND > 0:
            cand_v, cand_i = insert_candidates(cand_v, cand_i, z, cols)
    plane = tl.num_programs(1) * n_rows
    at = tl.program_id(1) * n_rows + rows
    tl.store(f32_ptr + at, m, mask=row_ok)
    tl.store(f32_ptr + plane + at, s, mask=row_ok)
    tl.store(f32_ptr + 2 * plane + at, t, mask=row_ok)
    tl.store(f32_ptr + 3 * plane + at, m_t, mask=row_ok)
    tl.store(f32_ptr + 4 * plane + at, s_t, mask=row_ok)
    tl.store(f32_ptr + 5 * plane + at, t_t, mask=row_ok)
    tl.store(f32_ptr + 6 * plane + at, v1, mask=row_ok)
    tl.store(f32_ptr + 7 * plane + at, v2, mask=row_ok)
    tl.store(i64_ptr + at, i1, mask=row_ok)
    if SAMPLE:
        tl.store(i64_ptr + plane + at, i_best, mask=row_ok)
        tl.store(score_ptr + at, best, mask=row_ok)
    if N_CAND > 0:
        slots = tl.arange(0, N_CAND)
        tl.store(cand_v_ptr + at[:, None].to(tl.int64) * N_CAND + slots[None, :], cand_v, mask=row_ok[:, None])
        tl.store(cand_i_ptr + at[:, None].to(tl.int64) * N_CAND + slots[None, :], cand_i, mask=row_ok[:, None])


def ranked_candidates(cand_v: Tensor, cand_i: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of the per-split candidates [splits, N, K] by (logit descending, index
    ascending): logits [N, k] and their vocabulary indices."""
    n = cand_v.shape[1]
    return rank_candidates(cand_v.permute(1, 0, 2).reshape(n, -1), cand_i.permute(1, 0, 2).reshape(n, -1).long(), k)


def kernel_candidates(vocab: int, top_k: int | None, top_p: float | None, top_p_candidates: int) -> int:
    """How many largest logits per row the kernel keeps: none without filters, ``top_k + 1``
    rounded up to a power of two for top-k (one more than needed, to see a tie at the k-th),
    ``top_p_candidates`` for top-p alone."""
    if top_k is not None and 0 < top_k < vocab:
        return triton.next_power_of_2(top_k + 1)
    if top_p is not None and top_p < 1.0:
        return triton.next_power_of_2(top_p_candidates)
    return 0


def decode_step_triton(
    hidden: Tensor,
    weight: Tensor,
    *,
    temperature: float,
    noise_keys: Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    suppress_ids: tuple[int, ...] = (),
    stats: str = "model",
    needs: frozenset[str] = ALL_STATS,
    block_n: int = 64,
    block_v: int = 128,
    block_h: int = 64,
    splits: int | None = None,
    top_p_candidates: int = TOP_P_CANDIDATES,
) -> DecodeResult:
    """The fused kernel behind :func:`diffrl.kernels.decode_step` (same arguments and results).

    Tile sizes (``block_v`` a multiple of :data:`diffrl.kernels.decode.GROUP`), the vocabulary
    split count and the candidate list kept for top-p alone are exposed for tests and tuning: rows
    whose nucleus is wider than ``top_p_candidates`` are recomputed by the fallback."""
    check_lm_head(hidden, weight)
    if block_v % GROUP:
        raise ValueError(f"block_v={block_v} must be a multiple of the sampling group ({GROUP})")
    hidden, weight = contiguous_rows(hidden), contiguous_rows(weight)
    n, vocab = hidden.shape[0], weight.shape[0]
    device = hidden.device
    n_cand = kernel_candidates(vocab, top_k, top_p, top_p_candidates)
    sample = temperature > 0 and n_cand == 0
    t_samp = temperature if temperature > 0 else 1.0
    geo = vocab_grid(n, vocab, hidden.shape[1], device, block_n=block_n, block_v=block_v, block_h=block_h, splits=splits)
    suppress = torch.zeros(vocab, dtype=torch.uint8, device=device)
    suppress[list(suppress_ids)] = 1
    row_hash = counter_hash(STREAM_GUMBEL, noise_keys.to(device)) if sample else suppress
    f32 = torch.full((len(_F32), geo.splits, n), float("-inf"), dtype=torch.float32, device=device)
    i64 = torch.zeros(2, geo.splits, n, dtype=torch.long, device=device)
    score = torch.full((geo.splits, n), float("-inf"), dtype=torch.float64, device=device)
    cand_v = torch.empty(geo.splits, n, max(n_cand, 1), dtype=torch.float32, device=device)
    cand_i = torch.empty(geo.splits, n, max(n_cand, 1), dtype=torch.int32, device=device)
    _decode_kernel[geo.grid](
        hidden, weight, suppress, row_hash, f32, i64, score, cand_v, cand_i,
        n, vocab, hidden.shape[1], hidden.stride(0), weight.stride(0), t_samp, geo.tiles_per_split,
        SAMPLE=sample, N_CAND=n_cand, BLOCK_N=geo.block_n, BLOCK_V=geo.block_v, BLOCK_H=geo.block_h,
        PRECISION=dot_precision(hidden.dtype),
    )
    part = dict(zip(_F32, f32))
    lse, ent = merge_softmax_partials(part["m"], part["s"], part["t"])
    lse_t, ent_t = merge_softmax_partials(part["m_t"], part["s_t"], part["t_t"])
    top2 = torch.cat((part["v1"], part["v2"])).topk(2, dim=0).values
    first = part["v1"].argmax(0, keepdim=True)  # the lowest split holding the max: the lowest index
    argmax_token = i64[0].gather(0, first)[0]
    # (m, s, t) partials of the model distribution, as decode.finish_from_candidates reads them
    model = (lse, torch.ones_like(lse), -ent)

    if n_cand == 0:
        if sample:
            group = i64[1].gather(0, score.argmax(0, keepdim=True))[0]
            suppress_idx = torch.tensor(suppress_ids, dtype=torch.long, device=device)
            z_group = group_logits(hidden, weight, group, suppress_idx, torch.float32)
            token, z_tok = pick_in_group(z_group, group, noise_keys.to(device), t_samp)
        else:
            token, z_tok = argmax_token, top2[0]
        result = DecodeResult(token=token, logprob=z_tok / t_samp - lse_t)
        if stats == "model":
            if "prob" in needs:
                result.prob = torch.exp(z_tok - lse)
            if "margin" in needs:
                result.margin = torch.exp(top2[0] - lse) - torch.exp(top2[1] - lse)
            if "entropy" in needs:
                result.entropy = ent
        else:
            if "prob" in needs:
                result.prob = torch.exp(result.logprob)
            if "margin" in needs:
                result.margin = torch.exp(top2[0] / t_samp - lse_t) - torch.exp(top2[1] / t_samp - lse_t)
            if "entropy" in needs:
                result.entropy = ent_t
        return result

    values, index = ranked_candidates(cand_v, cand_i, n_cand)
    result, unsure = finish_from_candidates(
        values, index, vocab=vocab, temperature=temperature, noise_keys=None if noise_keys is None else noise_keys.to(device),
        top_k=top_k, top_p=top_p, stats=stats, needs=needs, lse_t=lse_t, model=model,
    )
    redo = unsure.nonzero().squeeze(1)
    if redo.numel():
        again = decode_step_torch(
            hidden[redo], weight, temperature=temperature, noise_keys=None if noise_keys is None else noise_keys.to(device)[redo],
            top_k=top_k, top_p=top_p, suppress_ids=suppress_ids, stats=stats, needs=needs,
        )
        for name in ("token", "logprob", *needs):
            getattr(result, name)[redo] = getattr(again, name).to(getattr(result, name).dtype)
    return result
