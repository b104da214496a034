"""Write a scaled-down random checkpoint of a published model folder (same parameter names).

    python scripts/make_tiny_checkpoint.py /models/LLaDA-8B-Instruct /tmp/tiny-llada
    python scripts/make_tiny_checkpoint.py ../shared/hf/Dream-v0-Instruct-7B /tmp/tiny-dream
    python scripts/make_tiny_checkpoint.py ../shared/hf/SDAR-30B-A3B-Chat /tmp/tiny-sdar-moe --block-size 4
    python scripts/make_tiny_checkpoint.py /models/LLaDA2.1-mini /tmp/tiny-llada2 \\
        --mask-token-id 156895 --eos-token-id 156892 --block-size 32
    python scripts/make_tiny_checkpoint.py ../shared/hf/LLaDA2.1-mini /tmp/tiny-llada2-512 --model-only \\
        --vocab-size 512 --mask-token-id 511 --eos-token-id 510 --block-size 32

Sizes per model_type are ``diffrl.models.tiny.TINY_SIZES``; every other config key, the
vocabulary and the tokenizer stay as published, so the result trains with the README commands
(``model=<family recipe> model.path=<out>``). The fact flags supply what a config lacks (LLaDA2's
mask/EOS ids, SDAR-MoE's and LLaDA2's block size), exactly as the model recipe does when the
folder is loaded later. ``--vocab-size`` shrinks the vocabulary below the tokenizer's, so it needs
``--model-only``: such a checkpoint has no tokenizer and serves tests of the model alone.

The script stops with the reason, before writing anything, when the result could not train: a
source folder without tokenizer files (copy tokenizer.json from the published repository), or a
config whose token facts are incomplete (pass the matching flag).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffrl.models import CheckpointError, FactOverrides
from diffrl.models.config import FolderFiles
from diffrl.models.registry import family_class
from diffrl.models.tiny import shrink_config, write_tiny_checkpoint
from diffrl.models.tokenizer import load_tokenizer

TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def trainability_problem(source: Path, facts: FactOverrides, vocab_size: int | None, model_only: bool) -> str | None:
    """Why a tiny checkpoint of ``source`` would not train with the README commands (None: it would)."""
    if not model_only and not any(all((source / name).exists() for name in names) for names in TOKENIZER_FILES):
        return (
            f"{source} has no tokenizer.json (nor vocab.json + merges.txt), so the tiny checkpoint could not tokenize "
            "prompts; copy the published tokenizer files into it, or pass --model-only for a checkpoint without a tokenizer"
        )
    published = FolderFiles.read(source)
    config = shrink_config(published.config, vocab_size)
    # The tokenizer files' facts (a mask_token) count only while the tokenizer travels along.
    files = FolderFiles(config, {}, {}, {}) if vocab_size else FolderFiles(config, published.generation_config, published.token_ids, published.special_tokens)
    cls = family_class(config)
    try:
        cls.read_facts(cls.read_config(config), files, facts)
    except (CheckpointError, ValueError) as err:
        return f"{err} (here: the matching --mask-token-id / --eos-token-id / --block-size flag)"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="published model folder (config.json, tokenizer files)")
    parser.add_argument("out", help="folder to write the tiny checkpoint into")
    parser.add_argument("--model-only", action="store_true", help="no tokenizer: allow --vocab-size and a source without tokenizer files")
    parser.add_argument("--vocab-size", type=int, default=None, help="shrink the vocabulary too (special ids are remapped; needs --model-only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--std", type=float, default=0.02, help="standard deviation of the random weights")
    parser.add_argument("--max-shard-mb", type=int, default=5 * 1024, help="shard size; small values exercise the sharded layout")
    parser.add_argument("--mask-token-id", type=int, default=None, help="for configs without one (model.mask_token_id)")
    parser.add_argument("--eos-token-id", type=int, default=None, help="for configs without one (model.eos_token_id)")
    parser.add_argument("--block-size", type=int, default=None, help="for block-causal configs without one (model.block_size)")
    args = parser.parse_args(argv)
    source = Path(args.source)
    facts = FactOverrides(mask_token_id=args.mask_token_id, eos_token_id=args.eos_token_id, block_size=args.block_size)
    if args.vocab_size is not None and not args.model_only:
        parser.error(f"--vocab-size {args.vocab_size} leaves the published tokenizer without its ids; add --model-only for a checkpoint without a tokenizer")
    try:
        problem = trainability_problem(source, facts, args.vocab_size, args.model_only)
    except CheckpointError as err:
        problem = str(err)
    if problem:
        parser.error(problem)
    out = write_tiny_checkpoint(
        source, args.out, vocab_size=args.vocab_size, seed=args.seed, std=args.std, max_shard_bytes=args.max_shard_mb * 1024**2, overrides=facts
    )
    if not args.model_only:
        tokenizer = load_tokenizer(out)
        vocab = json.loads((out / "config.json").read_text())
        size = vocab.get("embedding_size") or vocab["vocab_size"]
        if len(tokenizer) > size:
            parser.error(f"the tokenizer of {source} has {len(tokenizer)} tokens, more than the vocabulary of {size}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
