"""Write a scaled-down random checkpoint of a published model folder (same parameter names).

    python scripts/make_tiny_checkpoint.py ../shared/hf/LLaDA-8B-Instruct /tmp/tiny-llada
    python scripts/make_tiny_checkpoint.py ../shared/hf/Dream-v0-Instruct-7B /tmp/tiny-dream --vocab-size 512
    python scripts/make_tiny_checkpoint.py ../shared/hf/SDAR-30B-A3B-Chat /tmp/tiny-sdar-moe --block-size 4
    python scripts/make_tiny_checkpoint.py ../shared/hf/LLaDA2.1-mini /tmp/tiny-llada2 --vocab-size 512 \\
        --mask-token-id 511 --eos-token-id 510 --block-size 32

Sizes per model_type are ``diffrl.models.tiny.TINY_SIZES``; every other config key stays as
published. The fact flags supply what a config lacks (LLaDA2's mask/EOS ids, SDAR-MoE's and
LLaDA2's block size), exactly as the model recipe does when the folder is loaded later.
"""

from __future__ import annotations

import argparse

from diffrl.models import CheckpointError, FactOverrides
from diffrl.models.tiny import write_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="published model folder (config.json, tokenizer files)")
    parser.add_argument("out", help="folder to write the tiny checkpoint into")
    parser.add_argument("--vocab-size", type=int, default=None, help="shrink the vocabulary too (special ids are remapped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--std", type=float, default=0.02, help="standard deviation of the random weights")
    parser.add_argument("--max-shard-mb", type=int, default=5 * 1024, help="shard size; small values exercise the sharded layout")
    parser.add_argument("--mask-token-id", type=int, default=None, help="for configs without one (model.mask_token_id)")
    parser.add_argument("--eos-token-id", type=int, default=None, help="for configs without one (model.eos_token_id)")
    parser.add_argument("--block-size", type=int, default=None, help="for block-causal configs without one (model.block_size)")
    args = parser.parse_args()
    facts = FactOverrides(mask_token_id=args.mask_token_id, eos_token_id=args.eos_token_id, block_size=args.block_size)
    try:
        out = write_tiny_checkpoint(
            args.source,
            args.out,
            vocab_size=args.vocab_size,
            seed=args.seed,
            std=args.std,
            max_shard_bytes=args.max_shard_mb * 1024**2,
            overrides=facts,
        )
    except CheckpointError as err:
        parser.error(f"{err} (here: the matching --mask-token-id / --eos-token-id / --block-size flag)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
