"""Supervised steps: masked-diffusion cross-entropy on the task's reference responses.

``trainer.mode=sft`` trains on them for a whole run and ``trainer.warm_start`` runs a few of them
before RL; both build batches with :func:`sft_batch` and update with :func:`sft_step`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from diffrl.algorithms import PolicyBatch
from diffrl.algorithms.sft import masked_diffusion_loss
from diffrl.data import DataError, PromptEncoder
from diffrl.models.base import DiffusionLM
from diffrl.trainer.distributed import all_reduce_sums
from diffrl.trainer.strategy import Strategy


def response_text(row: dict[str, Any], field: str) -> str:
    """The row's reference response at the dotted ``field`` (``task.sft_response_field``)."""
    node: Any = row
    for part in field.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            index = row.get("extra_info", {}).get("index", "?")
            raise DataError(f"row {index}: field {field!r} is missing; point task.sft_response_field at the reference response")
        node = node[part]
    return str(node)


def sft_batch(
    rows: list[dict[str, Any]],
    encoder: PromptEncoder,
    tokenizer: Any,
    *,
    field: str,
    length: int,
    eos_token_id: int,
    first_sample_id: int,
    device: torch.device,
) -> PolicyBatch:
    """Prompts and reference responses as a batch: each response keeps at most ``length - 1``
    tokens and is filled with EOS to ``length`` (the rollout's completion length), as LLaDA's SFT
    pads, so the model learns to end. Sample ids key every mask drawn for a row."""
    prompt_ids, prompt_mask, _ = encoder(rows)
    responses = []
    for row in rows:
        ids = tokenizer(response_text(row, field), add_special_tokens=False)["input_ids"][: length - 1]
        responses.append(ids + [eos_token_id] * (length - len(ids)))
    completion = torch.tensor(responses, device=device)
    none = torch.zeros_like(completion, dtype=torch.bool)
    return PolicyBatch(
        prompt_ids=prompt_ids.to(device),
        prompt_mask=prompt_mask.to(device),
        completion_ids=completion,
        completion_mask=~none,
        sample_ids=torch.arange(first_sample_id, first_sample_id + len(rows), device=device),
        step_map=torch.zeros_like(completion),
        fixed_mask=none,
        rollout_logprob=torch.zeros(completion.shape, device=device),
    )


def _share_of_loss(model: DiffusionLM, batch: PolicyBatch, seed: int, share: float) -> tuple[Tensor, dict[str, Tensor]]:
    loss, terms = masked_diffusion_loss(model, batch, seed)
    return loss * share, {k: v * share for k, v in terms.items()}


def sft_step(strategy: Strategy, batch: PolicyBatch, seed: int, *, micro_batch_size: int, global_size: int) -> dict[str, float]:
    """One optimizer update on this rank's ``batch`` of a global batch of ``global_size`` examples.

    Each micro-batch's mean loss is weighted by its share of the global batch, so the gradients
    summed over micro-batches and ranks are those of the global mean. Returns global metrics.
    """
    sums: dict[str, float] = defaultdict(float)
    for micro in batch.split(micro_batch_size):
        loss, terms = strategy(_share_of_loss, micro, seed, len(micro) / global_size)
        strategy.backward(loss)
        for name, value in terms.items():
            sums[name] += value.item()
    metrics = all_reduce_sums(dict(sums), batch.prompt_ids.device)
    metrics["actor/grad_norm"] = strategy.step()
    return metrics
