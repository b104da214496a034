"""model_type in config.json -> our family module, imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from diffrl.models.config import CheckpointError

# model_type (as published in config.json) -> "module:Class"
FAMILIES: dict[str, str] = {
    "llada": "diffrl.models.llada:LLaDAModelLM",
    "Dream": "diffrl.models.dream:DreamModel",
    "sdar": "diffrl.models.sdar:SDARForCausalLM",
    "sdar_moe": "diffrl.models.sdar:SDARMoeForCausalLM",
    "llada2_moe": "diffrl.models.llada2_moe:LLaDA2MoeModelLM",
}


def family_class(config: dict[str, Any]) -> type:
    """The module class for a config.json, chosen by its ``model_type``."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"config.json model_type={model_type!r} is not a supported family; supported: {', '.join(sorted(FAMILIES))}"
        )
    module, cls = FAMILIES[model_type].split(":")
    return getattr(importlib.import_module(module), cls)
