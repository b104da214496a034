"""Load and save the published checkpoint layout: config.json + single or sharded safetensors.

Models are built on the meta device and every tensor is read straight from its (memory-mapped)
shard into its parameter, so a load never holds a second copy of a shard. Saving writes the same
names, dtypes and index format back, so the published modeling code loads what we train: the
source folder's ``*.py`` files (the published remote code) are copied along, and an ``auto_map``
that names a module the saved folder does not hold is dropped, so no loader looks for code that
is not there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from diffrl.models.base import DiffusionLM, ModelFacts
from diffrl.models.config import CheckpointError, FactOverrides, FolderFiles
from diffrl.models.registry import family_class

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None, config: dict[str, Any]) -> torch.dtype:
    """``auto``/None means the checkpoint's own ``torch_dtype`` (or ``dtype``), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    if dtype not in _DTYPES:
        raise CheckpointError(f"model.dtype={dtype!r} is not one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


def _folder_files(folder_or_config: str | Path | dict[str, Any]) -> FolderFiles:
    if isinstance(folder_or_config, dict):
        return FolderFiles(folder_or_config, {}, {}, {})
    return FolderFiles.read(folder_or_config)


def read_facts(folder_or_config: str | Path | dict[str, Any], *, overrides: FactOverrides | None = None) -> ModelFacts:
    """The family facts of a checkpoint folder (or config dict) without building the module."""
    files = _folder_files(folder_or_config)
    cls = family_class(files.config)
    return cls.read_facts(cls.read_config(files.config), files, overrides or FactOverrides())


def build_model(
    folder_or_config: str | Path | dict[str, Any],
    *,
    overrides: FactOverrides | None = None,
    files: FolderFiles | None = None,
) -> DiffusionLM:
    """Build the family's module on the meta device (allocates no memory)."""
    files = files or _folder_files(folder_or_config)
    cls = family_class(files.config)
    config = cls.read_config(files.config)
    facts = cls.read_facts(config, files, overrides or FactOverrides())
    with torch.device("meta"):
        return cls(config, facts)


def weight_files(folder: Path) -> dict[str, list[str]]:
    """Shard file -> tensor names, from the index or the single file."""
    index = folder / INDEX_NAME
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        for shard in shards:
            if not (folder / shard).exists():
                raise CheckpointError(f"{folder / shard} is listed in {INDEX_NAME} but missing; download the full checkpoint")
        return shards
    single = folder / SINGLE_NAME
    if single.exists():
        with safe_open(single, "pt") as f:
            return {SINGLE_NAME: list(f.keys())}
    raise CheckpointError(f"{folder} has neither {SINGLE_NAME} nor {INDEX_NAME}")


def _set_tensor(model: nn.Module, name: str, tensor: Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        raise CheckpointError(f"tensor {name!r} has no place in the module")


def check_names(expected: Iterable[str], found: Iterable[str], where: str) -> None:
    """Fail with the exact names when the checkpoint and the module disagree."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"{where}: " + "; ".join(parts))


def load_pretrained(
    folder: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    overrides: FactOverrides | None = None,
) -> DiffusionLM:
    """Load a published-layout checkpoint folder into our module, with no remote code.

    Parameters are cast to ``dtype``; buffers (e.g. LLaDA2's ``expert_bias``) keep the dtype the
    file holds, so a save writes them back unchanged.
    """
    folder = Path(folder)
    files = FolderFiles.read(folder)
    target = resolve_dtype(dtype, files.config)
    model = build_model(folder, overrides=overrides, files=files)
    shards = weight_files(folder)
    params = {n for n, _ in model.named_parameters()}
    check_names(model.state_dict().keys(), (n for names in shards.values() for n in names), str(folder))
    for shard, names in shards.items():
        with safe_open(folder / shard, "pt", device=str(device)) as f:
            for name in names:
                tensor = f.get_tensor(name)
                if name in params and tensor.is_floating_point():
                    tensor = tensor.to(target)
                _set_tensor(model, name, tensor)
    return model


def save_pretrained(
    model: DiffusionLM,
    folder: str | Path,
    *,
    max_shard_bytes: int = 5 * 1024**3,
    state_dict: dict[str, Tensor] | None = None,
    source_folder: str | Path | None = None,
) -> Path:
    """Write config.json and safetensors (sharded with an index past ``max_shard_bytes``).

    ``state_dict`` lets a caller pass gathered full tensors (FSDP); ``source_folder`` copies the
    tokenizer and generation files so the result is a complete model folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    for stale in list(folder.glob("model*.safetensors")) + [folder / INDEX_NAME]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_NAME, metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, folder / fname, metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    raw = dict(model.config.raw)
    param_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    dtype_key = "dtype" if "dtype" in raw and "torch_dtype" not in raw else "torch_dtype"
    raw[dtype_key] = param_dtype
    if source_folder is not None:
        copy_tokenizer_files(source_folder, folder)
        copy_remote_code(source_folder, folder)
    (folder / "config.json").write_text(json.dumps(without_missing_auto_map(raw, folder), indent=2) + "\n")
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():
        tok = json.loads(tok_config.read_text())
        tok_config.write_text(json.dumps(without_missing_auto_map(tok, folder), indent=2, ensure_ascii=False) + "\n")
    return folder


def copy_remote_code(src: str | Path, dst: str | Path) -> None:
    """Copy the published modeling code (the ``*.py`` files ``auto_map`` points at) of ``src``."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return
    for path in src.glob("*.py"):
        shutil.copyfile(path, dst / path.name)


def auto_map_modules(auto_map: dict[str, Any]) -> set[str]:
    """The module files an ``auto_map`` imports (``modeling_x.Class``, ``repo--modeling_x.Class``,
    or a tokenizer's [slow, fast] pair)."""
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    return {r.rpartition("--")[2].rpartition(".")[0] + ".py" for r in refs}


def without_missing_auto_map(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``config`` without its ``auto_map`` when ``folder`` lacks a module the map imports."""
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or all((folder / name).exists() for name in auto_map_modules(auto_map)):
        return config
    return {k: v for k, v in config.items() if k != "auto_map"}


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy tokenizer, chat-template and generation files that exist in ``src``."""
    src, dst = Path(src), Path(dst)
    for name in TOKENIZER_FILES:
        if (src / name).exists() and src.resolve() != dst.resolve():
            shutil.copyfile(src / name, dst / name)


def random_model(
    folder_or_config: str | Path | dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    std: float = 0.02,
    overrides: FactOverrides | None = None,
    files: FolderFiles | None = None,
) -> DiffusionLM:
    """A randomly initialised model of a config (for tiny test checkpoints and the CPU demo);
    ``files`` supplies token facts from a folder's tokenizer files."""
    model = build_model(folder_or_config, overrides=overrides, files=files)
    model.to_empty(device="cpu")
    model.init_weights(std=std, generator=torch.Generator().manual_seed(seed))
    return model.to(dtype)
