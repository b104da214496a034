"""Tokenizers and chat templates from a model folder, with no remote code.

``load_tokenizer`` goes through ``transformers.AutoTokenizer``. A folder whose tokenizer_config
names a remote-code class (Dream's ``DreamTokenizer``) gets the transformers class its family
declares instead (``DiffusionLM.tokenizer_class``). ``render_chat`` renders the folder's own chat
template with its own special tokens and needs no tokenizer at all, so a prompt can be checked
even where the vocabulary file is not at hand.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from diffrl.models.config import CheckpointError, read_json, require_folder
from diffrl.models.registry import family_class

_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token", "sep_token", "cls_token")


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer_config.json"
    return read_json(path) if path.exists() else {}


def _remote_tokenizer(tok_cfg: dict[str, Any]) -> str | None:
    """The class name tokenizer_config.json asks for that transformers lacks (remote code, whether
    or not an ``auto_map`` still points at it: an export drops a map whose code it did not copy)."""
    import transformers

    name = tok_cfg.get("tokenizer_class")
    if name:
        return None if hasattr(transformers, name) else name
    auto = tok_cfg.get("auto_map", {}).get("AutoTokenizer")
    return str(auto) if auto else None


def load_tokenizer(folder: str | Path) -> Any:
    """The model folder's tokenizer and chat template (``transformers.AutoTokenizer``, no remote code)."""
    import transformers
    from transformers.utils import logging as hf_logging

    folder = require_folder(folder)
    remote = _remote_tokenizer(_tokenizer_config(folder))
    loader: Any = transformers.AutoTokenizer
    if remote is not None:
        config_path = folder / "config.json"
        cls_name = family_class(read_json(config_path)).tokenizer_class if config_path.exists() else None
        if cls_name is None:
            raise CheckpointError(
                f"{folder}/tokenizer_config.json asks for remote code ({remote}) and diffrl knows no built-in "
                "transformers tokenizer for this family; convert the tokenizer to tokenizer.json"
            )
        loader = getattr(transformers, cls_name)
    # AutoTokenizer peeks at config.json and warns about our model types and their rope fields.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # No remote code: a config.json with auto_map (LLaDA) would otherwise ask on stdin.
            return loader.from_pretrained(str(folder), trust_remote_code=False)
    except (ValueError, OSError) as err:
        if not (folder / "tokenizer.json").exists() and not (folder / "vocab.json").exists():
            raise CheckpointError(
                f"{folder} has no tokenizer.json (nor vocab.json + merges.txt); copy it from the published model repository"
            ) from err
        raise
    finally:
        hf_logging.set_verbosity(verbosity)


def chat_template(folder: str | Path) -> str:
    """The folder's chat template: ``chat_template.jinja`` or tokenizer_config.json's ``chat_template``."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    template = _tokenizer_config(folder).get("chat_template")
    if isinstance(template, list):  # named templates; "default" is what apply_chat_template uses
        template = {t["name"]: t["template"] for t in template}.get("default")
    if not isinstance(template, str):
        raise CheckpointError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json 'chat_template')")
    return template


def special_tokens(folder: str | Path) -> dict[str, str]:
    """The folder's special-token strings (bos_token, eos_token, ...) as templates see them."""
    folder = Path(folder)
    found: dict[str, str] = {}
    for source in (folder / "special_tokens_map.json", folder / "tokenizer_config.json"):
        values = read_json(source) if source.exists() else {}
        for key in _SPECIAL_KEYS:
            value = values.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found.setdefault(key, value)
    return found


def render_chat(folder: str | Path, messages: list[dict[str, str]], *, add_generation_prompt: bool = True, **kwargs: Any) -> str:
    """Chat messages as the folder's template renders them, without loading a tokenizer.

    Equals ``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` for the same folder;
    template variables (e.g. Qwen3's ``enable_thinking``) pass through ``kwargs``.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        chat_template=chat_template(folder),
        add_generation_prompt=add_generation_prompt,
        **{**special_tokens(folder), **kwargs},
    )
    return rendered[0]
