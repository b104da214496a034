"""Decoding rules against plain per-row ports of the published samplers, and the loops they drive."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from diffrl.kernels.decode import gumbel_uniforms
from diffrl.models import DiffusionLM
from diffrl.rng import counter_hash
from diffrl.rollout import generate
from diffrl.rollout.schedule import proportional_counts, transfer_counts
from diffrl.rollout.selection import commit_topk, dynamic_commit, factor_commit, sample_topk, threshold_commit
from tests.rollout_helpers import FAMILIES, block_causal, cache_kind, config, family_model, left_padded_prompts

NEG = float("-inf")


def score_rows(seed: int = 0) -> torch.Tensor:
    """Rows of candidate scores with different mask counts, including the edge cases: all below
    0.9, a single mask, no mask, everything confident, and one row with ties."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(8, 10, generator=gen, dtype=torch.float64)
    scores[0] *= 0.5  # all below the threshold
    scores[1, 1:] = NEG  # a single mask
    scores[2] = NEG  # nothing masked
    scores[3] = 0.95 + 0.04 * scores[3]  # all confident
    scores[4, ::2] = NEG
    scores[5, :7] = NEG
    scores[6] = torch.tensor([0.97, 0.3, 0.99, NEG, 0.5, 0.93, 0.5, NEG, 0.96, 0.1], dtype=torch.float64)
    scores[7] = torch.tensor([0.5, 0.5, 0.99, 0.5, NEG, 0.5, 0.5, 0.2, 0.5, 0.5], dtype=torch.float64)  # ties
    return scores


def topk_lower_index_first(row: torch.Tensor, k: int) -> list[int]:
    """Indices of the k best finite scores; among equal scores the lower index first."""
    cands = [i for i in range(len(row)) if math.isfinite(row[i])]
    return sorted(cands, key=lambda i: (-float(row[i]), i))[:k]


def as_mask(indices: list[int], width: int) -> torch.Tensor:
    out = torch.zeros(width, dtype=torch.bool)
    out[indices] = True
    return out


def test_top_k_commits_the_best_with_ties_to_the_lower_position() -> None:
    scores = score_rows()
    k = torch.tensor([3, 2, 2, 10, 1, 4, 3, 3])
    got = commit_topk(scores, k)
    for r in range(len(scores)):
        assert torch.equal(got[r], as_mask(topk_lower_index_first(scores[r], int(k[r])), 10)), r


def test_fast_dllm_threshold_rule_matches_get_transfer_index_per_row() -> None:
    """Port of Fast-dLLM's ``get_transfer_index`` with a threshold: topk over all masks, then
    every rank after the first is dropped below the threshold."""
    scores, tau = score_rows(), 0.9
    got = threshold_commit(scores, tau)
    for r, row in enumerate(scores):
        num = sum(math.isfinite(x) for x in row.tolist())
        expected = torch.zeros(10, dtype=torch.bool)
        select = topk_lower_index_first(row, num)
        for rank, idx in enumerate(select):
            expected[idx] = rank == 0 or float(row[idx]) >= tau
        assert torch.equal(got[r], expected), r
    assert got[0].sum() == 1 and got[1].sum() == 1 and got[2].sum() == 0 and got[3].all()


def test_dynamic_threshold_rule_matches_sdar_low_confidence_dynamic_per_row() -> None:
    scores, tau = score_rows(1), 0.9
    k = torch.tensor([2, 1, 1, 3, 2, 1, 2, 1])
    got = dynamic_commit(scores, k, tau)
    for r, row in enumerate(scores):
        high = torch.tensor([math.isfinite(x) and x > tau for x in row.tolist()])
        expected = high if int(high.sum()) >= int(k[r]) else as_mask(topk_lower_index_first(row, int(k[r])), 10)
        assert torch.equal(got[r], expected), r


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0])
def test_factor_rule_matches_dinfer_get_transfer_index_dynamic_per_row(factor: float) -> None:
    """Port of dInfer's loop, including its quirk: when only the last rank fails, take it too."""
    scores = score_rows(2)
    scores[4] = torch.tensor([0.99, NEG, 0.97, NEG, 0.5, NEG, 0.95, NEG, 0.9, NEG], dtype=torch.float64)
    got = factor_commit(scores, factor)
    for r, row in enumerate(scores):
        finite = [x for x in row.tolist() if math.isfinite(x)]
        if not finite:
            assert not got[r].any()
            continue
        threshs = [1 - factor / (n + 1) for n in range(1, len(finite) + 1)]
        threshs[0] = -1
        ordered = sorted(finite, reverse=True)
        top_i = 0
        for top_i in range(len(threshs)):
            if ordered[top_i] < threshs[top_i]:
                break
        if top_i == 0 or top_i == len(threshs) - 1:
            top_i += 1
        assert torch.equal(got[r], as_mask(topk_lower_index_first(row, top_i), 10)), (r, factor)


def test_alg_temp_draws_positions_from_softmax_of_score_over_alg_temp() -> None:
    """Dream's multinomial(softmax(conf / alg_temp)) as Gumbel-top-k: the chosen position's
    frequency over many keyed draws matches the softmax."""
    scores = torch.tensor([[0.9, 0.5, NEG, 0.7, 0.1]], dtype=torch.float64)
    alg_temp, draws = 0.25, 20000
    u = gumbel_uniforms(counter_hash(3, torch.arange(draws)), 5)
    picked = sample_topk(scores.expand(draws, -1), torch.ones(draws, dtype=torch.long), alg_temp, u)
    assert (picked.sum(1) == 1).all() and not picked[:, 2].any()
    expected = torch.softmax(scores[0] / alg_temp, dim=0)
    assert (picked.double().mean(0) - expected).abs().max() < 0.015
    everything = sample_topk(scores, torch.tensor([4]), alg_temp, u[:1])
    assert torch.equal(everything[0], torch.isfinite(scores[0]))


def test_linear_and_dream_schedules_match_their_references() -> None:
    masks = torch.tensor([32, 7, 1, 0])
    linear = transfer_counts(masks, 5)
    for r, m in enumerate(masks.tolist()):
        assert linear[r].tolist() == [m // 5 + (1 if i < m % 5 else 0) for i in range(5)]
    steps, eps = 6, 1e-3
    timesteps = torch.linspace(1, eps, steps + 1)
    left = masks.clone()
    for i in range(steps):
        counts = proportional_counts(left, i, steps, eps)
        for r in range(len(masks)):
            num_mask_token = left[r : r + 1].sum() / 1  # Dream's mean over a batch of one
            t, s = timesteps[i], timesteps[i + 1]
            expected = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            assert int(counts[r]) == expected
        left = left - counts
    assert (left == 0).all()


@pytest.fixture(scope="module")
def models(tiny_checkpoint) -> dict[str, DiffusionLM]:
    return {family: family_model(tiny_checkpoint, family) for family in FAMILIES}


@torch.no_grad()
def dream_sample(model, prompt: torch.Tensor, gen_length: int, steps: int, alg: str, temperature: float, top_p: float | None, seed: int, sample_id: int, eps: float = 1e-3) -> torch.Tensor:
    """Dream's ``_sample`` (generation_utils.py) for one unpadded prompt, written out plainly.

    Two deliberate differences, both shared with the engine: the mask token is never sampled, and
    at T > 0 the categorical draw is Gumbel-max on uniforms keyed by (seed, sample, step,
    position) instead of torch's global generator, so the two can be compared token for token.
    Steps that commit nothing are skipped, which changes nothing but the step count.
    """
    mask_id = model.facts.mask_token_id
    x = torch.cat((prompt, torch.full((1, gen_length), mask_id)), dim=1)
    timesteps = torch.linspace(1, eps, steps + 1)
    taken = 0
    for i in range(steps):
        mask_index = x == mask_id
        t, s = timesteps[i], timesteps[i + 1]
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        if number_transfer_tokens == 0:
            continue
        logits = model.logits(model(x))[mask_index]  # the model realigns Dream's shift itself
        logits[:, mask_id] = NEG
        if temperature > 0:
            logits = logits / temperature
        if top_p is not None and top_p < 1:
            sorted_logits, sorted_indices = torch.sort(logits, descending=True)
            cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
            remove = cumulative_probs > top_p
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = 0
            logits = logits.masked_fill(torch.zeros_like(remove).scatter_(-1, sorted_indices, remove), torch.finfo(logits.dtype).min)
        probs = torch.softmax(logits, dim=-1)
        if temperature > 0:
            positions = mask_index[0].nonzero().squeeze(1) - prompt.shape[1]
            u = gumbel_uniforms(counter_hash(seed, sample_id, taken, positions), probs.shape[-1])
            x0 = torch.argmax(torch.log(probs) - torch.log(-torch.log(u)), dim=-1)
            confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
        else:
            confidence, x0 = probs.max(dim=-1)
        if alg == "topk_margin":
            sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
            confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
        elif alg == "entropy":
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        full_confidence = torch.full_like(x, NEG, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        # torch.topk's order among equal confidences is unspecified (a nucleus of one token gives
        # p = 1 at many positions); both sides break ties towards the lower position.
        transfer_index = topk_lower_index_first(full_confidence[0], number_transfer_tokens)
        x_ = torch.full_like(x, mask_id)
        x_[mask_index] = x0
        x[0, transfer_index] = x_[0, transfer_index]
        taken += 1
    return x[:, prompt.shape[1] :]


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize(("temperature", "top_p"), [(0.0, None), (0.7, 0.9)])
def test_dream_strategies_match_a_plain_port_of_dreams_sample(models, alg: str, temperature: float, top_p: float | None) -> None:
    """On the Dream checkpoint itself, so the logit shift is the real one."""
    dream = models["dream"]
    ids, mask = left_padded_prompts([5, 3], seed=4)
    cfg = config(max_completion_length=12, block_length=12, steps=8, remasking=alg, schedule="proportional", temperature=temperature, top_p=top_p, seed=9)
    ours = generate(dream, ids, mask, cfg, sample_ids=torch.tensor([3, 4]))
    for row in range(2):
        prompt = ids[row : row + 1, mask[row]]
        expected = dream_sample(dream, prompt, 12, 8, alg, temperature, top_p, seed=9, sample_id=3 + row)
        assert torch.equal(ours.completion_ids[row], expected[0]), row


@torch.no_grad()
def plain_block_loop(model, prompt: torch.Tensor, gen_length: int, block: int, steps: int, rule: str, threshold: float = 0.0, editing_threshold: float | None = None, max_post_steps: int = 0):
    """Block decoding at T=0 for one unpadded prompt, written out plainly after the published loops.

    Bidirectional model: LLaDA's semi-autoregressive blocks from the completion's start, a forward
    of the whole canvas each step. Block-causal model: SDAR's / LLaDA2.x's grid from column 0, whose
    first block holds the prompt's tail (never decoded or edited), and a forward of the canvas up to
    the block's end with no cache (LLaDA2.x). The canvas ends with the completion: the published
    block-causal loops also decode masks past it up to the grid and cut them afterwards, so the two
    agree exactly when the completion ends on the grid (row 1 of the test) and the last block is
    shorter here otherwise.

    Per step, with the schedule's count k (published: from ``block``; one per step as tested):
    ``static`` commits the top k (SDAR low_confidence_static), ``dynamic`` every mask with
    confidence > threshold when there are at least k, else the top k (SDAR low_confidence_dynamic,
    LLaDA2.0), ``fast_dllm`` every mask with confidence >= threshold and at least the best
    (LLaDA2.1). With ``editing_threshold`` (LLaDA2.1) each decoded completion token of the block
    whose argmax differs with probability > editing_threshold is replaced, and once the block has
    no masks up to ``max_post_steps`` more steps run while the last step changed something.
    Returns the completion, the step that last wrote each token and the edits.
    """
    mask_id, plen = model.facts.mask_token_id, prompt.shape[1]
    block_causal = model.facts.attention == "block_causal"
    x = torch.cat((prompt, torch.full((1, gen_length), mask_id)), dim=1)
    step_map = torch.full((gen_length,), -1)
    edits, step = [], 0
    for lo in range(plen // block * block if block_causal else plen, plen + gen_length, block):
        hi = min(lo + block, plen + gen_length)
        width = hi - lo
        completion = torch.arange(lo, hi) >= plen
        schedule = [block // steps + (1 if i < block % steps else 0) for i in range(steps)]
        post, changed, s = 0, True, 0
        while True:
            masked = x[0, lo:hi] == mask_id
            if not masked.any():
                if editing_threshold is None or not changed or post >= max_post_steps:
                    break
                post += 1
            logits = model.logits(model(x[:, :hi] if block_causal else x))[0, lo:hi]
            logits[:, mask_id] = NEG
            conf, x0 = torch.softmax(logits, dim=-1).max(-1)
            commit = torch.zeros(width, dtype=torch.bool)
            if masked.any():
                masked_conf = torch.where(masked, conf, torch.tensor(NEG, dtype=conf.dtype))
                top = as_mask(topk_lower_index_first(masked_conf, schedule[s]), width)
                if rule == "static":
                    commit = top
                elif rule == "dynamic":
                    high = masked & (masked_conf > threshold)
                    commit = high if int(high.sum()) >= schedule[s] else top
                else:
                    commit = masked & (masked_conf >= threshold)
                    commit[topk_lower_index_first(masked_conf, 1)[0]] = True
            edit = torch.zeros(width, dtype=torch.bool)
            if editing_threshold is not None:
                edit = completion & ~masked & (x0 != x[0, lo:hi]) & (conf > editing_threshold)
            for i in edit.nonzero().flatten().tolist():
                edits.append((lo + i - plen, step, int(x[0, lo + i]), int(x0[i])))
            write = commit | edit
            x[0, lo:hi] = torch.where(write, x0, x[0, lo:hi])
            written = torch.arange(lo, hi)[write] - plen
            step_map[written] = step
            changed = bool(write.any())
            step, s = step + 1, s + 1
    return x[0, plen:], step_map, edits


BLOCK_RULES = {
    "static": {},
    "dynamic": {"threshold": 0.4, "threshold_rule": "dynamic"},
    "editing": {"threshold": 0.4, "editing_threshold": 0.3, "max_post_steps": 3},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rule", BLOCK_RULES)
def test_block_decoding_matches_a_plain_block_loop(models, family: str, rule: str) -> None:
    """SDAR's static and dynamic rules, LLaDA2.0's threshold and LLaDA2.1's editing on every
    family's grid; block-causal families decode with the block cache (exact)."""
    model = models[family]
    ids, mask = left_padded_prompts([6, 4, 5], seed=2)
    cfg = config(model, **BLOCK_RULES[rule])
    cfg = replace(cfg, steps=cfg.block_length * cfg.num_blocks, kv_cache=cache_kind(model) if block_causal(model) else "none")
    ours = generate(model, ids, mask, cfg)
    log = ours.edits
    assert log is not None
    if rule == "editing":
        assert log.row.numel() > 0, "no edit happened; lower editing_threshold"
    if rule == "dynamic":
        assert (ours.tokens_per_forward > 1).any(), "the threshold never committed two tokens in one step"
    published = {"static": "static", "dynamic": "dynamic", "editing": "fast_dllm"}[rule]
    for row in range(3):
        tokens, steps, edits = plain_block_loop(
            model, ids[row : row + 1, mask[row]], 16, cfg.block_length, cfg.steps_per_block, published,
            threshold=cfg.threshold or 0.0, editing_threshold=cfg.editing_threshold, max_post_steps=cfg.max_post_steps,
        )
        assert torch.equal(ours.completion_ids[row], tokens), row
        assert torch.equal(ours.step_map[row], steps), row
        mine = [(int(p), int(s), int(o), int(n)) for r, p, s, o, n in zip(log.row, log.position, log.step, log.old_token, log.new_token) if r == row]
        assert mine == edits, row
    if rule == "editing":
        assert (log.confidence > cfg.editing_threshold).all()
    else:
        assert log.row.numel() == 0


@pytest.mark.parametrize("margin", [0.0, 1.0])
def test_early_commit_takes_the_rest_of_a_confident_block(models, margin: float) -> None:
    llada = models["llada"]
    ids, mask = left_padded_prompts([6, 4], seed=3)
    cfg = config(steps=16)
    plain = generate(llada, ids, mask, cfg)
    early = generate(llada, ids, mask, config(steps=16, early_commit_margin=margin))
    if margin == 1.0:  # never confident enough: the same as without the option
        assert torch.equal(early.completion_ids, plain.completion_ids) and torch.equal(early.step_map, plain.step_map)
        return
    # Always confident: each block is committed whole in its first step.
    assert (early.nfe == 2).all()
    assert (early.step_map[:, :8] == 0).all() and (early.step_map[:, 8:] == 1).all()
