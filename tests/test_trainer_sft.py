"""SFT mode: the family's masking (one rate per sample, or per block for block-causal models) and
a supervised run of the shared loop that lowers its loss."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from tests.distributed_worker import recipe


def _batch(prompt_len: int, pad: int, length: int, rows: int = 3):
    from diffrl.algorithms import PolicyBatch

    prompt = torch.randint(0, 500, (rows, prompt_len), generator=torch.Generator().manual_seed(1))
    prompt_mask = torch.ones_like(prompt, dtype=torch.bool)
    prompt_mask[0, :pad] = False  # row 0 is left-padded: its block grid starts later
    completion = torch.randint(0, 500, (rows, length), generator=torch.Generator().manual_seed(2))
    ones = torch.ones_like(completion, dtype=torch.bool)
    return PolicyBatch(prompt, prompt_mask, completion, ones, torch.arange(rows) + 40, completion * 0, ~ones, completion.float() * 0)


def test_masking_rate_is_per_sample_or_per_block_on_the_real_token_grid(tiny_llada) -> None:
    from diffrl.algorithms.sft import masking_rates

    batch = _batch(prompt_len=5, pad=2, length=12)
    per_sample = masking_rates(tiny_llada, batch, seed=3)
    assert (per_sample == per_sample[:, :1]).all() and per_sample[:, 0].unique().numel() == 3

    block = replace(tiny_llada.facts, attention="block_causal", block_size=4)
    tiny_llada.facts = block
    per_block = masking_rates(tiny_llada, batch, seed=3)
    for row in range(3):
        # Reference: a completion token's block is its index among the row's real tokens // 4.
        real_before = int(batch.prompt_mask[row].sum())
        blocks = (real_before + torch.arange(12)) // 4
        for b in blocks.unique():
            rates = per_block[row, blocks == b]
            assert (rates == rates[0]).all()
        firsts = torch.stack([per_block[row, blocks == b][0] for b in blocks.unique()])
        assert firsts.unique().numel() == firsts.numel(), "blocks draw independent rates"
    # Row 0's grid is shifted by its padding, so its first completion token closes a block early.
    assert per_block[0, 0] != per_block[0, 1] and per_block[1, 0] == per_block[1, 2]


def test_sft_mode_trains_on_the_reference_responses(tmp_path: Path) -> None:
    from diffrl.trainer.loop import train

    out = tmp_path / "sft"
    train(recipe(f"trainer.output_dir={out}", "trainer.mode=sft", "trainer.total_steps=60", "trainer.batch_size=32",
                 "trainer.micro_batch_size=16", "optim.lr=3e-3", "trainer.save_every=0",
                 # a teacher that is always right: the demo's noisy one bounds how far the loss can fall
                 "task.synthetic.teacher_accuracy=1.0"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert {"sft/loss", "sft/masked_frac", "actor/grad_norm", "actor/lr", "perf/throughput"} <= rows[0].keys()
    first, last = (sum(r["sft/loss"] for r in part) / len(part) for part in (rows[:5], rows[-10:]))
    assert last < 0.75 * first
    assert (out / "final" / "model.safetensors").exists() and (out / "checkpoints" / "step_000060").exists()
