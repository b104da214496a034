"""The step loop's bookkeeping: only the statistics the rule reads, and a fixed number of
host-device synchronisations per step (counted on CPU by :class:`~diffrl.rollout.syncs.SyncCounter`)."""

from __future__ import annotations

import pytest
import torch

import diffrl.rollout.engine as engine
import diffrl.rollout.unmasking as unmasking
from diffrl.kernels.decode import ALL_STATS
from diffrl.models import DiffusionLM
from diffrl.rollout import generate
from diffrl.rollout.syncs import SyncCounter
from diffrl.rollout.unmasking import rule_needs
from tests.rollout_helpers import FAMILIES, block_causal, cache_kind, config, family_model, left_padded_prompts


@pytest.fixture(scope="module")
def models(tiny_checkpoint) -> dict[str, DiffusionLM]:
    return {family: family_model(tiny_checkpoint, family) for family in FAMILIES}


@pytest.mark.parametrize(
    ("overrides", "learned", "expected"),
    [
        ({}, False, {"prob"}),
        ({"threshold": 0.9}, False, {"prob"}),
        ({"remasking": "maskgit_plus", "temperature": 0.9}, False, {"prob"}),
        ({"remasking": "topk_margin"}, False, {"prob", "margin"}),
        ({"remasking": "entropy"}, False, {"prob", "entropy"}),
        ({"early_commit_margin": 0.5}, False, {"prob", "margin"}),
        ({}, True, {"prob", "margin", "entropy"}),
    ],
)
def test_rule_needs_only_what_it_reads(overrides: dict, learned: bool, expected: set[str]) -> None:
    assert rule_needs(config(**overrides), learned) == expected


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("overrides", [{"threshold": 0.5}, {"remasking": "topk_margin", "temperature": 0.8}, {"remasking": "entropy"}])
def test_decoding_fewer_statistics_keeps_every_token(models, monkeypatch, family: str, overrides: dict) -> None:
    model = models[family]
    cfg = config(model, kv_cache=cache_kind(model), **overrides)
    prompts, mask = left_padded_prompts([5, 9])
    asked: list[frozenset[str]] = []
    real = engine.decode_step

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        asked.append(frozenset(kwargs["needs"]))
        for name in ALL_STATS - kwargs["needs"]:
            assert getattr(result, name) is None, f"decode_step computed {name}, which the rule does not read"
        return result

    monkeypatch.setattr(engine, "decode_step", recording)
    lean = generate(model, prompts, mask, cfg)
    assert set(asked) == {rule_needs(cfg, learned=False)}
    monkeypatch.setattr(unmasking, "rule_needs", lambda cfg, learned: ALL_STATS)
    full = generate(model, prompts, mask, cfg)
    assert torch.equal(lean.completion_ids, full.completion_ids)
    assert torch.equal(lean.step_map, full.step_map)
    assert torch.equal(lean.confidence, full.confidence)
    assert torch.equal(lean.logprob, full.logprob)


def count_syncs(model: DiffusionLM, cfg, monkeypatch) -> tuple[SyncCounter, int]:
    """Synchronisations of one batch-1 rollout outside the decode kernel, and its steps (forwards)."""
    prompts, mask = left_padded_prompts([7])
    counter = SyncCounter()
    monkeypatch.setattr(engine, "decode_step", counter.exempt(engine.decode_step))
    with counter:
        out = generate(model, prompts, mask, cfg)
    return counter, int(out.nfe[0])


@pytest.mark.parametrize("family", ["llada", "sdar"])
@pytest.mark.parametrize("cached", [False, True])
def test_a_step_synchronises_a_fixed_number_of_times(models, monkeypatch, family: str, cached: bool) -> None:
    """Two per step (its rows and their candidate positions), one more where the cache plans a
    window on the host; a few per block and per rollout. One more per step fails this test."""
    model = models[family]
    cfg = config(model, max_completion_length=32, steps=32, kv_cache=cache_kind(model) if cached else "none", threshold=0.99, stop_at_eos=True)
    counter, steps = count_syncs(model, cfg, monkeypatch)
    per_step = 2 + int(cached or block_causal(model))
    blocks = cfg.num_blocks + 1
    assert steps >= 16, "the rollout must take enough steps for a per-step sync to show"
    assert counter.total <= per_step * steps + 3 * blocks + 8, (steps, dict(counter.calls))
