"""Weight sync: the in-process engine samples with the trainer's current parameters."""

from __future__ import annotations

from pathlib import Path

import torch

from diffrl.algorithms import PolicyBatch
from diffrl.algorithms.sft import masked_diffusion_loss
from diffrl.models import build_model
from diffrl.rollout import InProcessBackend, RolloutBackend, generate
from tests.rollout_helpers import config, left_padded_prompts


def test_generation_after_an_optimizer_step_equals_a_fresh_engine_from_the_state_dict(tiny_llada, tiny_llada_dir: Path) -> None:
    model = tiny_llada.train()
    backend: RolloutBackend = InProcessBackend(model)
    ids, mask = left_padded_prompts([5, 3, 4], seed=1)
    cfg = config(temperature=1.0, kv_cache="dual", threshold=0.5, seed=2)
    before = backend.generate(ids, mask, cfg)
    assert model.training, "the backend must hand the module back in training mode"

    completion = before.completion_ids
    batch = PolicyBatch(ids, mask, completion, torch.ones_like(completion, dtype=torch.bool), torch.arange(3), before.step_map, before.fixed_mask, before.logprob)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2)
    loss, _ = masked_diffusion_loss(model, batch, seed=0)
    loss.backward()
    optimizer.step()

    after = backend.generate(ids, mask, cfg)
    fresh = build_model(tiny_llada_dir)
    fresh.to_empty(device="cpu")
    fresh.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    expected = generate(fresh.eval(), ids, mask, cfg)
    assert torch.equal(after.completion_ids, expected.completion_ids)
    assert torch.equal(after.step_map, expected.step_map)
    torch.testing.assert_close(after.logprob, expected.logprob, rtol=0, atol=0)
    assert not torch.equal(after.logprob, before.logprob), "the optimizer step did not reach the engine"
