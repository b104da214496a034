"""Scaled-down random checkpoints of the published architectures, for tests and demos.

``shrink_config`` keeps every structural feature and key of a published config.json (GQA,
QK-norm, MoE groups, shared experts, dense first layers, head_dim != hidden/heads) and only makes
the sizes small; ``write_tiny_checkpoint`` writes it with random weights in the published layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffrl.models.checkpoint import copy_tokenizer_files, random_model, save_pretrained
from diffrl.models.config import FactOverrides, FolderFiles

# model_type -> the size fields to override (everything else stays as published).
_QWEN_TINY = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2}
TINY_SIZES: dict[str, dict[str, Any]] = {
    "llada": {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128, "max_sequence_length": 1024},
    # GQA; head_dim implied (64 / 4), as in the published config.
    "Dream": {**_QWEN_TINY, "max_window_layers": 2},
    # GQA, QK-norm, and head_dim 32 != 64 / 4 like SDAR-4B / 30B.
    "sdar": {**_QWEN_TINY, "head_dim": 32, "max_window_layers": 2},
    "sdar_moe": {**_QWEN_TINY, "head_dim": 32, "max_window_layers": 2, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    # 16 experts in 4 groups of 4 (top-2 group sums need >= 2), 2 groups kept, top-4, a shared
    # expert, a dense first layer, and RoPE on half of each 32-wide head.
    "llada2_moe": {
        **_QWEN_TINY,
        "num_hidden_layers": 3,
        "head_dim": 32,
        "rotary_dim": 16,
        "first_k_dense_replace": 1,
        "num_experts": 16,
        "n_group": 4,
        "topk_group": 2,
        "num_experts_per_tok": 4,
        "num_shared_experts": 1,
        "moe_intermediate_size": 16,
    },
}
_VOCAB_KEYS = ("vocab_size", "embedding_size")
_ID_KEYS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")


def shrink_config(config: dict[str, Any], vocab_size: int | None = None, **extra: Any) -> dict[str, Any]:
    """A tiny version of a published config. With ``vocab_size``, the vocabulary shrinks too and
    special ids are remapped to the top of it (mask = V-1, eos/pad = V-2, bos = V-3)."""
    model_type = config.get("model_type")
    if model_type not in TINY_SIZES:
        raise ValueError(f"no tiny sizes for model_type={model_type!r}; known: {', '.join(TINY_SIZES)}")
    tiny = {**config, **TINY_SIZES[model_type], **extra}
    if vocab_size is not None:
        for key in _VOCAB_KEYS:
            if key in tiny:
                tiny[key] = vocab_size
        remap = {"mask_token_id": vocab_size - 1, "eos_token_id": vocab_size - 2, "pad_token_id": vocab_size - 2, "bos_token_id": vocab_size - 3}
        for key in _ID_KEYS:
            if key in tiny and tiny[key] is not None:
                tiny[key] = remap[key]
    return tiny


def write_tiny_checkpoint(
    source: str | Path,
    out: str | Path,
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    std: float = 0.02,
    max_shard_bytes: int = 5 * 1024**3,
    overrides: FactOverrides | None = None,
    **extra: Any,
) -> Path:
    """Write a random tiny checkpoint of ``source``'s architecture (a published model folder) to ``out``.

    Tokenizer files are copied only when the vocabulary keeps its published size; then the
    tokenizer files' token facts (SDAR-MoE's mask token) apply as they do to the source. ``overrides``
    supplies the facts a config lacks (LLaDA2's mask id, SDAR-MoE's block size) to build the
    module; they are not written, so loading the folder needs them again, as the original does.
    """
    source, out = Path(source), Path(out)
    config = shrink_config(json.loads((source / "config.json").read_text()), vocab_size, **extra)
    files = None
    if vocab_size is None:
        published = FolderFiles.read(source)
        files = FolderFiles(config, published.generation_config, published.token_ids, published.special_tokens)
    model = random_model(config, seed=seed, dtype=dtype, std=std, overrides=overrides, files=files)
    save_pretrained(model, out, max_shard_bytes=max_shard_bytes)
    if vocab_size is None:
        copy_tokenizer_files(source, out)
    return out
