"""CJ-GRPO's decoders (EOS Early Rejection, Ascending Step-Size) and MDPO's running-confidence
remasking: the rules by hand, then in the engine on a real tiny checkpoint."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffrl.rollout import RolloutConfig, generate
from diffrl.rollout.schedule import ascending_counts
from diffrl.rollout.trajectory_rules import block_progress, reject_eos, running_confidence_remask


def test_ascending_schedule_doubles_and_the_last_step_takes_the_rest() -> None:
    counts = ascending_counts(torch.tensor([128, 10, 3, 0]), 5)
    assert counts.tolist() == [[1, 2, 4, 8, 113], [1, 2, 4, 3, 0], [1, 2, 0, 0, 0], [0, 0, 0, 0, 0]]
    # gen_length 127 = 2^7 - 1 in 7 steps: 1, 2, ..., 64 (the reference's docstring example).
    assert ascending_counts(torch.tensor([127]), 7).tolist() == [[1, 2, 4, 8, 16, 32, 64]]


def test_eos_gamma_rises_with_the_step_fraction_or_the_committed_share() -> None:
    assert [block_progress(s, 5, ascending=False) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # Under 2^i steps the share committed after step i of 3 is 1/8, 3/8, 7/8.
    assert [block_progress(s, 3, ascending=True) for s in range(3)] == [1 / 8, 3 / 8, 7 / 8]
    assert block_progress(0, 1, ascending=False) == 1.0
    scores = torch.tensor([[0.9, 0.8, 0.7]], dtype=torch.float64)
    tokens = torch.tensor([[5, 2, 2]])
    assert torch.equal(reject_eos(scores, tokens, eos_id=2, gamma=0.5), torch.tensor([[0.9, 0.4, 0.35]], dtype=torch.float64))


def test_running_confidence_remasks_the_least_confident_written_tokens() -> None:
    running = torch.tensor([[0.9, 0.2, 0.5, 0.2, 0.0], [0.3, 0.1, 0.8, 0.6, 0.7]])
    written = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    remask = running_confidence_remask(running, written, torch.tensor([2, 1]))
    # Row 0: the two 0.2 tokens (position 4 was never written); row 1: the 0.1 token.
    assert remask.tolist() == [[False, True, False, True, False], [False, True, False, False, False]]
    assert not running_confidence_remask(running, written, torch.tensor([0, 0])).any()


def eos_prone(tiny_checkpoint):
    """The tiny LLaDA with EOS given the LM-head row of the token it predicts most, slightly
    stronger, so greedy decoding wants EOS at many positions and the rejection has work to do."""
    from tests.rollout_helpers import family_model, left_padded_prompts

    model = family_model(tiny_checkpoint, "llada")
    ids, mask = left_padded_prompts([6], seed=4)
    plain = generate(model, ids, mask, RolloutConfig(max_completion_length=16, block_length=16, steps=16, stop_at_eos=False))
    favourite = int(plain.completion_ids.flatten().mode().values)
    with torch.no_grad():
        model.lm_head.weight[model.facts.eos_token_id] = 1.01 * model.lm_head.weight[favourite]
    return model, ids, mask


def plain_logits(model, x: torch.Tensor) -> torch.Tensor:
    """[L, V] log-softmax of one plain forward, the mask token never chosen (as the engine)."""
    logits = model.logits(model(x))[0].double()
    logits[:, model.facts.mask_token_id] = float("-inf")
    return torch.log_softmax(logits, -1)


@torch.no_grad()
def plain_eoser(model, prompt: torch.Tensor, gen_length: int, steps: int, min_gamma: float, ascending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """EOSER-ASS-RL's greedy decoders for one prompt and one block, written out: EOS confidence x
    gamma_i, gamma_i = min + (1 - min) t_i, with ``ascending`` (eoser_ass_generate) step i
    committing 2^i tokens (the last step the rest) and t_i = (2^(i+1) - 1) / 2^steps, else
    (the EOSER sampler) L / steps tokens per step and t_i = i / (steps - 1).
    Returns the tokens and the step that committed each."""
    mask_id, eos = model.facts.mask_token_id, model.facts.eos_token_id
    x = torch.cat((prompt, torch.full((1, gen_length), mask_id)), dim=1)
    step_of = torch.full((gen_length,), -1)
    if ascending:
        counts = [2**i for i in range(steps - 1)] + [gen_length - (2 ** (steps - 1) - 1)]
    else:
        counts = [gen_length // steps] * steps
    for i in range(steps):
        logp = plain_logits(model, x)[-gen_length:]
        conf, x0 = logp.exp().max(-1)
        t = (2 ** (i + 1) - 1) / 2**steps if ascending else i / (steps - 1)
        conf = torch.where(x0 == eos, conf * (min_gamma + (1 - min_gamma) * t), conf)
        masked = x[0, -gen_length:] == mask_id
        chosen = torch.topk(torch.where(masked, conf, float("-inf")), counts[i]).indices
        x[0, -gen_length + chosen] = x0[chosen]
        step_of[chosen] = i
    return x[0, -gen_length:], step_of


@pytest.mark.parametrize("ascending", [True, False])
def test_eos_early_rejection_matches_the_reference_loop(tiny_checkpoint, ascending: bool) -> None:
    model, ids, mask = eos_prone(tiny_checkpoint)
    steps = 4 if ascending else 8
    cfg = RolloutConfig(
        max_completion_length=16, block_length=16, steps=steps, schedule="ascending" if ascending else "linear", eos_min_gamma=0.01, stop_at_eos=False
    )
    ours = generate(model, ids, mask, cfg)
    tokens, step_of = plain_eoser(model, ids, 16, steps, 0.01, ascending)
    assert torch.equal(ours.completion_ids[0], tokens) and torch.equal(ours.step_map[0], step_of)
    if ascending:
        # Step i committed 2^i tokens, the last one the rest: 1, 2, 4, 9.
        assert torch.bincount(ours.step_map[0]).tolist() == [1, 2, 4, 9]
    else:
        # The rejection is active: the same decoder without it commits other tokens.
        assert not torch.equal(generate(model, ids, mask, replace(cfg, eos_min_gamma=None)).completion_ids, ours.completion_ids)


@torch.no_grad()
def plain_running_confidence(model, prompt: torch.Tensor, gen_length: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MDPO's diffusion_generate with rcr=True for one prompt and one block, greedy, written out:
    every step fills all masks, records each written token's confidence, then masks again the
    lowest-confidence tokens, as many as the later steps will commit (LLaDA's linear counts)."""
    mask_id = model.facts.mask_token_id
    x = torch.cat((prompt, torch.full((1, gen_length), mask_id)), dim=1)
    counts = [gen_length // steps + (1 if i < gen_length % steps else 0) for i in range(steps)]
    running = torch.zeros(gen_length, dtype=torch.float64)
    step_of = torch.full((gen_length,), -1)
    for i in range(steps):
        logp = plain_logits(model, x)[-gen_length:]
        conf, x0 = logp.exp().max(-1)
        masked = x[0, -gen_length:] == mask_id
        x[0, -gen_length:] = torch.where(masked, x0, x[0, -gen_length:])
        running = torch.where(masked, conf, running)
        step_of = torch.where(masked, torch.full_like(step_of, i), step_of)
        later = sum(counts[i + 1 :])
        if later:
            again = torch.topk(running, later, largest=False).indices
            x[0, -gen_length + again] = mask_id
    return x[0, -gen_length:], step_of


def test_running_confidence_remasking_matches_mdpo_and_replaces_early_tokens(tiny_checkpoint) -> None:
    from tests.rollout_helpers import family_model, left_padded_prompts

    model = family_model(tiny_checkpoint, "llada")
    ids, mask = left_padded_prompts([6, 5], seed=7)
    cfg = RolloutConfig(max_completion_length=16, block_length=16, steps=8, running_confidence=True, stop_at_eos=False)
    ours = generate(model, ids, mask, cfg)
    for row in range(2):
        tokens, steps = plain_running_confidence(model, ids[row : row + 1, mask[row]], 16, 8)
        assert torch.equal(ours.completion_ids[row], tokens) and torch.equal(ours.step_map[row], steps), row
    # A token written early was masked again and rewritten later: the last writes are not the
    # plain schedule's two tokens per step.
    assert any(torch.bincount(ours.step_map[row], minlength=8).tolist() != [2] * 8 for row in range(2))
    with pytest.raises(ValueError, match="running_confidence"):
        RolloutConfig(running_confidence=True, threshold=0.9)
