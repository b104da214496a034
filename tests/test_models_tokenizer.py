"""Tokenizers and chat templates from the published folders, with no remote code."""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import pytest

from diffrl.models import CheckpointError, FactOverrides, read_facts
from diffrl.models.tokenizer import chat_template, load_tokenizer, render_chat

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
LOADABLE = ["Dream-v0-Instruct-7B", "SDAR-1dot7B-Chat", "SDAR-30B-A3B-Chat"]


@lru_cache(maxsize=None)
def tokenizer(folder: Path):
    return load_tokenizer(folder)


@pytest.mark.parametrize("name", LOADABLE)
def test_tokenizer_loads_and_agrees_with_the_model_facts(shared: Path, name: str) -> None:
    folder = shared / "hf" / name
    tok = tokenizer(folder)
    facts = read_facts(folder, overrides=FactOverrides(block_size=4))
    assert tok.convert_tokens_to_ids(tok.mask_token) == facts.mask_token_id
    assert tok.eos_token_id == facts.eos_token_id and tok.pad_token_id == facts.pad_token_id
    assert len(tok) <= facts.vocab_size


def test_dream_loads_without_its_remote_tokenizer_class(shared: Path) -> None:
    folder = shared / "hf" / "Dream-v0-Instruct-7B"
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "DreamTokenizer"
    tok = tokenizer(folder)
    added = json.loads((folder / "added_tokens.json").read_text())
    assert tok.mask_token == "<|mask|>" and tok.mask_token_id == added["<|mask|>"]
    ids = tok("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == added["<|im_start|>"] and ids[-1] == added["<|im_end|>"]


@pytest.mark.parametrize("name", LOADABLE)
def test_render_chat_equals_the_tokenizer_template(shared: Path, name: str) -> None:
    folder = shared / "hf" / name
    tok = tokenizer(folder)
    expected = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert render_chat(folder, MESSAGES) == expected


def test_chat_formats_per_family_without_a_tokenizer(shared: Path) -> None:
    hf = shared / "hf"
    user = [{"role": "user", "content": "What is 2+3?"}]
    # LLaDA: bos text, Llama-3 headers, end of turn <|eot_id|> (models.md section 1).
    assert render_chat(hf / "LLaDA-8B-Instruct", user) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # LLaDA2: role tags and the template's own "detailed thinking off" system turn (section 4).
    for name in ("LLaDA2.0-mini", "LLaDA2.1-mini"):
        assert render_chat(hf / name, user) == (
            "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>What is 2+3?<|role_end|><role>ASSISTANT</role>"
        )
    # Dream adds Qwen2.5's default system prompt; SDAR (Qwen3) does not, and takes enable_thinking.
    assert render_chat(hf / "Dream-v0-Instruct-7B", user).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    sdar = render_chat(hf / "SDAR-1dot7B-Chat", user, enable_thinking=False)
    assert sdar == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_chat_template_prefers_the_jinja_file(shared: Path) -> None:
    folder = shared / "hf" / "SDAR-30B-A3B-Chat"
    assert chat_template(folder) == (folder / "chat_template.jinja").read_text()


def test_missing_vocabulary_is_a_clear_error(shared: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(shared / "hf" / "LLaDA2.0-mini")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(shared / "hf" / "SDAR-4B-Chat" / "config.json", bare / "config.json")
    with pytest.raises(CheckpointError, match="chat template"):
        chat_template(bare)
