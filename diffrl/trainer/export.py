"""The trained model in the published checkpoint layout: at the end of a run (:func:`save_final`),
and from a training checkpoint or a LoRA adapter folder afterwards (:func:`export`).

A checkpoint holds trainable weights only (see :mod:`diffrl.trainer.checkpoint`); its
``meta.json`` names the model folder the rest comes from and the LoRA settings, so one command
rebuilds the model: load the base, put the adapters back if any, load the trained tensors (DCP
shards from any number of ranks, or a DeepSpeed ZeRO checkpoint consolidated to fp32), merge the
adapters into the weights, and save with the published names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffrl.models import DiffusionLM, load_pretrained, save_pretrained
from diffrl.trainer.build import Run
from diffrl.trainer.checkpoint import COMPLETE, DS_TAG, load_model_state, read_meta
from diffrl.trainer.config import LoraConfig
from diffrl.trainer.lora import adapter_base, apply_lora, merge_adapter, save_adapter
from diffrl.trainer.parallelize import Root


def checkpoint_model(path: str | Path) -> DiffusionLM:
    """The trained model of a training checkpoint folder (``.../checkpoints/step_N``), adapters merged."""
    path = Path(path)
    if not (path / COMPLETE).exists():
        raise FileNotFoundError(f"{path} is not a complete training checkpoint (no {COMPLETE} marker)")
    meta = read_meta(path)
    model = load_pretrained(meta["model_dir"], dtype=meta["dtype"])
    lora = meta["lora"]
    peft = apply_lora(model, LoraConfig(enabled=True, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"]), lora["targets"]) if lora else None
    root = Root(model)
    if (path / DS_TAG).is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DS_TAG, exclude_frozen_parameters=True)
        trainable = {n for n, p in root.named_parameters() if p.requires_grad}
        missing = trainable - set(state)
        if missing:
            raise KeyError(f"{path} lacks trained tensors: {sorted(missing)[:8]}")
        root.load_state_dict(state, strict=False)
    else:
        load_model_state(path, root)
    return peft.merge_and_unload() if peft is not None else model


def export(source: str | Path, out: str | Path, *, base: str | Path | None = None) -> Path:
    """Write ``source`` (a training checkpoint, or a peft adapter folder merged into ``base`` or
    the base its config records) to ``out`` in the published layout, tokenizer files included."""
    source = Path(source)
    if (source / "adapter_config.json").exists():
        base_dir = adapter_base(source, base)
        model = merge_adapter(source, base_dir)
    else:
        model = checkpoint_model(source)
        base_dir = read_meta(source)["model_dir"]
    return save_pretrained(model, out, source_folder=base_dir)



def checkpoint_meta(run: Run) -> dict[str, Any]:
    """What export needs to rebuild the model of a checkpoint (see scripts/export_hf.py)."""
    lora, peft = run.cfg.trainer.lora, run.policy.peft
    return {
        "model_dir": str(run.model_dir.resolve()),
        "dtype": run.cfg.model.dtype,
        "strategy": run.cfg.trainer.strategy,
        "lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "targets": _json_targets(peft)} if peft else None,
    }


def _json_targets(peft: Any) -> list[str] | str:
    targets = peft.peft_config["default"].target_modules  # peft keeps a list as a set
    return targets if isinstance(targets, str) else sorted(targets)


def save_final(run: Run) -> None:
    """The trained model in the published layout in ``final/`` (rank 0 writes; every rank gathers).
    A LoRA run also writes its adapter as a standard peft folder in ``final_adapter/`` and merges it."""
    main, folder, peft = run.world.is_main, run.run_dir / "final", run.policy.peft
    if peft is not None:
        adapter = run.policy.state_dict(trainable_only=True)
        if main:
            save_adapter(peft, run.run_dir / "final_adapter", adapter)
            merged = merge_adapter(run.run_dir / "final_adapter", run.model_dir, dtype=run.cfg.model.dtype)
            save_pretrained(merged, folder, source_folder=run.model_dir)
        return
    state = run.policy.state_dict()
    if main:
        save_pretrained(run.model, folder, state_dict=state, source_folder=run.model_dir)
