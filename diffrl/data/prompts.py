"""Chat messages -> left-padded prompt token ids, through the model's own chat template."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class PromptEncoder:
    """Renders a row's messages with the tokenizer's chat template and left-pads a batch.

    ``prompt_prefix`` is prepended to the last user message (d1 puts its reasoning/answer
    instructions there); ``system_prompt`` becomes a leading system message. Prompts longer than
    ``max_prompt_length`` keep their last tokens, as TRL does.
    """

    def __init__(self, tokenizer: Any, *, pad_token_id: int, max_prompt_length: int, system_prompt: str | None = None, prompt_prefix: str = "") -> None:
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.max_prompt_length = max_prompt_length
        self.system_prompt = system_prompt
        self.prompt_prefix = prompt_prefix

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        messages = [dict(m) for m in row["prompt"]]
        if self.prompt_prefix:
            last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last_user]["content"] = self.prompt_prefix + messages[last_user]["content"]
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def token_ids(self, row: dict[str, Any]) -> list[int]:
        text = self.tokenizer.apply_chat_template(self.messages(row), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[Tensor, Tensor, int]:
        """Left-padded ids [B, P], their keep-mask, and how many prompts were truncated."""
        encoded = [self.token_ids(r) for r in rows]
        truncated = sum(len(ids) > self.max_prompt_length for ids in encoded)
        encoded = [ids[-self.max_prompt_length :] for ids in encoded]
        width = max(len(ids) for ids in encoded)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row_ids in enumerate(encoded):
            ids[i, width - len(row_ids) :] = torch.tensor(row_ids, dtype=torch.long)
            mask[i, width - len(row_ids) :] = True
        return ids, mask, truncated


def filter_overlong(rows: list[dict[str, Any]], encoder: PromptEncoder) -> list[dict[str, Any]]:
    """The rows whose rendered prompt fits ``encoder.max_prompt_length`` tokens (verl's
    ``data.filter_overlong_prompts``: the chat template with the generation prompt, here with the
    task's system prompt and prefix too); logs how many were dropped."""
    kept = [row for row in rows if len(encoder.token_ids(row)) <= encoder.max_prompt_length]
    if len(kept) < len(rows):
        log.warning("task.filter_overlong_prompts: dropped %d of %d prompts longer than %d tokens", len(rows) - len(kept), len(rows), encoder.max_prompt_length)
    return kept
