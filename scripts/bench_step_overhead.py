"""Per-step bookkeeping of the rollout engine against the plain reference loop, on a tiny LLaDA.

    python scripts/bench_step_overhead.py                  # vocab 512, batch 1, gen 64, block 32
    python scripts/bench_step_overhead.py --device cuda --batch 8

At vocabulary 512 and width 64 the model costs almost nothing, so a step's time is mostly the loop
around it. The engine's step is split into the model forward, the decode step and the rest (the
overhead: gathers, index bookkeeping, the rule, the writes), measured with timers around the first
two; the plain loop is LLaDA's published ``generate`` (temperature 0, low-confidence remasking,
full softmax), whose whole step is the bar for the engine's overhead. Also prints the host-device
synchronisations per step (:class:`diffrl.rollout.syncs.SyncCounter`). A benchmark: asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import diffrl.rollout.engine as engine
from diffrl.models import random_model
from diffrl.models.tiny import shrink_config
from diffrl.rollout import RolloutConfig, generate
from diffrl.rollout.syncs import SyncCounter


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def plain_generate(model, prompt: torch.Tensor, steps: int, gen_length: int, block_length: int) -> torch.Tensor:
    """LLaDA's ``generate`` at temperature 0 with low-confidence remasking (batch of equal prompts)."""
    mask_id = model.facts.mask_token_id
    bsz, plen = prompt.shape
    x = torch.full((bsz, plen + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :plen] = prompt
    per_block = steps // (gen_length // block_length)
    for b in range(gen_length // block_length):
        lo, hi = plen + b * block_length, plen + (b + 1) * block_length
        m = (x[:, lo:hi] == mask_id).sum(1, keepdim=True)
        counts = m // per_block + (torch.arange(per_block, device=x.device)[None, :] < m % per_block).long()
        for i in range(per_block):
            mask_index = x == mask_id
            logits = model.logits(model(x))
            x0 = logits.argmax(-1)
            x0_p = torch.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            for j in range(bsz):
                select = torch.topk(confidence[j], k=int(counts[j, i])).indices
                x[j, select] = x0[j, select]
    return x[:, plen:]


class StepTimer:
    """Wall time inside the model forward and inside the decode step, by wrapping both."""

    def __init__(self, model, device: str) -> None:
        self.forward = self.decode = 0.0
        self.device = device
        self.real_decode = engine.decode_step
        model.forward = self._timed(model.forward, "forward")
        engine.decode_step = self._timed(engine.decode_step, "decode")
        self.model = model

    def _timed(self, fn, name):
        def wrapped(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            setattr(self, name, getattr(self, name) + time.perf_counter() - start)
            return out

        return wrapped

    def close(self) -> None:
        engine.decode_step = self.real_decode
        del self.model.forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    shared = os.environ.get("DIFFRL_SHARED", Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--hf-root", default=str(Path(shared) / "hf"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="best of this many interleaved runs")
    args = parser.parse_args()
    config = shrink_config(json.loads((Path(args.hf_root) / "LLaDA-8B-Instruct" / "config.json").read_text()), vocab_size=512)
    model = random_model(config, std=0.5).to(args.device).eval()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 400, (1, 32), generator=gen).expand(args.batch, -1).contiguous().to(args.device)
    mask = torch.ones_like(prompt, dtype=torch.bool)
    g = args.gen_length
    cfgs = {
        "engine, no cache": RolloutConfig(max_completion_length=g, block_length=args.block_length, steps=g, stop_at_eos=False),
        "engine, dual cache": RolloutConfig(max_completion_length=g, block_length=args.block_length, steps=g, kv_cache="dual", stop_at_eos=False),
    }
    plain_generate(model, prompt, g, g, args.block_length)
    for cfg in cfgs.values():
        generate(model, prompt, mask, cfg)
    # Runs interleaved and the best of each kept: on a shared machine the load drifts between runs.
    plain = float("inf")
    best: dict[str, tuple[float, float, float]] = {}
    outs = {}
    for _ in range(args.repeats):
        sync(args.device)
        start = time.perf_counter()
        reference = plain_generate(model, prompt, g, g, args.block_length)
        sync(args.device)
        plain = min(plain, time.perf_counter() - start)
        for name, cfg in cfgs.items():
            timer = StepTimer(model, args.device)
            sync(args.device)
            start = time.perf_counter()
            outs[name] = generate(model, prompt, mask, cfg)
            sync(args.device)
            total = time.perf_counter() - start
            timer.close()
            best[name] = min(best.get(name, (float("inf"), 0.0, 0.0)), (total, timer.forward, timer.decode))
    per = 1e3 / g
    print(f"device={args.device} batch={args.batch} gen={g} block={args.block_length} steps={g} vocab=512 threads={torch.get_num_threads()}")
    print(f"{'loop':20} {'ms/step':>8} {'forward':>8} {'decode':>8} {'overhead':>9} {'syncs/step':>10} {'vs plain':>8} {'same tokens':>11}")
    print(f"{'plain LLaDA generate':20} {plain * per:8.2f}")
    for name, cfg in cfgs.items():
        total, fwd, dec = best[name]
        counter = SyncCounter()
        real_decode = engine.decode_step
        engine.decode_step = counter.exempt(real_decode)
        with counter:
            generate(model, prompt, mask, cfg)
        engine.decode_step = real_decode
        same = bool((outs[name].completion_ids == reference).all()) if cfg.kv_cache == "none" else "-"
        print(
            f"{name:20} {total * per:8.2f} {fwd * per:8.2f} {dec * per:8.2f} {(total - fwd - dec) * per:9.2f} "
            f"{counter.total / g:10.2f} {plain / total:7.2f}x {str(same):>11}"
        )


if __name__ == "__main__":
    main()
