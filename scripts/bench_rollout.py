"""Rollout throughput: tokens/s, NFE and tokens per forward of the sampler on random LLaDA models.

    python scripts/bench_rollout.py                 # tiny and mid-size configs on this machine
    python scripts/bench_rollout.py --device cuda --batch 32 --gen-length 256

A benchmark, not a test: it prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffrl.models import random_model
from diffrl.rollout import RolloutConfig, generate

LLADA = {
    "model_type": "llada", "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 4096,
    "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
}
SIZES = {
    "tiny": {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128, "vocab_size": 126464, "embedding_size": 126464},
    "mid": {"d_model": 512, "n_heads": 8, "n_kv_heads": 8, "n_layers": 8, "mlp_hidden_size": 1376, "vocab_size": 126464, "embedding_size": 126464},
}


def bench(name: str, args: argparse.Namespace) -> dict[str, float]:
    model = random_model({**LLADA, **SIZES[name]}, std=0.05).to(args.device).eval()
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 126000, (args.batch, args.prompt_length), generator=gen).to(args.device)
    mask = torch.ones_like(prompts, dtype=torch.bool)
    cfg = RolloutConfig(max_completion_length=args.gen_length, block_length=args.block_length, steps=args.steps, temperature=1.0, stop_at_eos=False)
    generate(model, prompts[:1], mask[:1], RolloutConfig(max_completion_length=args.block_length, block_length=args.block_length, steps=1))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(model, prompts, mask, cfg)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = out.completion_mask.sum().item()
    return {"tokens/s": tokens / seconds, "nfe": out.nfe.float().mean().item(), "tpf": out.tokens_per_forward.mean().item(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    args = parser.parse_args()
    print(f"device={args.device} batch={args.batch} prompt={args.prompt_length} gen={args.gen_length} block={args.block_length} steps={args.steps}")
    print(f"{'config':8} {'tokens/s':>10} {'NFE':>6} {'TPF':>6} {'seconds':>8}")
    for name in args.sizes:
        r = bench(name, args)
        print(f"{name:8} {r['tokens/s']:10.1f} {r['nfe']:6.1f} {r['tpf']:6.2f} {r['seconds']:8.2f}")


if __name__ == "__main__":
    main()
