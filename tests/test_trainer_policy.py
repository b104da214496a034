"""The policy's calls: rollouts sample with the trainer's current parameters (weight sync), and
the KL reference of a full fine-tune scores as the frozen initial model."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from diffrl.algorithms import PolicyBatch
from diffrl.models import build_model
from diffrl.rollout import generate
from diffrl.trainer.parallelize import Root
from diffrl.trainer.policy import Policy
from diffrl.trainer.sft import SupervisedObjective
from diffrl.trainer.strategy import Strategy
from tests.rollout_helpers import config, left_padded_prompts


def test_generation_after_an_optimizer_step_equals_a_fresh_engine_from_the_state_dict(tiny_llada, tiny_llada_dir: Path) -> None:
    model = tiny_llada.train()
    policy = Policy(Strategy("single", Root(model), torch.optim.AdamW(model.parameters(), lr=5e-2)), micro_batch_size=3)
    ids, mask = left_padded_prompts([5, 3, 4], seed=1)
    cfg = config(temperature=1.0, kv_cache="dual", threshold=0.5, seed=2)
    sample_ids = torch.arange(3)
    before = policy.generate(ids, mask, cfg, sample_ids=sample_ids)
    assert model.training, "generate must hand the module back in training mode"

    completion = before.completion_ids
    batch = PolicyBatch(ids, mask, completion, torch.ones_like(completion, dtype=torch.bool), sample_ids, before.step_map, before.fixed_mask, before.logprob)
    policy.loss_and_backward(SupervisedObjective(share=1.0), batch, seed=0)
    policy.step()

    after = policy.generate(ids, mask, cfg, sample_ids=sample_ids)
    fresh = build_model(tiny_llada_dir)
    fresh.to_empty(device="cpu")
    fresh.load_state_dict({k: v.detach().clone() for k, v in policy.state_dict().items()})
    expected = generate(fresh.eval(), ids, mask, cfg)
    assert torch.equal(after.completion_ids, expected.completion_ids)
    assert torch.equal(after.step_map, expected.step_map)
    torch.testing.assert_close(after.logprob, expected.logprob, rtol=0, atol=0)
    assert not torch.equal(after.logprob, before.logprob), "the optimizer step did not reach the engine"


def test_a_frozen_reference_keeps_the_initial_weights_until_anchored_to_the_policy(tiny_llada) -> None:
    from diffrl.algorithms.estimators import OneStepMeanField
    from diffrl.trainer.policy import FrozenCopy

    model = tiny_llada.train()
    policy = Policy(Strategy("single", Root(model), torch.optim.AdamW(model.parameters(), lr=5e-2)), micro_batch_size=2)
    reference = FrozenCopy(Policy(Strategy("single", Root(copy.deepcopy(model).requires_grad_(False))), micro_batch_size=2))
    ids, mask = left_padded_prompts([5, 3, 4, 6], seed=3)
    rollout = policy.generate(ids, mask, config(temperature=1.0), sample_ids=torch.arange(4))
    batch = PolicyBatch.from_rollout(rollout)
    estimator = OneStepMeanField(p_mask_prompt=0.0)
    initial = policy.score(estimator, batch, seed=1)
    policy.loss_and_backward(SupervisedObjective(share=1.0), batch, seed=0)
    policy.step()
    trained = policy.score(estimator, batch, seed=1)
    assert (trained.logp - initial.logp).abs().max() > 1e-4, "the step must move the policy"
    assert torch.equal(reference.score(estimator, batch, seed=1).logp, initial.logp)
    reference.anchor_to(policy)
    assert torch.equal(reference.score(estimator, batch, seed=1).logp, trained.logp)
