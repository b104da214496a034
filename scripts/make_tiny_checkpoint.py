"""Write a scaled-down random checkpoint of a published model folder (same parameter names).

    python scripts/make_tiny_checkpoint.py ../shared/hf/LLaDA-8B-Instruct /tmp/tiny-llada
    python scripts/make_tiny_checkpoint.py ../shared/hf/LLaDA-8B-Instruct /tmp/tiny-llada --vocab-size 512
"""

from __future__ import annotations

import argparse

from diffrl.models.tiny import write_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="published model folder (config.json, tokenizer files)")
    parser.add_argument("out", help="folder to write the tiny checkpoint into")
    parser.add_argument("--vocab-size", type=int, default=None, help="shrink the vocabulary too (special ids are remapped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-mb", type=int, default=5 * 1024, help="shard size; small values exercise the sharded layout")
    args = parser.parse_args()
    out = write_tiny_checkpoint(args.source, args.out, vocab_size=args.vocab_size, seed=args.seed, max_shard_bytes=args.max_shard_mb * 1024**2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
