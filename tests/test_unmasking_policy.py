"""The learned unmasking rule (arXiv 2512.09106): its decision distribution, its record in the
rollout, and its composition with every family's KV cache."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from diffrl.models import DiffusionLM
from diffrl.rollout import Rollout, generate, generate_chunked
from diffrl.rollout.unmasking_policy import (
    FEATURES,
    UnmaskingPolicy,
    UnmaskingPolicyConfig,
    decision_logprob,
    load_unmasking_policy,
    sample_decision,
    save_unmasking_policy,
)
from tests.eval_helpers import byte_llada  # noqa: F401  (a fixture)
from tests.rollout_helpers import FAMILIES, cache_kind, config, family_model, left_padded_prompts


@pytest.fixture(scope="module")
def models(tiny_checkpoint) -> dict[str, DiffusionLM]:
    return {family: family_model(tiny_checkpoint, family) for family in FAMILIES}


def random_policy(seed: int = 0) -> UnmaskingPolicy:
    """A policy whose transformer path matters: random head, threshold skip at 0.5 (the tiny
    models' confidences are low), so decisions vary across positions and steps."""
    torch.manual_seed(seed)
    policy = UnmaskingPolicy(UnmaskingPolicyConfig(init_threshold=0.02, init_sharpness=50.0))
    with torch.no_grad():
        policy.head.weight.normal_(0, 1.0)
    return policy.eval()


def test_decision_distribution_sums_to_one_and_sampling_matches_it() -> None:
    """Every non-empty decision over the masked set has the probability decision_logprob gives
    (the empty Bernoulli draw folded into the best position): they sum to 1 and the keyed sampler
    draws them with those frequencies."""
    logits = torch.tensor([[0.3, -1.2, 2.0, -0.4, 0.9]])
    masked = torch.tensor([[True, True, False, True, True]])
    positions = [j for j in range(5) if masked[0, j]]
    total, probs = 0.0, {}
    for bits in itertools.product([False, True], repeat=len(positions)):
        if not any(bits):
            continue
        commits = torch.zeros(1, 5, dtype=torch.bool)
        commits[0, positions] = torch.tensor(bits)
        p = decision_logprob(logits, masked, commits).exp().item()
        probs[bits] = p
        total += p
    assert total == pytest.approx(1.0, abs=1e-6)
    n = 40000
    gen = torch.Generator().manual_seed(0)
    draws = sample_decision(logits.expand(n, 5), masked.expand(n, 5), torch.rand(n, 5, generator=gen, dtype=torch.float64))
    assert draws.any(1).all() and not draws[:, 2].any()
    only_best = draws[:, 4] & (draws.sum(1) == 1)  # position 4 has the highest masked logit
    assert only_best.float().mean().item() == pytest.approx(probs[(False, False, False, True)], abs=0.01)
    assert draws[:, 0].float().mean().item() > draws[:, 1].float().mean().item()


def rescored(policy: UnmaskingPolicy, rollout: Rollout) -> torch.Tensor:
    """Every recorded step's decision log-prob, recomputed from its features and commits."""
    features, commits = rollout.unmask_features, rollout.unmask_commits
    masked = features[..., FEATURES.index("masked")] > 0
    flat = decision_logprob(policy(features.flatten(0, 1)), masked.flatten(0, 1), commits.flatten(0, 1))
    return flat.view(commits.shape[:2])


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_recorded_decision_logprobs_equal_a_recomputation(models, family: str) -> None:
    model, policy = models[family], random_policy()
    ids, mask = left_padded_prompts([5, 3, 4])
    rollout = generate(model, ids, mask, config(model, temperature=1.0), unmasking_policy=policy)
    steps = rollout.unmask_commits.any(-1)
    # One record per step a sample took, each committing at least one position, summing to the tokens decoded.
    assert torch.equal(steps.sum(1), (rollout.step_map.amax(1) + 1))
    assert torch.equal(rollout.unmask_commits.sum((1, 2)), (rollout.step_map >= 0).sum(1))
    assert (rollout.step_map.amax(1) + 1 < rollout.completion_ids.shape[1]).any(), "some step should commit several tokens"
    with torch.no_grad():
        again = rescored(policy, rollout)
    torch.testing.assert_close(again[steps], rollout.unmask_logprob[steps], rtol=1e-5, atol=1e-5)
    assert (rollout.unmask_logprob[~steps] == 0).all()
    # The rows of a chunked rollout carry their records through concat and select.
    chunked = generate_chunked(model, ids, mask, config(model, temperature=1.0), chunk=2, unmasking_policy=policy)
    torch.testing.assert_close(chunked.select(torch.tensor([2, 0])).unmask_logprob, rollout.unmask_logprob[[2, 0]])


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_rollouts_equal_uncached_with_the_learned_rule(models, family: str) -> None:
    """At a fixed policy the learned rule's draws are keyed like every other, so the family's
    exact cache (dual refreshed every step / the block cache) decides exactly as the uncached loop."""
    model, policy = models[family], random_policy(1)
    ids, mask = left_padded_prompts([6, 2, 4], seed=3)
    cached_kw = {"kv_cache": cache_kind(model)} | ({} if cache_kind(model) == "prefix" else {"cache_refresh_steps": 1})
    plain = generate(model, ids, mask, config(model, temperature=1.0), unmasking_policy=policy)
    cached = generate(model, ids, mask, config(model, temperature=1.0, **cached_kw), unmasking_policy=policy)
    assert torch.equal(plain.completion_ids, cached.completion_ids)
    assert torch.equal(plain.step_map, cached.step_map)
    assert torch.equal(plain.nfe, cached.nfe)
    assert torch.equal(plain.unmask_commits, cached.unmask_commits)
    torch.testing.assert_close(plain.unmask_logprob, cached.unmask_logprob, rtol=1e-6, atol=1e-6)
    assert (plain.step_map.amax(1) + 1 < plain.completion_ids.shape[1]).any(), "the policy should commit in parallel somewhere"


def test_policy_folder_round_trips_and_drives_generate_by_path(models, tmp_path: Path) -> None:
    model, policy = models["dream"], random_policy(2)
    folder = save_unmasking_policy(policy, tmp_path / "policy")
    loaded = load_unmasking_policy(folder)
    ids, mask = left_padded_prompts([4, 4])
    by_object = generate(model, ids, mask, config(model, temperature=1.0), unmasking_policy=policy)
    by_path = generate(model, ids, mask, config(model, temperature=1.0, unmasking_policy=str(folder)))
    assert torch.equal(by_object.completion_ids, by_path.completion_ids)
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="rollout.unmasking_policy"):
        load_unmasking_policy(tmp_path / "nothing")
    with pytest.raises(ValueError, match="rollout.threshold"):
        config(model, unmasking_policy=str(folder), threshold=0.9)


def test_evaluation_decodes_with_the_policy_at_rollout_unmasking_policy(byte_llada, shared: Path, tmp_path: Path) -> None:
    """``python -m diffrl.eval rollout.unmasking_policy=PATH``'s recipe: a policy that commits every
    masked position decodes each of the two blocks in one forward, where the heuristic takes 4."""
    from diffrl.eval.runner import evaluate
    from tests.eval_helpers import compose_eval, eval_overrides

    policy = UnmaskingPolicy(UnmaskingPolicyConfig(init_threshold=None))
    with torch.no_grad():
        policy.head.bias.fill_(50.0)
    folder = save_unmasking_policy(policy, tmp_path / "policy")
    for name, extra in (("learned", [f"rollout.unmasking_policy={folder}"]), ("heuristic", [])):
        evaluate(compose_eval(*eval_overrides(byte_llada, shared, tmp_path / name, "eval.limit=3", "model.stop_tokens=[]", *extra)))
    records = {name: [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()] for name in ("learned", "heuristic")}
    assert [r["nfe"] for r in records["learned"]] == [2, 2, 2]
    assert [r["nfe"] for r in records["heuristic"]] == [8, 8, 8]
