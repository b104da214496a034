"""Cost of one training step per algorithm at equal batch, side by side in one run.

    python scripts/bench_algorithms.py                       # CPU, a small random LLaDA-architecture model
    python scripts/bench_algorithms.py --d-model 1024 --layers 16 --batch 16 --completion 256 --device cuda

Every algorithm trains the same random model on the same batch (random prompts and completions,
fixed advantages): its estimator with grad, its loss, one backward, one AdamW step; the rollout is
benchmarked by bench_rollout.py. Each (algorithm, attention) runs in its own process so peak
memory is its own. ``block_causal`` reruns the same weights as a block-diffusion model (the
two-stream layout, block 4). Reported: model forward calls and the rows they processed (a
row = one sequence; noisy copies and autoregressive positions count as rows), rows recomputed
in the backward (activation checkpointing of the batched AR likelihood), the MiB of tensors
autograd saves for the backward outside the weights (the graph; what BGPO keeps flat), seconds per step and
peak memory (CPU: resident memory above the size before the step, sampled every 2 ms; GPU: peak
allocated). A benchmark, not a test: it prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_train import PeakRSS, model_config  # noqa: E402

ALGORITHMS = ("diffu_grpo", "coupled_grpo", "igpo", "gdpo", "lightning_rl", "just_grpo", "spg", "espo", "bgpo", "bgpo_naive", "trace_rl", "cj_grpo", "mdpo")
# Rows that are an algorithm with other knobs: BGPO keeping every draw's graph (the naive
# many-sample ELBO its memory is measured against).
VARIANTS = {"bgpo_naive": ("bgpo", {"bgpo": {"checkpoint_draws": False}})}


def worker(args: argparse.Namespace) -> dict:
    from diffrl.algorithms import PolicyBatch, build_algorithm
    from diffrl.algorithms.losses import token_weights
    from diffrl.algorithms.registry import algorithm_entry
    from diffrl.models import random_model

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = random_model(model_config(args), seed=0).to(device).train()
    if args.attention[0] == "block_causal":
        model.facts = replace(model.facts, attention="block_causal", block_size=4)
    name, knobs = VARIANTS.get(args.worker, (args.worker, {}))
    cls, _ = algorithm_entry(name)
    cfg = cls(num_generations=args.group)
    for group, values in knobs.items():
        setattr(cfg, group, replace(getattr(cfg, group), **values))
    algo = build_algorithm(cfg)
    b, plen, glen = args.batch, args.prompt, args.completion
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab - 2, (b, plen), generator=gen).to(device)
    completion = torch.randint(0, args.vocab - 2, (b, glen), generator=gen).to(device)
    ones = torch.ones(b, glen, dtype=torch.bool, device=device)
    hints = torch.zeros_like(ones)
    hints[:, : glen // 4] = True  # IGPO's entropy filter has hint tokens to choose from
    # Two tokens committed per decode step (d1's 256 tokens in 128 steps), for the trace replays.
    step_map = (torch.arange(glen, device=device) // 2).expand(b, glen)
    batch = PolicyBatch(prompt, torch.ones_like(prompt, dtype=torch.bool), completion, ones, torch.arange(b, device=device), step_map, hints, ones.float())
    advantages = torch.linspace(-1, 1, b, device=device)
    if name == "mdpo":
        # MDPO trains sample_train_steps recorded steps of the same trace: x̂0_t = the completion,
        # x_t masks what step t or a later one committed; one advantage per sample and step.
        steps = torch.linspace(0, int(step_map.max()), cfg.mdpo.sample_train_steps, device=device).long()
        predicted = step_map[:, None, :] >= steps[None, :, None]
        batch = replace(batch, step_tokens=completion[:, None].expand_as(predicted), step_predicted=predicted, step_confidence=predicted.float() * 0.5)
        advantages = advantages[:, None].expand(b, steps.numel())
    weights = token_weights(ones, algo.config.loss_type, b, glen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    calls = {"forward": 0, "rows": 0, "backward_rows": 0, "graph_mib": 0.0}
    phase = {"backward": False}

    def count(_module: torch.nn.Module, inputs: tuple) -> None:
        rows = inputs[0].shape[0]
        if phase["backward"]:
            calls["backward_rows"] += rows
        else:
            calls["forward"] += 1
            calls["rows"] += rows

    model.register_forward_pre_hook(count)

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    graph: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            graph[storage.data_ptr()] = storage.nbytes()
        return t

    def step() -> None:
        graph.clear()
        # What autograd keeps for the backward (activation checkpointing keeps only its inputs).
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            scores = algo.estimator(model, batch, 1)
            if algo.token_filter is not None:
                weights_now = weights * algo.token_filter(scores, batch)
            else:
                weights_now = weights
            loss, _ = algo.loss(scores.logp, scores.logp.detach(), advantages, weights_now, ref_logp=scores.logp.detach())
        calls["graph_mib"] = sum(graph.values()) / 2**20
        phase["backward"] = True
        loss.backward()
        phase["backward"] = False
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    for k in calls:
        calls[k] = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as peak:
        base = peak.peak
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.steps
    memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak.peak - base
    return {k: v / args.steps for k, v in calls.items()} | {"graph_mib": calls["graph_mib"], "seconds": seconds, "peak_mib": memory / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--attention", nargs="+", default=["bidirectional", "block_causal"], help="the worker reads the first")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--completion", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(
        f"one training step, batch {args.batch} x (prompt {args.prompt} + completion {args.completion}), "
        f"d_model {args.d_model}, {args.layers} layers, vocab {args.vocab}, {args.device}"
    )
    header = f"{'algorithm':<14}{'attention':<15}{'forwards':>9}{'rows':>8}{'bwd rows':>9}{'graph MiB':>10}{'s/step':>9}{'peak MiB':>10}{'x diffu':>9}"
    print(header)
    base: dict[str, float] = {}
    for attention in args.attention:
        for name in args.algorithms:
            sizes = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("d_model", "layers", "vocab", "batch", "group", "prompt", "completion", "steps", "device")]
            cmd = [sys.executable, __file__, *sizes, "--worker", name, "--attention", attention]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
            r = json.loads(out.strip().splitlines()[-1])
            base.setdefault(attention, r["seconds"])
            print(
                f"{name:<14}{attention:<15}{r['forward']:>9.0f}{r['rows']:>8.0f}{r['backward_rows']:>9.0f}{r['graph_mib']:>10.1f}"
                f"{r['seconds']:>9.3f}{r['peak_mib']:>10.1f}{r['seconds'] / base[attention]:>9.2f}"
            )


if __name__ == "__main__":
    main()
