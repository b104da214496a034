"""Reading a checkpoint folder's config, generation config and tokenizer files into typed facts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffrl.errors import DiffrlConfigError

if TYPE_CHECKING:
    from diffrl.models.base import ModelFacts


class CheckpointError(DiffrlConfigError):
    """A checkpoint folder or config that diffrl cannot load as is; the message names the fix."""


def require_folder(folder: str | Path) -> Path:
    """``folder`` as a Path, if it is a local folder; else a :class:`CheckpointError` saying how to
    point ``model.path`` at one (nothing is downloaded, so a hub name is not a folder either)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise CheckpointError(
            f"model.path={folder} {what}; set model.path (or the environment variable its model recipe names) "
            "to a local checkpoint folder with config.json and *.safetensors (diffrl downloads nothing)"
        )
    return folder


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; a checkpoint folder needs config.json and safetensors weights") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def check_supported(raw: dict[str, Any], supported: dict[str, tuple[Any, ...]], family: str) -> None:
    """Reject config fields whose value selects a variant our module does not implement."""
    for key, allowed in supported.items():
        if key in raw and raw[key] not in allowed:
            raise CheckpointError(
                f"config.json field {key!r} = {raw[key]!r} is not supported by diffrl's {family} module "
                f"(supported: {', '.join(repr(a) for a in allowed)})"
            )


def require(raw: dict[str, Any], key: str, family: str) -> Any:
    if key not in raw or raw[key] is None:
        raise CheckpointError(f"config.json has no {key!r}, which a {family} checkpoint must define")
    return raw[key]


@dataclass
class FactOverrides:
    """Recipe-level corrections to what the checkpoint folder says (``model.*`` in the recipe)."""

    mask_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    stop_tokens: list[str | int] = field(default_factory=list)
    block_size: int | None = None


@dataclass
class FolderFiles:
    """The non-weight files of a checkpoint folder that carry token facts."""

    config: dict[str, Any]
    generation_config: dict[str, Any]
    token_ids: dict[str, int]
    special_tokens: dict[str, str]

    @classmethod
    def read(cls, folder: str | Path) -> "FolderFiles":
        folder = require_folder(folder)
        config = read_json(folder / "config.json")
        gen_path = folder / "generation_config.json"
        generation = read_json(gen_path) if gen_path.exists() else {}
        token_ids: dict[str, int] = {}
        special: dict[str, str] = {}
        tok_cfg_path = folder / "tokenizer_config.json"
        if tok_cfg_path.exists():
            tok_cfg = read_json(tok_cfg_path)
            for idx, entry in tok_cfg.get("added_tokens_decoder", {}).items():
                token_ids[entry["content"]] = int(idx)
            for key in ("mask_token", "eos_token", "pad_token", "bos_token"):
                value = tok_cfg.get(key)
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    special[key] = value
        added_path = folder / "added_tokens.json"
        if added_path.exists():
            token_ids.update({k: int(v) for k, v in read_json(added_path).items()})
        tok_json = folder / "tokenizer.json"
        if tok_json.exists():
            for entry in read_json(tok_json).get("added_tokens", []):
                token_ids.setdefault(entry["content"], int(entry["id"]))
        return cls(config, generation, token_ids, special)

    def token_id(self, token: str | int) -> int:
        """The id of a token given by its text (from the tokenizer files) or already as an id."""
        if isinstance(token, int):
            return token
        if token not in self.token_ids:
            raise CheckpointError(f"token {token!r} is not among the checkpoint's added tokens; give its id in the recipe instead")
        return self.token_ids[token]

    def special_token_id(self, key: str) -> int | None:
        """Id of the tokenizer's ``mask_token``/``eos_token``/... if the tokenizer files name it."""
        text = self.special_tokens.get(key)
        return self.token_ids.get(text) if text is not None else None


def as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def build_facts(
    files: FolderFiles,
    overrides: FactOverrides,
    *,
    family: str,
    vocab_size: int,
    logit_shift: int,
    attention: str,
    block_size: int | None = None,
) -> "ModelFacts":
    """Token ids and structural facts, from the recipe, then config.json, then the tokenizer files."""
    from diffrl.models.base import ModelFacts

    cfg, gen = files.config, files.generation_config

    def first(*candidates: Any) -> int | None:
        for c in candidates:
            ids = as_id_list(c)
            if ids:
                return ids[0]
        return None

    mask = first(overrides.mask_token_id, cfg.get("mask_token_id"), gen.get("mask_token_id"), files.special_token_id("mask_token"))
    if mask is None:
        raise CheckpointError(
            "no mask token id: config.json has no mask_token_id and the tokenizer files name no mask_token; "
            "set model.mask_token_id in the recipe"
        )
    eos = first(overrides.eos_token_id, cfg.get("eos_token_id"), gen.get("eos_token_id"), files.special_token_id("eos_token"))
    if eos is None:
        raise CheckpointError("no EOS token id in config.json, generation_config.json or the tokenizer; set model.eos_token_id in the recipe")
    pad = first(overrides.pad_token_id, cfg.get("pad_token_id"), gen.get("pad_token_id"), files.special_token_id("pad_token"), eos)
    stops: list[int] = []
    for tid in [eos, *as_id_list(cfg.get("eos_token_id")), *as_id_list(gen.get("eos_token_id"))] + [
        files.token_id(t) for t in overrides.stop_tokens
    ]:
        if tid not in stops:
            stops.append(tid)
    block = overrides.block_size or block_size
    if attention == "block_causal" and not block:
        raise CheckpointError(
            f"config.json has no block_size and the recipe sets none: set model.block_size to the block length "
            f"this {family} checkpoint was trained with"
        )
    return ModelFacts(
        family=family,
        vocab_size=vocab_size,
        mask_token_id=mask,
        pad_token_id=pad,
        eos_token_id=eos,
        stop_token_ids=tuple(stops),
        logit_shift=logit_shift,
        attention=attention,  # type: ignore[arg-type]
        block_size=block,
    )
