"""KV caches against the uncached loop: exact where they claim it, logits at the positions they serve."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffrl.models import DiffusionLM
from diffrl.rollout import EditLog, Rollout, RolloutConfig, generate, generate_chunked
from diffrl.rollout.cache import make_cache
from diffrl.rollout.canvas import BlockGrid, Canvas
from diffrl.rollout.runner import Runner
from tests.rollout_helpers import (
    BIDIRECTIONAL,
    BLOCK_CAUSAL,
    FAMILIES,
    block_causal,
    block_index,
    cache_kind,
    config,
    family_model,
    forward_batch_sizes,
    left_padded_prompts,
)


@pytest.fixture(scope="module")
def models(tiny_checkpoint) -> dict[str, DiffusionLM]:
    return {family: family_model(tiny_checkpoint, family) for family in FAMILIES}


@pytest.fixture(scope="module")
def fp32_models(tiny_checkpoint) -> dict[str, DiffusionLM]:
    return {family: family_model(tiny_checkpoint, family, dtype=torch.float32) for family in FAMILIES}


def assert_same_record(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    """Integer and boolean records (tokens, steps, masks) agree exactly; float records
    (confidence, log-probs) to float32 rounding, since a forward over a different set of rows may
    round differently in the last bits (seen on LLaDA2-MoE: 3e-8 in a confidence)."""
    if a.is_floating_point():
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    else:
        assert torch.equal(a, b), name


def assert_same_rollout(a, b) -> None:
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.step_map, b.step_map)
    assert torch.equal(a.nfe, b.nfe)
    torch.testing.assert_close(a.confidence, b.confidence)
    torch.testing.assert_close(a.logprob, b.logprob)


def exact_caches(model: DiffusionLM) -> list[dict]:
    """The cached settings that claim exactness: the block cache of a block-causal model as it is;
    a bidirectional model's prefix and dual caches only when refreshed every step."""
    if block_causal(model):
        return [{"kv_cache": "prefix"}]
    return [{"kv_cache": kind, "cache_refresh_steps": 1} for kind in ("prefix", "dual")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_exact_caches_equal_the_uncached_loop(models, family: str, temperature: float) -> None:
    model = models[family]
    ids, mask = left_padded_prompts([7, 4, 6])
    cfg = config(model, temperature=temperature, threshold=0.4, top_p=0.9 if temperature else None)
    uncached = generate(model, ids, mask, cfg)
    assert (uncached.nfe_cache == 0).all()
    assert (uncached.tokens_per_forward > 1).any(), "the threshold never committed two tokens in one step"
    for overrides in exact_caches(model):
        cached = generate(model, ids, mask, replace(cfg, **overrides))
        assert_same_rollout(cached, uncached)
        if block_causal(model):
            # Every completed block is stored once, by the first forward of the next block.
            assert torch.equal(cached.nfe_cache, block_stores(mask, block_index(model, mask, cfg).max(1).values + 1, cfg.block_length))
        else:
            assert (cached.nfe_cache == cached.nfe).all()


@pytest.mark.parametrize("family", BIDIRECTIONAL)
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_per_block_cache_refreshes_once_per_block_and_finalizes_every_token_once(models, family: str, kv_cache: str) -> None:
    model = models[family]
    ids, mask = left_padded_prompts([7, 4, 6])
    cfg = config(kv_cache=kv_cache)
    cached = generate(model, ids, mask, cfg)
    assert (cached.nfe_cache == cfg.num_blocks).all() and (cached.nfe == cfg.steps).all()
    assert (cached.step_map >= 0).all() and not (cached.completion_ids == model.facts.mask_token_id).any()
    for row in cached.step_map:
        assert torch.equal(row.sort().values, torch.arange(cfg.steps))  # one token per step, each once


def served_logits(model: DiffusionLM, runner: Runner, cols: torch.Tensor, rnd: int) -> torch.Tensor:
    rows = torch.arange(cols.shape[0])
    hidden = runner.block_hidden(rows, cols[:, 0], cols.shape[1], rnd)
    return model.logits(hidden)


def full_logits_at(model: DiffusionLM, canvas: Canvas, cols: torch.Tensor) -> torch.Tensor:
    """The uncached forward of the whole canvas (the model's own mask), read at ``cols``."""
    full = model.logits(model(canvas.tokens, canvas.key_mask))
    return full.gather(1, cols[:, :, None].expand(-1, -1, full.shape[-1]))


@pytest.mark.parametrize("family", BIDIRECTIONAL)
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_bidirectional_cache_logits_match_the_full_forward_at_the_block(fp32_models, family: str, kv_cache: str) -> None:
    """Right after a refresh (nothing committed since), a window forward against the cache gives
    the full forward's logits at the block's positions (Dream: read through its logit shift); after
    commits it reads the refreshed K/V."""
    model = fp32_models[family]
    ids, mask = left_padded_prompts([7, 3, 5])
    cfg = config(kv_cache=kv_cache, block_length=4, steps=16)
    facts = model.facts
    grid = BlockGrid.build(mask, cfg, facts)
    canvas = Canvas.start(ids, mask, grid.canvas_width, cfg, facts, None)
    # Pretend the first two blocks are decoded, so the block of round 2 has a prefix and a suffix.
    gen = torch.Generator().manual_seed(1)
    canvas.completion[:, :8] = torch.randint(0, 500, (3, 8), generator=gen)
    runner = Runner(model, canvas, make_cache(cfg, facts, canvas), 3)
    cols = grid.columns(2)
    expected = full_logits_at(model, canvas, cols)
    refresh = served_logits(model, runner, cols, 2)
    window = served_logits(model, runner, cols, 2)
    assert runner.nfe_cache.tolist() == [1, 1, 1] and runner.nfe.tolist() == [2, 2, 2]
    assert (refresh - expected).abs().max() < 1e-4
    assert (window - expected).abs().max() < 1e-4
    # A committed token changes the block's own K/V but not the cached ones the window reads.
    canvas.completion[:, 8] = 7
    moved = served_logits(model, runner, cols, 2)
    fresh = full_logits_at(model, canvas, cols)
    assert (moved - fresh).abs().max() > 1e-3, "the cache was not used"
    assert (moved - expected).abs().max() > 1e-3, "the window ignored the committed token"


@pytest.mark.parametrize("family", BLOCK_CAUSAL)
def test_block_cache_logits_match_the_full_forward_in_every_round(fp32_models, family: str) -> None:
    """Blocks are decoded in rounds as the engine does: each round's block starts masked, its
    tokens are committed before the next round, and every step reads the completed blocks from
    the cache. Each step's logits at the block equal the uncached block-causal forward of the
    canvas as it is then, so the stored K/V are the clean ones (the masked K/V written while a
    block was decoded were replaced)."""
    model = fp32_models[family]
    ids, mask = left_padded_prompts([7, 3, 5])
    cfg = config(model, kv_cache="prefix")
    facts = model.facts
    grid = BlockGrid.build(mask, cfg, facts)
    canvas = Canvas.start(ids, mask, grid.canvas_width, cfg, facts, None)
    runner = Runner(model, canvas, make_cache(cfg, facts, canvas), 3)
    final = torch.randint(0, 500, canvas.completion.shape, generator=torch.Generator().manual_seed(1))

    def commit(cols: torch.Tensor, chosen: torch.Tensor) -> None:
        r, c = chosen.nonzero(as_tuple=True)
        pos = cols[r, c] - canvas.prompt_width
        canvas.completion[r, pos] = final[r, pos]

    for rnd in range(grid.rounds):
        cols = grid.columns(rnd)
        inside = (cols >= canvas.prompt_width) & (cols < canvas.prompt_width + canvas.completion_length)
        assert (served_logits(model, runner, cols, rnd) - full_logits_at(model, canvas, cols)).abs().max() < 1e-4, rnd
        commit(cols, inside & (inside.cumsum(1) == 1))  # a second step after one commit reads the same cache
        assert (served_logits(model, runner, cols, rnd) - full_logits_at(model, canvas, cols)).abs().max() < 1e-4, rnd
        commit(cols, inside)
    assert torch.equal(runner.nfe, torch.full((3,), 2 * grid.rounds))
    assert torch.equal(runner.nfe_cache, block_stores(mask, grid.rounds, cfg.block_length))


def block_stores(prompt_mask: torch.Tensor, rounds: torch.Tensor | int, block: int) -> torch.Tensor:
    """Forwards that write clean K/V of a block-causal row: the first one of every round after the
    first, and the first forward when the prompt fills a whole block (its prefill)."""
    return rounds - 1 + (prompt_mask.sum(1) >= block).long()


# Every family with its cache, and one family of each attention kind without.
CACHE_SETTINGS = [(family, True) for family in FAMILIES] + [("llada", False), ("sdar", False)]


@pytest.mark.parametrize(("family", "cached"), CACHE_SETTINGS)
def test_padded_rows_and_num_generations_match_samples_run_alone(models, family: str, cached: bool) -> None:
    """Left padding, batching and the shared prompt prefill change nothing for a sample (block-causal
    rows of one batch decode on different grids)."""
    model = models[family]
    ids, mask = left_padded_prompts([6, 3])
    group = 3
    ids, mask = ids.repeat_interleave(group, 0), mask.repeat_interleave(group, 0)
    sample_ids = torch.arange(10, 10 + ids.shape[0])
    cfg = config(model, temperature=1.0, kv_cache=cache_kind(model) if cached else "none", seed=5)
    with forward_batch_sizes(model) as forwards:
        batched = generate(model, ids, mask, cfg, sample_ids=sample_ids)
    assert forwards[0] == 2, "the first forward should run each distinct prompt once"
    assert max(forwards[1:]) == ids.shape[0]
    assert len({tuple(r.tolist()) for r in batched.completion_ids[:group]}) > 1, "samples of one prompt should differ at T=1"
    for row in (0, 4):
        real = mask[row]
        alone = generate(model, ids[row : row + 1, real], torch.ones(1, int(real.sum()), dtype=torch.bool), cfg, sample_ids=sample_ids[row : row + 1])
        assert torch.equal(alone.completion_ids[0], batched.completion_ids[row])
        assert torch.equal(alone.step_map[0], batched.step_map[row])


@pytest.mark.parametrize(("family", "cached"), CACHE_SETTINGS)
def test_eos_stops_a_sample_and_frees_its_cache(models, family: str, cached: bool) -> None:
    model = models[family]
    eos = model.facts.eos_token_id
    ids, mask = left_padded_prompts([5, 5, 5])
    fixed = torch.full((3, 16), -1)
    fixed[1, 2] = eos  # sample 1 can stop inside its first block
    cfg = config(model, kv_cache=cache_kind(model) if cached else "none", stop_at_eos=True)
    with forward_batch_sizes(model) as forwards:
        stopped = generate(model, ids, mask, cfg, fixed_tokens=fixed)
    full = generate(model, ids, mask, replace(cfg, stop_at_eos=False), fixed_tokens=fixed)
    assert stopped.nfe[1] < full.nfe[1] and forwards[-1] < 3
    assert stopped.completion_mask[1].sum() <= 3, "sample 1 should stop at its fixed EOS or before"
    blocks = block_index(model, mask, cfg)
    for row in (~stopped.truncated).nonzero().flatten().tolist():
        end = int(stopped.completion_mask[row].sum())
        tail, tail_steps = stopped.completion_ids[row, end:], stopped.step_map[row, end:]
        assert ((tail_steps >= 0) | (tail == eos)).all()  # masks left became EOS, never decoded
        assert (tail_steps[blocks[row, end:] > blocks[row, end - 1]] == -1).all()  # later blocks never ran
    # Up to its stop each sample is what it would be without stopping; samples that never stop
    # are untouched by a neighbour leaving the batch (and its cache rows going).
    for row in range(3):
        keep = stopped.completion_mask[row]
        assert torch.equal(stopped.completion_ids[row][keep], full.completion_ids[row][keep])
        if stopped.truncated[row]:
            assert torch.equal(stopped.completion_ids[row], full.completion_ids[row]) and stopped.nfe[row] == full.nfe[row]
    assert stopped.truncated.any(), "no sample ran to the end; pick prompts where one does"


STRATEGIES = [
    {},
    {"kv_cache": "cached", "threshold": 0.4},
    {"kv_cache": "cached", "threshold": 0.4, "threshold_rule": "dynamic"},
    {"remasking": "topk_margin", "schedule": "proportional", "factor": 1.0},
    {"remasking": "entropy", "schedule": "proportional", "alg_temp": 0.5, "kv_cache": "cached"},
    {"remasking": "random", "kv_cache": "cached"},
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("overrides", STRATEGIES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_temperature_zero_is_deterministic_and_every_token_is_finalized_once(models, family: str, overrides: dict) -> None:
    model = models[family]
    ids, mask = left_padded_prompts([6, 2, 4])
    if overrides.get("kv_cache") == "cached":
        overrides = {**overrides, "kv_cache": cache_kind(model)}
    cfg = config(model, steps=8, **overrides)
    a, b = generate(model, ids, mask, cfg), generate(model, ids, mask, cfg)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.step_map, b.step_map)
    assert not (a.completion_ids == model.facts.mask_token_id).any() and (a.step_map >= 0).all()
    # Steps are numbered 0..nfe-1 per sample and each step's commits lie in one block, in order.
    blocks = block_index(model, mask, cfg)
    for row in range(3):
        steps = a.step_map[row]
        assert int(steps.max()) == int(a.nfe[row]) - 1
        for blk in range(int(blocks[row].max())):
            assert steps[blocks[row] == blk].max() < steps[blocks[row] == blk + 1].min(), (row, blk)
    assert (a.confidence > 0).all() and (a.logprob <= 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_inpainted_tokens_stay_and_edits_stay_in_the_current_block(models, family: str) -> None:
    """Fixed tokens stay, are never decoded (step -1) and never edited; LLaDA2.1 edits touch only
    the current block, and a position's last edit is its final token at that step."""
    model = models[family]
    ids, mask = left_padded_prompts([6, 3], seed=2)
    fixed = torch.full((2, 16), -1)
    cols = [0, 5, 11]
    fixed[:, cols] = torch.tensor([[5, 6, 7], [8, 9, 10]])
    cfg = config(model, kv_cache=cache_kind(model), threshold=0.4, editing_threshold=0.0, max_post_steps=2)
    out = generate(model, ids, mask, cfg, fixed_tokens=fixed)
    assert torch.equal(out.completion_ids[:, cols], fixed[:, cols]) and (out.step_map[:, cols] == -1).all()
    assert out.fixed_mask[:, cols].all() and out.fixed_mask.sum() == 6
    assert (out.step_map[~out.fixed_mask] >= 0).all() and not (out.completion_ids == model.facts.mask_token_id).any()
    log = out.edits
    assert log is not None and log.row.numel() > 0, "editing_threshold=0 should edit something"
    assert not torch.isin(log.position, torch.tensor(cols)).any()
    blocks = block_index(model, mask, cfg)
    last: dict[tuple[int, int], tuple[int, int]] = {}
    for r, p, s, n in zip(log.row.tolist(), log.position.tolist(), log.step.tolist(), log.new_token.tolist()):
        steps, blk = out.step_map[r], blocks[r]
        earlier, later = steps[(blk < blk[p]) & (steps >= 0)], steps[(blk > blk[p]) & (steps >= 0)]
        assert (earlier < s).all() and (later > s).all(), (r, p, s)
        last[(r, p)] = (s, n)
    for (r, p), (s, n) in last.items():
        assert int(out.completion_ids[r, p]) == n and int(out.step_map[r, p]) == s


def test_rollout_config_rejects_bad_values_by_name() -> None:
    with pytest.raises(ValueError, match="rollout.kv_cache"):
        RolloutConfig(kv_cache="paged")
    with pytest.raises(ValueError, match="rollout.threshold"):
        RolloutConfig(threshold=1.5)
    with pytest.raises(ValueError, match="rollout.cache_refresh_steps"):
        RolloutConfig(cache_refresh_steps=2)
    with pytest.raises(ValueError, match="rollout.alg_temp"):
        RolloutConfig(alg_temp=0.5, threshold=0.9)
    with pytest.raises(ValueError, match="rollout.threshold/factor"):
        RolloutConfig(remasking="random", factor=1.0)


def test_generate_rejects_bad_inputs_with_the_fix(models) -> None:
    model = models["llada"]
    ids, mask = left_padded_prompts([4, 2])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask.flip(1), config())
    with pytest.raises(ValueError, match="no real token"):
        generate(model, ids, mask & False, config())
    with pytest.raises(ValueError, match="fixed_tokens"):
        generate(model, ids, mask, config(), fixed_tokens=torch.full((2, 8), -1))
    sdar = models["sdar"]
    with pytest.raises(ValueError, match="rollout.block_length=8 must equal model.block_size=4"):
        generate(sdar, ids, mask, config())
    with pytest.raises(ValueError, match="rollout.kv_cache=prefix"):
        generate(sdar, ids, mask, config(sdar, kv_cache="dual"))


@pytest.mark.parametrize("family", ["llada", "llada2_moe"])
def test_chunked_generation_keeps_every_per_sample_record(models, family: str) -> None:
    """``generate_chunked`` in chunks of 2 equals one call on all 5 samples in every per-sample
    field the rollout declares, the cache counts and the edit log (rows renumbered; entries in chunk order) included."""
    model = models[family]
    ids, mask = left_padded_prompts([7, 4, 6, 5, 3], seed=3)
    cfg = config(model, kv_cache=cache_kind(model), threshold=0.4, editing_threshold=0.0, max_post_steps=1, temperature=1.0)
    whole = generate(model, ids, mask, cfg, sample_ids=torch.arange(5) + 10)
    chunked = generate_chunked(model, ids, mask, cfg, chunk=2, sample_ids=torch.arange(5) + 10)
    for name in Rollout.per_sample_fields():
        assert_same_record(getattr(chunked, name), getattr(whole, name), name)
    assert (whole.nfe_cache > 0).all(), "a cached rollout stores or refreshes its cache"
    assert len(whole.edits) > 0, "editing_threshold=0 should edit something"

    def entries(log: EditLog) -> list[tuple]:
        columns = [getattr(log, f.name) for f in dataclasses.fields(EditLog)]
        # Confidences to float32 rounding (see assert_same_record); every other column exactly.
        return sorted(zip(*(c.double().mul(1e6).round().tolist() if c.is_floating_point() else c.tolist() for c in columns)))

    assert entries(chunked.edits) == entries(whole.edits)
    assert chunked.metrics() == whole.metrics()


def test_select_and_replace_rows_carry_every_record_and_renumber_edits(models) -> None:
    """IGPO's repair: replaced rows take the new rollout's record and edits, keep their prompt and
    sample id; ``select`` keeps the chosen rows' edits under their new row numbers."""
    model = models["llada"]
    ids, mask = left_padded_prompts([5, 6, 4, 7], seed=4)
    cfg = config(model, threshold=0.4, editing_threshold=0.0, temperature=1.0)
    old = generate(model, ids, mask, cfg, sample_ids=torch.arange(4))
    new = generate(model, ids, mask, replace(cfg, seed=9), sample_ids=torch.arange(4) + 100)
    dest, source = torch.tensor([3, 1]), torch.tensor([0, 2])
    mixed = old.replace_rows(dest, new, source)
    for name in Rollout.per_sample_fields("record"):
        assert torch.equal(getattr(mixed, name)[dest], getattr(new, name)[source]), name
        assert torch.equal(getattr(mixed, name)[[0, 2]], getattr(old, name)[[0, 2]]), name
    assert torch.equal(mixed.sample_ids, old.sample_ids) and torch.equal(mixed.prompt_ids, old.prompt_ids)

    def edits_of(rollout: Rollout, row: int) -> list[tuple[int, int, int]]:
        log = rollout.edits
        return sorted(zip(log.position[log.row == row].tolist(), log.step[log.row == row].tolist(), log.new_token[log.row == row].tolist()))

    assert len(old.edits) > 0 and len(new.edits) > 0
    for d, s in zip(dest.tolist(), source.tolist()):
        assert edits_of(mixed, d) == edits_of(new, s)
    for row in (0, 2):
        assert edits_of(mixed, row) == edits_of(old, row)
    picked = old.select(torch.tensor([2, 0]))
    assert torch.equal(picked.completion_ids, old.completion_ids[[2, 0]])
    assert edits_of(picked, 0) == edits_of(old, 2) and edits_of(picked, 1) == edits_of(old, 0)
    assert len(picked.edits) == len(edits_of(old, 0)) + len(edits_of(old, 2))
