"""Per-sample records: a rollout's completions as text, their rewards, correctness and trajectory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffrl.algorithms.correctness import is_correct
from diffrl.data import DataError
from diffrl.rewards import RewardRunner
from diffrl.rollout.metrics import decoded_tokens, finalization_parallelism, kendall_tau
from diffrl.rollout.trajectory import Rollout
from diffrl.trainer.sft import response_text


@dataclass
class SampleScorer:
    """Scores a rollout of ``rows`` with the task's rewards and records each sample.

    A sample is correct when ``correct_reward`` scores at least ``threshold`` (:func:`is_correct`).
    ``keys`` name each
    sample as (row index, sample number); records are plain JSON-ready dicts.
    """

    tokenizer: Any
    rewards: RewardRunner
    correct_reward: str
    threshold: float = 1.0
    save_trajectory: bool = True

    def __call__(self, rollout: Rollout, rows: list[dict[str, Any]], keys: list[tuple[int, int]], gen_s: float) -> list[dict[str, Any]]:
        completions = rollout.decode(self.tokenizer)
        scored = self.rewards(completions, rows)
        correct = is_correct(scored, self.correct_reward, self.threshold).tolist()
        step_map, mask = rollout.step_map.cpu(), rollout.completion_mask.cpu()
        decoded = decoded_tokens(step_map, mask).sum(1).tolist()
        tpf = rollout.tokens_per_forward.cpu().tolist()
        afp = finalization_parallelism(step_map, mask).tolist()
        tau = kendall_tau(step_map, mask).tolist()
        nfe, nfe_cache = rollout.nfe.cpu().tolist(), rollout.nfe_cache.cpu().tolist()
        lengths, truncated = rollout.lengths.cpu().tolist(), rollout.truncated.cpu().tolist()
        records = []
        for b, ((index, sample), row, text) in enumerate(zip(keys, rows, completions)):
            rewards = {name: float(values[b]) for name, values in scored.per_reward.items()}
            record = {
                "index": index,
                "sample": sample,
                "sample_id": int(rollout.sample_ids[b]),
                "uid": row.get("extra_info", {}).get("index"),
                "data_source": row.get("data_source"),
                "completion": text,
                "score": float(scored.total[b]),
                "rewards": rewards,
                "reasons": {name: reasons[b] for name, reasons in scored.reasons.items()},
                "correct": bool(correct[b]),
                "length": int(lengths[b]),
                "decoded": int(decoded[b]),
                "truncated": bool(truncated[b]),
                "nfe": int(nfe[b]),
                "nfe_cache": int(nfe_cache[b]),
                "tpf": tpf[b],
                "afp": afp[b],
                "kendall_tau": None if math.isnan(tau[b]) else tau[b],
                "gen_s": gen_s / len(keys),
            }
            if self.save_trajectory:
                record["step_map"] = step_map[b][mask[b]].tolist()
            records.append(record)
        return records


def reference_tokens(tokenizer: Any, rows: list[dict[str, Any]], field: str, length: int, eos_token_id: int) -> Tensor:
    """Each row's ``field`` as completion tokens [B, length]: the reference's tokens, then EOS to
    the end (every position fixed, so the engine decodes nothing)."""
    out = torch.full((len(rows), length), eos_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        try:
            text = response_text(row, field)
        except DataError as err:
            raise DataError(f"eval.reference_field: {err}".replace("task.sft_response_field", "eval.reference_field")) from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
