"""Paper knobs on hand-computed cases: d1's classifier-free guidance in the estimator and the
sampler, JustGRPO's learner temperature and per-micro-step normaliser, GDPO's exact-count masks."""

from __future__ import annotations

from pathlib import Path

import torch

from diffrl.algorithms.estimators import AutoregressiveLikelihood, MonteCarloELBO, OneStepMeanField
from diffrl.algorithms.losses import token_weights
from diffrl.rollout import generate_chunked
from diffrl.rollout.config import RolloutConfig
from tests.distributed_worker import recipe
from tests.test_estimators import make_batch


def guided_logits(model, noisy: torch.Tensor, blank: torch.Tensor, key_mask: torch.Tensor, scale: float) -> torch.Tensor:
    """d1's get_logits: un_logits + (cfg_scale + 1) * (logits - un_logits), on full logits."""
    logits, un = (model.logits(model(x, key_mask)).float() for x in (noisy, blank))
    return un + (scale + 1) * (logits - un)


def test_guided_estimator_equals_d1_logit_guidance(tiny_llada) -> None:
    batch = make_batch(tiny_llada)
    mask_id, plen = tiny_llada.facts.mask_token_id, batch.prompt_ids.shape[1]
    completion = torch.full_like(batch.completion_ids, mask_id)
    noisy = torch.cat((batch.prompt_ids, completion), 1)
    blank = torch.cat((torch.full_like(batch.prompt_ids, mask_id), completion), 1)
    logits = guided_logits(tiny_llada, noisy, blank, batch.key_mask, 1.5)[:, plen:]
    direct = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
    scores = OneStepMeanField(cfg_scale=1.5)(tiny_llada, batch, seed=3)
    m = batch.completion_mask
    assert torch.allclose(scores.logp[m], direct[m], atol=1e-4)
    # Guidance changes the estimate (the test could fail).
    assert (scores.logp[m] - OneStepMeanField()(tiny_llada, batch, seed=3).logp[m]).abs().max() > 1e-3


def test_guided_sampler_decodes_the_guided_argmax(tiny_llada) -> None:
    """Greedy, one block, one token per step: the first committed token is the guided argmax at
    its position over the all-masked completion."""
    batch = make_batch(tiny_llada, n=2)
    cfg = RolloutConfig(max_completion_length=4, block_length=4, steps=4, temperature=0.0, cfg_scale=2.0, stop_at_eos=False)
    out = generate_chunked(tiny_llada.eval(), batch.prompt_ids, batch.prompt_mask, cfg, sample_ids=batch.sample_ids)
    mask_id, plen = tiny_llada.facts.mask_token_id, batch.prompt_ids.shape[1]
    completion = torch.full((2, 4), mask_id)
    key_mask = torch.cat((batch.prompt_mask, torch.ones(2, 4, dtype=torch.bool)), 1)
    noisy = torch.cat((batch.prompt_ids, completion), 1)
    blank = torch.cat((torch.full_like(batch.prompt_ids, mask_id), completion), 1)
    with torch.no_grad():
        logits = guided_logits(tiny_llada, noisy, blank, key_mask, 2.0)[:, plen:]
    logits[..., mask_id] = float("-inf")
    probs = logits.softmax(-1)
    top, token = probs.max(-1)
    first = top.argmax(1)
    rows = torch.arange(2)
    assert torch.equal(out.completion_ids[rows, first], token[rows, first])
    assert (out.step_map[rows, first] == 0).all()


def test_learner_temperature_divides_the_logits(tiny_llada) -> None:
    batch = make_batch(tiny_llada, n=2, glen=4)
    mask_id, plen = tiny_llada.facts.mask_token_id, batch.prompt_ids.shape[1]
    scores = AutoregressiveLikelihood(temperature=0.7)(tiny_llada, batch, seed=0)
    for i in range(4):
        completion = torch.where(torch.arange(4) >= i, mask_id, batch.completion_ids)
        logits = tiny_llada.logits(tiny_llada(torch.cat((batch.prompt_ids, completion), 1), batch.key_mask))[:, plen + i].float()
        direct = torch.log_softmax(logits / 0.7, -1).gather(-1, batch.completion_ids[:, i : i + 1]).squeeze(-1)
        m = batch.completion_mask[:, i]
        assert torch.allclose(scores.logp[m, i], direct[m], atol=1e-5), i


def test_exact_count_masks_hold_round_t_times_length_tokens(tiny_llada) -> None:
    batch = make_batch(tiny_llada)  # row 1 has 5 completion tokens, the others 8
    est = MonteCarloELBO(num_nodes=3, mask_count="exact")
    lengths = batch.completion_mask.sum(1)
    for t in (0.1127, 0.5, 0.8873):  # the 3 Gauss-Legendre nodes on (0, 1)
        masked = est.draw_mask(batch, 7, 0, 0, torch.full((len(batch), 1), t))
        assert torch.equal(masked.sum(1), torch.round(t * lengths.float()).long()), t
        assert not (masked & ~batch.completion_mask).any()
    bernoulli = MonteCarloELBO(num_nodes=3).draw_mask(batch, 7, 0, 0, torch.full((len(batch), 1), 0.5))
    assert not torch.equal(bernoulli.sum(1), torch.round(0.5 * lengths.float()).long())
    # The exact mask takes the lowest keyed uniforms, so a smaller t masks a subset.
    small, large = (est.draw_mask(batch, 7, 0, 0, torch.full((len(batch), 1), t)) for t in (0.3, 0.6))
    assert torch.equal(small & large, small) and small.sum() < large.sum()


def test_per_set_normaliser_weights_by_hand() -> None:
    """dr_grpo with per-row counts: rows 0 and 1 share a set of 2 sequences, row 2 is alone."""
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    w = token_weights(mask, "dr_grpo", 3, 3, global_sequences=torch.tensor([[2.0], [2.0], [1.0]]))
    want = torch.tensor([[1 / 6, 1 / 6, 0], [1 / 6, 0, 0], [1 / 3, 1 / 3, 1 / 3]])
    assert torch.allclose(w, want)


def test_just_grpo_micro_steps_count_their_own_valid_samples(tmp_path: Path) -> None:
    """4 prompts x 4 samples in micro-steps of 2 prompts: global prompt p is in step p mod 2."""
    from diffrl.trainer.build import setup
    from diffrl.trainer.distributed import init_distributed
    from diffrl.trainer.loop import sequence_counts

    run = setup(recipe(f"trainer.output_dir={tmp_path}", "algorithm=just_grpo", "algorithm.just_grpo.micro_step_prompts=2"), init_distributed("cpu"))
    try:
        keep = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
        counts = sequence_counts(run, keep, torch.arange(16))
        assert counts.squeeze(1).tolist() == [6.0] * 4 + [4.0] * 4 + [6.0] * 4 + [4.0] * 4
        global_run = setup(recipe(f"trainer.output_dir={tmp_path}/g", "algorithm=just_grpo", "algorithm.just_grpo.normalizer=global"), init_distributed("cpu"))
        assert sequence_counts(global_run, keep, torch.arange(16)) == 10.0
        global_run.close()
    finally:
        run.close()
