"""Real optimisation steps on the tiny model: losses fall and every parameter moves."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffrl.algorithms import PolicyBatch, build_algorithm
from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.diffu_grpo import DiffuGRPOConfig
from diffrl.algorithms.losses import token_weights
from diffrl.algorithms.sft import masked_diffusion_loss
from diffrl.rollout import RolloutConfig, generate


def test_diffu_grpo_steps_lower_the_surrogate_and_change_every_weight(tiny_llada) -> None:
    model = tiny_llada.train()
    algo = build_algorithm(DiffuGRPOConfig(num_generations=4, p_mask_prompt=0.2, beta=0.0))
    prompts = torch.randint(0, 500, (2, 5)).repeat_interleave(4, 0)
    rollout = generate(model.eval(), prompts, torch.ones_like(prompts, dtype=torch.bool), RolloutConfig(max_completion_length=8, block_length=8, steps=8, temperature=1.0, stop_at_eos=False))
    model.train()
    batch = PolicyBatch.from_rollout(rollout)
    rewards = torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 0])
    adv = algo.advantage(Outcome.of_rewards(rewards, 4))
    weights = token_weights(batch.completion_mask, "bnpo", 8, 8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    old = algo.estimator(model, batch, seed=9).logp.detach()
    losses = []
    for _ in range(5):
        scores = algo.estimator(model, batch, seed=9)
        loss, _ = algo.loss(scores.logp, old, adv, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    # Rewarded samples became more likely, the others less.
    delta = (algo.estimator(model, batch, seed=9).logp - old).sum(1)
    assert (delta[adv > 0] > 0).all() and (delta[adv < 0] < 0).all()


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
def test_masked_diffusion_sft_lowers_its_loss(tiny_llada, attention: str) -> None:
    # block_causal: the same weights under block-causal attention (block 4), which switches the
    # loss to per-block masking rates and the two-stream [x_t ; x_0] input.
    tiny_llada.facts = replace(tiny_llada.facts, attention=attention, block_size=4)
    model = tiny_llada.train()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 500, (8, 4), generator=gen)
    target = torch.randint(0, 500, (8, 6), generator=gen)
    ones = torch.ones_like(target, dtype=torch.bool)
    batch = PolicyBatch(prompt, torch.ones_like(prompt, dtype=torch.bool), target, ones, torch.arange(8), target * 0, ~ones, target.float() * 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def held_out() -> float:
        with torch.no_grad():
            return sum(masked_diffusion_loss(model, batch, seed=1000 + s)[0].item() for s in range(8)) / 8

    before = held_out()
    for step in range(60):
        loss, _ = masked_diffusion_loss(model, batch, seed=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out() < 0.7 * before
