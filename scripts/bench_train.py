"""Training-step throughput and peak memory per strategy, side by side in one run.

    python scripts/bench_train.py                           # single, FSDP2 and ZeRO-2 (2 ranks) on CPU
    python scripts/bench_train.py --d-model 1024 --layers 16 --nproc 8 --device cuda
    python scripts/bench_train.py --strategies single fsdp2 zero2 zero3

Each strategy trains the same random LLaDA-architecture model (the demo's tiny config, resized)
on the same global batch in its own processes: ``single`` in one process, the others under
``torchrun --nproc_per_node N`` (gloo on CPU, nccl on GPU). A step is the update part of training
(forward, backward, gradient sync, clipping, AdamW) through the trainer's own Strategy, on the
masked-diffusion loss; rollout is benchmarked by bench_rollout.py. Reported per strategy:
global tokens (prompt + completion) per second over the timed steps, seconds per step, and peak
memory per rank during the timed steps (CPU: resident memory above the process's size before
the model was built, sampled every 2 ms, with glibc returning freed buffers to the OS; GPU: peak
allocated). A benchmark, not a test: it prints
numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = {"single": ("single", 2), "fsdp2": ("fsdp2", 2), "zero2": ("deepspeed", 2), "zero3": ("deepspeed", 3)}


def model_config(args: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(REPO / "recipes" / "model" / "llada_tiny.yaml"))["init_config"]  # type: ignore[index]
    v = args.vocab
    config.update(d_model=args.d_model, n_layers=args.layers, n_heads=args.d_model // 64, n_kv_heads=args.d_model // 64,
                  mlp_hidden_size=4 * args.d_model, vocab_size=v, embedding_size=v, mask_token_id=v - 1, eos_token_id=v - 2, pad_token_id=v - 2)
    return config


class PeakRSS:
    """Peak resident memory of this process while running, sampled every 2 ms (bytes)."""

    def __enter__(self) -> "PeakRSS":
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def worker(args: argparse.Namespace) -> None:
    from diffrl.algorithms import PolicyBatch
    from diffrl.models import random_model
    from diffrl.trainer.config import Config
    from diffrl.trainer.distributed import init_distributed, shutdown
    from diffrl.trainer.policy import Policy
    from diffrl.trainer.sft import sft_step
    from diffrl.trainer.strategy import build_strategy

    strategy, stage = STRATEGIES[args.worker]
    world = init_distributed(args.device)
    cuda = world.device.type == "cuda"
    baseline = rss()
    cfg = Config()
    cfg.trainer.strategy, cfg.trainer.deepspeed.stage, cfg.trainer.micro_batch_size = strategy, stage, args.micro_batch
    cfg.trainer.fsdp.param_dtype = None
    cfg.model.gradient_checkpointing = args.activation_checkpointing
    model = random_model(model_config(args), seed=0).to(world.device)
    policy = Policy(build_strategy(model, cfg, optim=cfg.optim, total_steps=args.steps + 1)[0], micro_batch_size=args.micro_batch)

    local = args.batch // world.world_size
    gen = torch.Generator().manual_seed(world.rank)
    prompt = torch.randint(0, args.vocab - 3, (local, args.prompt_length), generator=gen).to(world.device)
    completion = torch.randint(0, args.vocab - 3, (local, args.completion_length), generator=gen).to(world.device)
    ones = torch.ones_like(completion, dtype=torch.bool)
    batch = PolicyBatch(prompt, torch.ones_like(prompt, dtype=torch.bool), completion, ones,
                        torch.arange(local, device=world.device) + world.rank * local, completion * 0, ~ones, completion.float() * 0)

    def step(i: int) -> None:
        sft_step(policy, batch, i, micro_batch_size=args.micro_batch, global_size=args.batch)

    step(0)  # warm-up: lazy init, first all-gathers, allocator growth
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as peak:
        start = time.perf_counter()
        for i in range(1, args.steps + 1):
            step(i)
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
    memory = torch.tensor([torch.cuda.max_memory_allocated() if cuda else peak.peak - baseline], dtype=torch.float64)
    memory = memory.to(world.device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(memory, op=torch.distributed.ReduceOp.MAX)
    if world.is_main:
        tokens = args.batch * (args.prompt_length + args.completion_length)
        params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # DTensor.numel() is global
        result = {"strategy": args.worker, "ranks": world.world_size, "tokens_per_s": tokens / seconds, "step_s": seconds,
                  "peak_mib_per_rank": memory.item() / 2**20, "params_m": params / 1e6}
        Path(args.out).write_text(json.dumps(result))
    policy.close()
    shutdown()


def launch(name: str, args: argparse.Namespace, out: Path) -> dict:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "out", "strategies", "nproc", "activation_checkpointing")]
    flags += ["--activation-checkpointing"] if args.activation_checkpointing else []
    script = [str(Path(__file__).resolve()), f"--worker={name}", f"--out={out}", *flags]
    if name == "single":
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", *script]
    # A fixed mmap threshold makes glibc return every freed buffer of 64 KiB or more to the OS, so
    # resident memory follows live tensors instead of what the allocator keeps cached.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=["single", "fsdp2", "zero2"], choices=sorted(STRATEGIES))
    parser.add_argument("--nproc", type=int, default=2, help="ranks for the sharded strategies")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8, help="samples per step over all ranks")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--completion-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [launch(name, args, Path(tmp) / f"{name}.json") for name in args.strategies]
    base = rows[0]
    print(f"{rows[0]['params_m']:.1f}M parameters, {args.batch} samples x {args.prompt_length}+{args.completion_length} tokens per step, "
          f"micro-batch {args.micro_batch}, {args.steps} timed steps, device {args.device}")
    print(f"{'strategy':<10}{'ranks':>6}{'tokens/s':>12}{'s/step':>9}{'peak MiB/rank':>15}{'tok/s vs ' + base['strategy']:>18}{'mem vs ' + base['strategy']:>16}")
    for r in rows:
        print(f"{r['strategy']:<10}{r['ranks']:>6}{r['tokens_per_s']:>12.0f}{r['step_s']:>9.2f}{r['peak_mib_per_rank']:>15.0f}"
              f"{r['tokens_per_s'] / base['tokens_per_s']:>18.2f}{r['peak_mib_per_rank'] / base['peak_mib_per_rank']:>16.2f}")


if __name__ == "__main__":
    main()
