"""KV caches against the uncached loop: exact where they claim it, logits at the positions they serve."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffrl.models import DiffusionLM
from diffrl.rollout import RolloutConfig, generate
from diffrl.rollout.cache import make_cache
from diffrl.rollout.canvas import BlockGrid, Canvas
from diffrl.rollout.runner import Runner
from tests.rollout_helpers import config, forward_batch_sizes, left_padded_prompts, tiny_model, with_logit_shift

# Bidirectional models: LLaDA, and the same weights read with Dream's logit shift.
MODELS = ["llada", "llada_shifted"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> dict[str, DiffusionLM]:
    folder = tmp_path_factory.mktemp("rollout_cache")
    return {
        "llada": tiny_model(shared, folder, "llada"),
        "llada_shifted": with_logit_shift(tiny_model(shared, folder, "llada")),
        "llada_fp32": tiny_model(shared, folder, "llada", dtype=torch.float32),
    }


def assert_same_rollout(a, b) -> None:
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.step_map, b.step_map)
    assert torch.equal(a.nfe, b.nfe)
    torch.testing.assert_close(a.confidence, b.confidence)
    torch.testing.assert_close(a.logprob, b.logprob)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cache_refreshed_every_step_equals_the_uncached_loop(models, name: str, kv_cache: str, temperature: float) -> None:
    model = models[name]
    ids, mask = left_padded_prompts([7, 4, 6])
    cfg = config(temperature=temperature, threshold=0.02, top_p=0.9 if temperature else None)
    uncached = generate(model, ids, mask, cfg)
    cached = generate(model, ids, mask, replace(cfg, kv_cache=kv_cache, cache_refresh_steps=1))
    assert_same_rollout(cached, uncached)
    assert (cached.nfe_cache == cached.nfe).all() and (uncached.nfe_cache == 0).all()
    assert (uncached.tokens_per_forward > 1).any(), "the threshold never committed two tokens in one step"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_per_block_cache_refreshes_once_per_block_and_finalizes_every_token_once(models, name: str, kv_cache: str) -> None:
    model = models[name]
    ids, mask = left_padded_prompts([7, 4, 6])
    cfg = config(kv_cache=kv_cache)
    cached = generate(model, ids, mask, cfg)
    uncached = generate(model, ids, mask, replace(cfg, kv_cache="none"))
    assert (cached.nfe_cache == cfg.num_blocks).all() and (cached.nfe == cfg.steps).all()
    assert (cached.step_map >= 0).all() and not (cached.completion_ids == model.facts.mask_token_id).any()
    for row in cached.step_map:
        assert torch.equal(row.sort().values, torch.arange(cfg.steps))  # one token per step, each once
    # Stale K/V are an approximation: the agreement is reported, not asserted (see docs/rollout.md).
    agreement = (cached.completion_ids == uncached.completion_ids).float().mean().item()
    assert 0.0 <= agreement <= 1.0


def served_logits(model: DiffusionLM, canvas: Canvas, runner: Runner, rows: torch.Tensor, cols: torch.Tensor, rnd: int) -> torch.Tensor:
    hidden = runner.block_hidden(rows, cols[rows, 0], cols.shape[1], rnd)
    return model.logits(hidden)


@pytest.mark.parametrize("name", ["llada_fp32"])
@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("shift", [0, 1])
def test_bidirectional_cache_logits_match_the_full_forward_at_the_block(models, monkeypatch, name: str, kv_cache: str, shift: int) -> None:
    """Right after a refresh (nothing committed since), a window forward against the cache gives
    the full forward's logits at the block's positions; after commits it reads the refreshed K/V."""
    model = models[name]
    monkeypatch.setattr(model, "facts", replace(model.facts, logit_shift=shift))
    ids, mask = left_padded_prompts([7, 3, 5])
    cfg = config(kv_cache=kv_cache, block_length=4, steps=16)
    facts = model.facts
    grid = BlockGrid.build(mask, cfg, facts)
    canvas = Canvas.start(ids, mask, grid.canvas_width, cfg, facts, None)
    # Pretend the first two blocks are decoded, so the block of round 2 has a prefix and a suffix.
    gen = torch.Generator().manual_seed(1)
    canvas.completion[:, :8] = torch.randint(0, 500, (3, 8), generator=gen)
    runner = Runner(model, canvas, make_cache(cfg, facts, 3, canvas.width, ids.device), 3)
    rows, cols = torch.arange(3), grid.columns(2)
    full = model.logits(model(canvas.tokens, canvas.key_mask))
    expected = full.gather(1, cols[:, :, None].expand(-1, -1, full.shape[-1]))
    refresh = served_logits(model, canvas, runner, rows, cols, 2)
    window = served_logits(model, canvas, runner, rows, cols, 2)
    assert runner.nfe_cache.tolist() == [1, 1, 1] and runner.nfe.tolist() == [2, 2, 2]
    assert (refresh - expected).abs().max() < 1e-4
    assert (window - expected).abs().max() < 1e-4
    # A committed token changes the block's own K/V but not the cached ones the window reads.
    canvas.completion[:, 8] = 7
    moved = served_logits(model, canvas, runner, rows, cols, 2)
    fresh = model.logits(model(canvas.tokens, canvas.key_mask)).gather(1, cols[:, :, None].expand(-1, -1, full.shape[-1]))
    assert (moved - fresh).abs().max() > 1e-3, "the cache was not used"
    assert (moved - expected).abs().max() > 1e-3, "the window ignored the committed token"


@pytest.mark.parametrize("kv_cache", ["none", "prefix", "dual"])
def test_padded_rows_and_num_generations_match_samples_run_alone(models, kv_cache: str) -> None:
    """Left padding, batching and the shared prompt prefill change nothing for a sample."""
    model = models["llada"]
    ids, mask = left_padded_prompts([6, 3])
    group = 3
    ids, mask = ids.repeat_interleave(group, 0), mask.repeat_interleave(group, 0)
    sample_ids = torch.arange(10, 10 + ids.shape[0])
    cfg = config(temperature=1.0, kv_cache=kv_cache, seed=5)
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


@pytest.mark.parametrize("kv_cache", ["none", "dual"])
def test_finished_samples_leave_the_batch_and_free_their_cache(models, kv_cache: str) -> None:
    model = models["llada"]
    eos = model.facts.eos_token_id
    ids, mask = left_padded_prompts([5, 5, 5])
    fixed = torch.full((3, 16), -1)
    fixed[1, 2] = eos  # sample 1 can stop inside the first block
    cfg = config(kv_cache=kv_cache, stop_at_eos=True)
    with forward_batch_sizes(model) as forwards:
        stopped = generate(model, ids, mask, cfg, fixed_tokens=fixed)
    full = generate(model, ids, mask, replace(cfg, stop_at_eos=False), fixed_tokens=fixed)
    assert stopped.nfe[1] < full.nfe[1] and forwards[-1] < 3
    assert stopped.completion_mask[1].sum() == 3
    tail, tail_steps = stopped.completion_ids[1, 3:], stopped.step_map[1, 3:]
    assert ((tail_steps >= 0) | (tail == eos)).all() and (tail_steps[5:] == -1).all()  # masks left became EOS
    # Up to its stop each sample is what it would be without stopping; samples that never stop
    # are untouched by a neighbour leaving the batch (and its cache rows going).
    for row in range(3):
        keep = stopped.completion_mask[row]
        assert torch.equal(stopped.completion_ids[row][keep], full.completion_ids[row][keep])
        if stopped.truncated[row]:
            assert torch.equal(stopped.completion_ids[row], full.completion_ids[row]) and stopped.nfe[row] == full.nfe[row]
    assert stopped.truncated.any(), "no sample ran to the end; pick prompts where one does"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"kv_cache": "dual"},
        {"kv_cache": "prefix", "threshold": 0.05},
        {"remasking": "topk_margin", "schedule": "dream", "factor": 1.0},
        {"remasking": "entropy", "schedule": "dream", "alg_temp": 0.5},
        {"remasking": "random", "kv_cache": "dual"},
    ],
)
def test_temperature_zero_is_deterministic_and_every_token_is_finalized_once(models, overrides: dict) -> None:
    model = models["llada_shifted"]
    ids, mask = left_padded_prompts([6, 2, 4])
    cfg = config(steps=8, **overrides)
    a, b = generate(model, ids, mask, cfg), generate(model, ids, mask, cfg)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.step_map, b.step_map)
    assert not (a.completion_ids == model.facts.mask_token_id).any() and (a.step_map >= 0).all()
    # Each step's commits lie in one block, and steps are numbered 0..nfe-1 per sample.
    for row in range(3):
        steps = a.step_map[row]
        assert int(steps.max()) == int(a.nfe[row]) - 1
        assert steps[:8].max() < steps[8:].min()
    assert (a.confidence > 0).all() and (a.logprob <= 0).all()


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
