"""A tiny LLaDA with a real byte-level tokenizer, so evaluation tests read real test sets as text.

The tiny checkpoints keep a 512-token vocabulary (special ids remapped to the top), too small for a
published tokenizer. A byte-level BPE with the 256 byte symbols (ids 0-255), two-byte fillers up to
508 and the specials at the ids the tiny config names (bos 509, eos/pad 510, mask 511) encodes any
prompt and decodes any sampled id.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.torchrun import env

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def byte_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    for a, b in itertools.product(symbols, symbols):
        if len(vocab) >= vocab_size - 3:
            break
        vocab[a + b] = len(vocab)
    specials = {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"}
    for i, text in enumerate(specials.values()):
        vocab[text] = vocab_size - 3 + i
    tok = Tokenizer(models.BPE(vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=specials["eos_token"], **specials)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_byte_llada(shared: Path, folder: Path) -> Path:
    """A tiny random LLaDA (vocab 512) with the byte-level tokenizer saved beside it."""
    from diffrl.models.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(shared / "hf" / "LLaDA-8B-Instruct", folder, vocab_size=512, seed=0, std=0.1)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def byte_llada(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    return write_byte_llada(shared, tmp_path_factory.mktemp("byte_llada"))


def eval_overrides(model_dir: Path, shared: Path, out: Path, *extra: str, task: str = "gsm8k") -> list[str]:
    """Hydra overrides of a small CPU evaluation of the tiny model (prompts cut to their last 96
    bytes, 16-token completions in two blocks, two tokens per step, sampled)."""
    return [
        f"model.path={model_dir}", "model.dtype=float32", "model.stop_tokens=[]", "model.gradient_checkpointing=false",
        f"data_dir={shared / 'data'}", f"task={task}", "task.max_prompt_length=96",
        "rollout.max_completion_length=16", "rollout.block_length=8", "rollout.steps=8", "rollout.temperature=1.0",
        "eval.reward_workers=0", "eval.device=cpu", f"eval.output_dir={out}", *extra,
    ]


def compose_eval(*overrides: str):
    from hydra import compose, initialize_config_dir

    from diffrl.eval.config import to_eval_config
    from diffrl.train import RECIPES

    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return to_eval_config(compose("eval", overrides=list(overrides)))


def eval_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "diffrl.eval", *overrides]


def run_eval(tmp: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(eval_cmd(*overrides), cwd=tmp, env=env(tmp), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"diffrl.eval failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc
