"""The LLaDA sampler: a plain reference, trajectory invariants, padding and seeds (the per-family
checks of EOS, inpainting and determinism are in test_rollout_cache.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffrl.models import load_pretrained
from diffrl.rollout import RolloutConfig, generate


@pytest.fixture(scope="module")
def real_vocab_llada(tmp_path_factory: pytest.TempPathFactory, shared: Path):
    """Tiny LLaDA with the full published vocabulary in fp64, weights large enough to be decisive."""
    from diffrl.models.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(shared / "hf" / "LLaDA-8B-Instruct", tmp_path_factory.mktemp("llada_real_vocab"), seed=1, std=0.2)
    return load_pretrained(folder, dtype=torch.float64).eval()


def reference_llada_generate(model, prompt: torch.Tensor, steps: int, gen_length: int, block_length: int) -> torch.Tensor:
    """LLaDA's published ``generate`` (ML-GSAI/LLaDA generate.py) at temperature 0 with
    low-confidence remasking, written out plainly for one unpadded prompt."""
    mask_id = model.facts.mask_token_id
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    plen = prompt.shape[1]
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for b in range(num_blocks):
        block_masks = int((x[:, plen + b * block_length : plen + (b + 1) * block_length] == mask_id).sum())
        counts = [block_masks // steps_per_block + (1 if i < block_masks % steps_per_block else 0) for i in range(steps_per_block)]
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model.logits(model(x))
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, dim=-1)
            x0_p = p.gather(-1, x0[..., None]).squeeze(-1)
            x0_p[:, plen + (b + 1) * block_length :] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf"), dtype=x0_p.dtype))
            _, select = torch.topk(confidence[0], k=counts[i])
            x[0, select] = x0[0, select]
    return x[:, plen:]


@torch.no_grad()
def test_matches_plain_reference_at_temperature_zero(real_vocab_llada) -> None:
    torch.manual_seed(0)
    prompt = torch.randint(0, 126000, (1, 6))
    cfg = RolloutConfig(max_completion_length=16, block_length=8, steps=12, temperature=0.0, stop_at_eos=False)
    ours = generate(real_vocab_llada, prompt, torch.ones_like(prompt, dtype=torch.bool), cfg)
    expected = reference_llada_generate(real_vocab_llada, prompt, steps=12, gen_length=16, block_length=8)
    assert not (expected == real_vocab_llada.facts.mask_token_id).any(), "reference committed a mask token"
    assert torch.equal(ours.completion_ids, expected)


def _prompts(n: int = 3, vocab: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of lengths 7, 5, 3, ..."""
    torch.manual_seed(0)
    width = 7
    ids = torch.full((n, width), 510)
    mask = torch.zeros(n, width, dtype=torch.bool)
    for i in range(n):
        length = width - 2 * i
        ids[i, width - length :] = torch.randint(0, vocab, (length,))
        mask[i, width - length :] = True
    return ids, mask


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_trajectory_commits_every_token_once(tiny_llada, remasking: str, temperature: float) -> None:
    ids, mask = _prompts()
    cfg = RolloutConfig(max_completion_length=16, block_length=8, steps=8, temperature=temperature, remasking=remasking, stop_at_eos=False)
    out = generate(tiny_llada, ids, mask, cfg)
    mask_id = tiny_llada.facts.mask_token_id
    assert torch.equal(out.prompt_ids, ids)
    assert not (out.completion_ids == mask_id).any()
    assert (out.step_map >= 0).all()
    steps_per_block = cfg.steps // cfg.num_blocks
    for b in range(cfg.num_blocks):
        block = out.step_map[:, b * 8 : (b + 1) * 8]
        # Block b is decoded in its own steps, two tokens per step (8 masks over 4 steps).
        assert block.min() >= b * steps_per_block and block.max() < (b + 1) * steps_per_block
        for s in range(b * steps_per_block, (b + 1) * steps_per_block):
            assert ((block == s).sum(1) == 2).all()
    assert (out.nfe == cfg.steps).all()
    assert (out.confidence > 0).all() and (out.logprob <= 0).all()


def test_sampling_is_keyed_by_seed_and_sample_id_not_batch(tiny_llada) -> None:
    ids, mask = _prompts()
    cfg = RolloutConfig(max_completion_length=8, block_length=8, steps=8, temperature=1.0, stop_at_eos=False, seed=3)
    sample_ids = torch.tensor([10, 11, 12])
    full = generate(tiny_llada, ids, mask, cfg, sample_ids=sample_ids)
    again = generate(tiny_llada, ids, mask, cfg, sample_ids=sample_ids)
    assert torch.equal(full.completion_ids, again.completion_ids)
    # The last (most padded) row alone, without its padding, gives the same sample.
    row = 2
    alone = generate(tiny_llada, ids[row : row + 1, mask[row]], torch.ones(1, int(mask[row].sum()), dtype=torch.bool), cfg, sample_ids=sample_ids[row : row + 1])
    assert torch.equal(alone.completion_ids[0], full.completion_ids[row])
    assert torch.equal(alone.step_map[0], full.step_map[row])
    other = generate(tiny_llada, ids, mask, RolloutConfig(**{**cfg.__dict__, "seed": 4}), sample_ids=sample_ids)
    assert not torch.equal(other.completion_ids, full.completion_ids)
