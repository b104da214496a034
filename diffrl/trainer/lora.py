"""LoRA through peft on our own modules: which layers it adapts, and standard peft adapter folders
that merge back into the published checkpoint layout.

The KL reference of a LoRA run is the same model with the adapter disabled
(``peft_model.disable_adapter()``), so no second copy of the weights exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from diffrl.errors import DiffrlConfigError
from diffrl.models import DiffusionLM, load_pretrained
from diffrl.trainer.config import LoraConfig

# peft's names for our model's tensors: the PeftModel holds it as ``base_model.model``.
PEFT_PREFIX = "base_model.model."


def lora_targets(model: DiffusionLM, names: list[str] | None = None) -> list[str]:
    """The modules LoRA adapts, as full module names.

    ``names`` (``model.lora_target_modules``) are leaf names (or dotted suffixes) of linear layers
    *inside the transformer blocks*; without them, the family's ``lora_target_modules`` regex over
    full module names picks them; with neither, every linear layer in the blocks. Matching inside
    the blocks only keeps LLaDA's LM head (``model.transformer.ff_out``) out although the block
    MLP's ``ff_out`` shares its name.
    """
    wanted = names or getattr(model, "lora_target_modules", None)
    block_ids = {id(b) for b in model.blocks()}
    block_names = [n for n, m in model.named_modules() if id(m) in block_ids]
    linear = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(n.startswith(b + ".") for b in block_names)
    ]
    if wanted is None:
        return linear
    if isinstance(wanted, str):
        return [n for n in linear if re.fullmatch(wanted, n)]
    unmatched = [w for w in wanted if not any(n == w or n.endswith("." + w) for n in linear)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise DiffrlConfigError(
            f"model.lora_target_modules entries {unmatched} match no linear layer inside the {model.facts.family} blocks; "
            f"the block linear layers are: {', '.join(leaves)}"
        )
    return [n for n in linear if any(n == w or n.endswith("." + w) for w in wanted)]


def apply_lora(model: DiffusionLM, cfg: LoraConfig, targets: list[str], base_path: str | Path | None = None) -> Any:
    """Inject LoRA adapters into ``model`` in place (only they train); returns the PeftModel that
    owns them (for ``disable_adapter()`` and saving). ``base_path`` is recorded in the adapter
    config so a merge finds the base checkpoint by itself."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)
    peft_model = get_peft_model(model, config)
    # Set after wrapping: get_peft_model overwrites it with the model's (absent) hub name.
    peft_model.peft_config["default"].base_model_name_or_path = str(base_path) if base_path is not None else None
    return peft_model


def save_adapter(peft_model: Any, folder: str | Path, state_dict: dict[str, Tensor]) -> Path:
    """Write a standard peft adapter folder (adapter_config.json + adapter_model.safetensors) from
    the full adapter tensors under the model's own names (as gathered from any strategy)."""
    peft_model.save_pretrained(str(folder), state_dict={PEFT_PREFIX + k: v for k, v in state_dict.items()})
    return Path(folder)


def adapter_base(adapter_dir: str | Path, base_dir: str | Path | None = None) -> str:
    """``base_dir``, or the base checkpoint folder recorded in the adapter's config."""
    from peft import PeftConfig

    base = base_dir or PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base:
        raise DiffrlConfigError(f"{adapter_dir}/adapter_config.json records no base model; pass the base checkpoint folder")
    return str(base)


def merge_adapter(adapter_dir: str | Path, base_dir: str | Path | None = None, *, dtype: str = "auto") -> DiffusionLM:
    """The base model with a peft adapter folder merged into its weights (plain module names, so
    ``save_pretrained`` writes the published layout). ``base_dir`` defaults to the base recorded
    in the adapter config."""
    from peft import PeftModel

    model = load_pretrained(adapter_base(adapter_dir, base_dir), dtype=dtype)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
