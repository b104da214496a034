"""Tiny Dream (its published 151,936-token vocabulary) rolling out with and without top-p, in one run.

    python scripts/bench_top_p.py                           # Dream's recipe: T=0.2, top_p=0.95, entropy rule
    python scripts/bench_top_p.py --temperature 1.0 --top-p 0.9 --gen-length 32

A random tiny model (``diffrl.models.tiny`` sizes, full vocabulary) makes the LM head and the decode
step most of a forward, which is what top-p's cost is measured against. Prints tokens/s of each
setting and the ratio top-p / no filter. Run it from two checkouts to compare code versions. A
benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from diffrl.models import random_model
from diffrl.models.tiny import shrink_config
from diffrl.rollout import RolloutConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = os.environ.get("DIFFRL_SHARED", str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--hf-root", default=str(Path(shared) / "hf"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--remasking", default="entropy")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--std", type=float, default=0.5, help="init std of the random weights (sharper outputs when larger)")
    args = parser.parse_args()

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    config = shrink_config(json.loads((Path(args.hf_root) / "Dream-v0-Instruct-7B" / "config.json").read_text()))
    model = random_model(config, std=args.std).to(args.device).eval()
    facts = model.facts
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, min(facts.mask_token_id, facts.eos_token_id) - 1, (args.batch, args.prompt_length), generator=gen).to(args.device)
    mask = torch.ones_like(prompts, dtype=torch.bool)
    base = RolloutConfig(
        max_completion_length=args.gen_length, block_length=args.gen_length, steps=args.gen_length,
        temperature=args.temperature, remasking=args.remasking, schedule="proportional", stop_at_eos=False,
    )
    generate(model, prompts[:1], mask[:1], replace(base, max_completion_length=4, block_length=4, steps=1))  # warm-up
    print(f"tiny Dream, vocab {config['vocab_size']}, batch {args.batch}, gen {args.gen_length}, T={args.temperature}, {args.remasking}")
    rates = {}
    for name, cfg in (("no filter", base), (f"top_p={args.top_p}", replace(base, top_p=args.top_p))):
        sync()
        start = time.perf_counter()
        out = generate(model, prompts, mask, cfg)
        sync()
        seconds = time.perf_counter() - start
        rates[name] = out.completion_ids.numel() / seconds
        print(f"{name:14} {rates[name]:8.1f} tokens/s  {seconds:6.2f} s")
    print(f"top-p / no filter: {rates[f'top_p={args.top_p}'] / rates['no filter']:.2f}x")


if __name__ == "__main__":
    main()
