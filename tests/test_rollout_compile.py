"""``rollout.compile``: the compiled per-step forward decodes what eager decoding does, and compiles
a fixed set of graphs however many steps, blocks and rows a rollout has.

Tracing is checked on the families with the ``aot_eager`` backend (dynamo and AOTAutograd, the
parts that must accept our code, without inductor's C++ build, which takes minutes on two cores);
inductor itself, the backend ``rollout.compile`` uses, runs LLaDA's dual-cache rollout.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._dynamo.utils import counters

import diffrl.rollout.compiled as compiled
from diffrl.models import DiffusionLM
from diffrl.rollout import RolloutConfig, generate
from tests.rollout_helpers import cache_kind, config, family_model, left_padded_prompts

pytestmark = pytest.mark.slow
# family -> how many of ``rollouts`` it traces: Dream's layers are SDAR's and its attention LLaDA's,
# so its own part, the logit shift, is checked where it matters (the cached window) alone; the MoE
# families' own parts (expert dispatch, fused QKV, partial RoPE) are the same in either rollout.
FAMILIES = {"llada": 2, "dream": 1, "sdar": 2, "sdar_moe": 1, "llada2_moe": 1}


@pytest.fixture()
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def assert_same_rollout(eager, traced) -> None:
    assert torch.equal(traced.completion_ids, eager.completion_ids)
    assert torch.equal(traced.step_map, eager.step_map)
    assert torch.equal(traced.nfe, eager.nfe) and torch.equal(traced.nfe_cache, eager.nfe_cache)
    torch.testing.assert_close(traced.confidence, eager.confidence)


def rollouts(model: DiffusionLM, count: int = 2) -> list[RolloutConfig]:
    """The family's cache with threshold decoding, and the uncached loop."""
    return [config(model, kv_cache=cache_kind(model), threshold=0.5), config(model)][:count]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_traces_to_the_eager_tokens_without_recompiling_per_step(tiny_checkpoint, aot_eager, family: str) -> None:
    # No dynamo reset between families: they share DiffusionLM.forward's compiled entries, more
    # than dynamo's default cap of 8 by the third family, which must still compile (not fall back).
    counters.clear()
    model = family_model(tiny_checkpoint, family)
    # Dynamo compiles one-row variants (of the forward, and of the cache) once each: a batch of one,
    # of three, and of two whose first row is all inpainted but one column (the second row then
    # runs alone beside the first's cache rows).
    inpainted = torch.full((2, 64), -1)
    inpainted[0, 1:] = 7
    for lengths, fixed in (([6], None), ([5, 9, 7], None), ([5, 9], inpainted)):
        prompts, mask = left_padded_prompts(lengths)
        for cfg in rollouts(model, FAMILIES[family]):
            fixed_tokens = None if fixed is None else fixed[:, : cfg.max_completion_length]
            eager = generate(model, prompts, mask, cfg, fixed_tokens=fixed_tokens)
            assert_same_rollout(eager, generate(model, prompts, mask, replace(cfg, compile=True), fixed_tokens=fixed_tokens))
    warm = graphs()
    assert warm > 0, "rollout.compile=true ran no compiled forward"
    # Twice the blocks and steps, other prompts and batch size: sizes move, the graphs stay.
    prompts, mask = left_padded_prompts([6, 11, 4, 8], seed=1)
    for cfg in rollouts(model, FAMILIES[family]):
        longer = replace(cfg, max_completion_length=2 * cfg.max_completion_length, steps=2 * cfg.steps)
        assert_same_rollout(generate(model, prompts, mask, longer), generate(model, prompts, mask, replace(longer, compile=True)))
    assert graphs() == warm, f"a longer rollout compiled {graphs() - warm} more graphs: something recompiles per step or block"
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_inductor_decodes_the_eager_tokens(tiny_checkpoint) -> None:
    torch._dynamo.reset()
    model = family_model(tiny_checkpoint, "llada", dtype=torch.float32)
    prompts, mask = left_padded_prompts([5, 9])
    for cfg in rollouts(model, 1):
        assert_same_rollout(generate(model, prompts, mask, cfg), generate(model, prompts, mask, replace(cfg, compile=True)))
