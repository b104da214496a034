"""Rollout throughput per family: the uncached loop, the cached engine and cached + threshold decoding.

    python scripts/bench_rollout.py --threads 1                      # every family, mid-size, this machine
    python scripts/bench_rollout.py --size tiny --gen-length 32      # seconds: does every setting run?
    python scripts/bench_rollout.py --families llada --gen-length 64 --block-length 32
    python scripts/bench_rollout.py --device cuda --size real --batch 8 --gen-length 256
    python scripts/bench_rollout.py --batches 1 8 32 --gen-length 64   # batch throughput, cached + threshold
    python scripts/bench_rollout.py --recipes --gen-length 64          # paper-faithful vs fast rollout recipes
    python scripts/bench_rollout.py --compile --families llada         # rollout.compile=true vs eager, compile time apart
    python scripts/bench_rollout.py --gemm-rows 32 64 128 256 --vocab 126464   # what batching can gain: matmul rate per row count

Each family is a random model of its published architecture (config.json from ``--hf-root``) at
the chosen size. ``tiny`` is the tests' size (``diffrl.models.tiny``: width 64, two or three
layers, a 512-token vocabulary): a check in seconds that every setting runs, whose timings are
mostly per-step overhead. ``mid`` (the default, being the size whose numbers mean something on a
CPU) also shrinks the vocabulary (``--vocab``) so that, as in the real models, the transformer and
not the LM head dominates a forward. ``real`` keeps the published sizes. One run prints tokens/s,
NFE and TPF of three settings and the ratios between them;
the agreement column is the share of tokens equal to the uncached loop's (1.00 where the cache is
exact). Random weights have no real confidence structure: threshold decoding's parallelism depends
on the weight scale (``--std``), so its TPF here says how the engine performs at that TPF, not what
TPF a trained model reaches. A benchmark, not a test: it asserts nothing.

``--batches`` runs the cached engine with threshold decoding at each batch size (distinct prompts)
and reports tokens/s against the first size, with the occupancy: the mean share of the batch's rows
a forward runs (rows whose block is done wait for the others and are left out of the forward, so a
low occupancy is time the batch spends on fewer rows than it has). ``--recipes`` compares each
family's paper-faithful rollout recipe with its ``*_fast`` counterpart (``recipes/rollout/``, length
set by ``--gen-length``). ``--compile`` runs the uncached loop and cached + threshold eagerly and with
``rollout.compile=true``: the first compiled rollout's extra time is the compile time, reported
apart; the rate is that of a second compiled rollout; ``same`` says whether the tokens equal eager.
``--gemm-rows`` times the mid model's two matmul shapes (the LM head over ``--vocab`` and an MLP
projection) at each row count: a block step of batch B decodes up to B x block rows, so the rate at
B x 32 rows over the rate at 32 bounds what batch B can gain on this device.
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
from diffrl.models.registry import FAMILIES
from diffrl.models.tiny import shrink_config
from diffrl.rollout import RolloutConfig, generate
from diffrl.rollout.metrics import tokens_per_forward

_QWEN_MID = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 8, "intermediate_size": 1376}
_MOE_MID = {"num_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 256}
# model_type -> (published folder under --hf-root, mid-size fields, facts the published config lacks
# (what a model recipe supplies: mask/eos ids, block size); the mid size moves the ids to its vocabulary's top).
MODELS = {
    "llada": ("LLaDA-8B-Instruct", {"d_model": 512, "n_heads": 8, "n_kv_heads": 8, "n_layers": 8, "mlp_hidden_size": 1376}, {}),
    "Dream": ("Dream-v0-Instruct-7B", _QWEN_MID, {}),
    "sdar": ("SDAR-4B-Chat", {**_QWEN_MID, "head_dim": 64}, {}),
    "sdar_moe": ("SDAR-30B-A3B-Chat", {**_QWEN_MID, **_MOE_MID, "head_dim": 64}, {"mask_token_id": 151669, "block_size": 4}),
    "llada2_moe": (
        "LLaDA2.0-mini",
        {**_QWEN_MID, **_MOE_MID, "head_dim": 64, "n_group": 4, "topk_group": 2},
        {"mask_token_id": 156895, "eos_token_id": 156892, "block_size": 32},
    ),
}


def settings(args: argparse.Namespace, block: int, cache: str) -> dict[str, RolloutConfig]:
    """The uncached loop, the cached engine and the cached engine with threshold decoding."""
    base = RolloutConfig(
        max_completion_length=args.gen_length, block_length=block, steps=args.gen_length, temperature=0.0, stop_at_eos=False
    )
    return {
        "uncached": base,
        "cached": replace(base, kv_cache=cache),
        "cached+threshold": replace(base, kv_cache=cache, threshold=args.threshold),
    }


def timed_generate(model, prompts, mask, cfg: RolloutConfig, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(model, prompts, mask, cfg)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def bench_family(model_type: str, args: argparse.Namespace) -> None:
    model = build(model_type, args)
    facts = model.facts
    block_causal = facts.attention == "block_causal"
    block = facts.block_size if block_causal else args.block_length
    prompts, mask = prompts_of(model, args, args.batch)
    cfgs = settings(args, block, "prefix" if block_causal else args.cache)
    generate(model, prompts[:1], mask[:1], replace(cfgs["cached"], max_completion_length=block, steps=1))  # warm-up
    print(f"\n{model_type} ({facts.attention}, block {block}, cache {'block' if block_causal else args.cache})")
    print(f"{'setting':18} {'tokens/s':>10} {'NFE':>7} {'TPF':>6} {'seconds':>8} {'agree':>6} {'speedup':>8}")
    reference, base_rate = None, None
    for name, cfg in cfgs.items():
        out, seconds = timed_generate(model, prompts, mask, cfg, args.device)
        # Every setting decodes all G tokens (no stop), so count them all: a random model's stray stop
        # token would otherwise cut one setting's count and not another's.
        generated = torch.ones_like(out.completion_mask)
        rate = generated.sum().item() / seconds
        tpf = tokens_per_forward(out.step_map, generated, out.nfe).mean().item()
        reference = out.completion_ids if reference is None else reference
        base_rate = rate if base_rate is None else base_rate
        agree = (out.completion_ids == reference).float().mean().item()
        print(f"{name:18} {rate:10.1f} {out.nfe.float().mean().item():7.1f} {tpf:6.2f} {seconds:8.2f} {agree:6.2f} {rate / base_rate:7.2f}x")


# family -> (paper-faithful rollout recipe, fast rollout recipe) in recipes/rollout/.
RECIPE_PAIRS = {"llada": ("llada_d1", "llada_d1_fast"), "Dream": ("dream_instruct", "dream_instruct_fast")}


def build(model_type: str, args: argparse.Namespace):
    """The family's random model at ``--size``."""
    folder, mid, facts = MODELS[model_type]
    config = {**json.loads((Path(args.hf_root) / folder / "config.json").read_text()), **facts}
    if args.size != "real":
        config = shrink_config(config, vocab_size=args.vocab, **(mid if args.size == "mid" else {}))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    return random_model(config, std=args.std, dtype=dtype).to(args.device).eval()


def bench_batches(model_type: str, args: argparse.Namespace) -> None:
    """Tokens/s of the cached engine with threshold decoding at each of ``--batches``."""
    model = build(model_type, args)
    block_causal = model.facts.attention == "block_causal"
    block = model.facts.block_size if block_causal else args.block_length
    cfg = settings(args, block, "prefix" if block_causal else args.cache)["cached+threshold"]
    generate(model, *prompts_of(model, args, 1), replace(cfg, max_completion_length=block, steps=1))  # warm-up
    print(f"\n{model_type} cached+threshold {args.threshold} (cache {'block' if block_causal else args.cache}, block {block})")
    print(f"{'batch':>6} {'tokens/s':>10} {'vs first':>9} {'forwards':>9} {'occupancy':>10} {'TPF':>6} {'seconds':>8}")
    base = None
    for bsz in args.batches:
        sizes: list[int] = []
        hook = model.register_forward_hook(lambda _m, inputs, _out: sizes.append(inputs[0].shape[0]))
        out, seconds = timed_generate(model, *prompts_of(model, args, bsz), cfg, args.device)
        hook.remove()
        rate = bsz * args.gen_length / seconds
        base = rate if base is None else base
        tpf = tokens_per_forward(out.step_map, torch.ones_like(out.completion_mask), out.nfe).mean().item()
        occupancy = sum(sizes) / (len(sizes) * bsz)
        print(f"{bsz:6d} {rate:10.1f} {rate / base:8.2f}x {len(sizes):9d} {occupancy:10.2f} {tpf:6.2f} {seconds:8.2f}")


def scaled_recipe(name: str, gen_length: int) -> dict:
    """The fields of ``recipes/rollout/<name>.yaml`` with its length set to ``gen_length``: the block
    capped by it and the steps scaled with it (at least one per block)."""
    import yaml

    fields = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "rollout" / f"{name}.yaml").read_text())
    block = min(fields["block_length"], gen_length)
    steps = max(gen_length // block, int(fields["steps"] * gen_length / fields["max_completion_length"]))
    return {**fields, "max_completion_length": gen_length, "block_length": block, "steps": steps}


def bench_recipes(model_type: str, args: argparse.Namespace) -> None:
    """NFE, TPF and tokens/s of the family's faithful and fast rollout recipes."""
    model = build(model_type, args)
    print(f"\n{model_type} rollout recipes at gen {args.gen_length} (steps scaled with it), batch {args.batch}")
    print(f"{'recipe':22} {'tokens/s':>10} {'NFE':>7} {'TPF':>6} {'seconds':>8} {'speedup':>8}")
    base = None
    for name in RECIPE_PAIRS[model_type]:
        cfg = RolloutConfig(**{**scaled_recipe(name, args.gen_length), "stop_at_eos": False})
        out, seconds = timed_generate(model, *prompts_of(model, args, args.batch), cfg, args.device)
        rate = args.batch * args.gen_length / seconds
        base = rate if base is None else base
        tpf = tokens_per_forward(out.step_map, torch.ones_like(out.completion_mask), out.nfe).mean().item()
        print(f"{name:22} {rate:10.1f} {out.nfe.float().mean().item():7.1f} {tpf:6.2f} {seconds:8.2f} {rate / base:7.2f}x")


def bench_compile(model_type: str, args: argparse.Namespace) -> None:
    """Eager against ``rollout.compile=true`` for the uncached loop and cached + threshold."""
    model = build(model_type, args)
    block_causal = model.facts.attention == "block_causal"
    block = model.facts.block_size if block_causal else args.block_length
    prompts, mask = prompts_of(model, args, args.batch)
    cfgs = settings(args, block, "prefix" if block_causal else args.cache)
    generate(model, prompts[:1], mask[:1], replace(cfgs["cached"], max_completion_length=block, steps=1))  # warm-up
    print(f"\n{model_type} eager vs rollout.compile=true (batch {args.batch}, gen {args.gen_length})")
    print(f"{'setting':18} {'eager tok/s':>12} {'compiled tok/s':>15} {'speedup':>8} {'compile s':>10} {'same':>5}")
    for name in ("uncached", "cached+threshold"):
        cfg = cfgs[name]
        eager, eager_s = timed_generate(model, prompts, mask, cfg, args.device)
        _, first_s = timed_generate(model, prompts, mask, replace(cfg, compile=True), args.device)
        compiled, compiled_s = timed_generate(model, prompts, mask, replace(cfg, compile=True), args.device)
        tokens = args.batch * args.gen_length
        same = torch.equal(eager.completion_ids, compiled.completion_ids)
        print(
            f"{name:18} {tokens / eager_s:12.1f} {tokens / compiled_s:15.1f} {eager_s / compiled_s:7.2f}x "
            f"{first_s - compiled_s:10.1f} {str(same):>5}"
        )


def bench_gemm(args: argparse.Namespace) -> None:
    """GFLOP/s of the LM head and an MLP projection of the mid size at each of ``--gemm-rows``."""
    hidden, mlp = 512, 1376
    print(f"\nmatmul rate by rows (hidden {hidden}, best of 3; the LM head over vocabulary {args.vocab}, an MLP projection to {mlp})")
    print(f"{'rows':>6} {'LM head ms':>11} {'GFLOP/s':>8} {'MLP us':>8} {'GFLOP/s':>8}")
    head = torch.randn(args.vocab, hidden, device=args.device) * 0.02
    proj = torch.randn(mlp, hidden, device=args.device) * 0.02
    for rows in args.gemm_rows:
        x = torch.randn(rows, hidden, device=args.device)
        rates = []
        for weight, repeats in ((head, 3), (proj, 20)):
            x @ weight.T
            best = float("inf")
            for _ in range(repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                x @ weight.T
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            rates.append((best, 2 * rows * hidden * weight.shape[0] / best / 1e9))
        print(f"{rows:6d} {rates[0][0] * 1e3:11.1f} {rates[0][1]:8.1f} {rates[1][0] * 1e6:8.1f} {rates[1][1]:8.1f}")


def prompts_of(model, args: argparse.Namespace, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``bsz`` distinct random prompts (seeded) and their all-true mask."""
    facts = model.facts
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, min(facts.mask_token_id, facts.eos_token_id) - 1, (bsz, args.prompt_length), generator=gen).to(args.device)
    return prompts, torch.ones_like(prompts, dtype=torch.bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--families", nargs="+", default=[m for m in MODELS if m in FAMILIES], help=f"model types among {', '.join(MODELS)}")
    shared = os.environ.get("DIFFRL_SHARED", Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--hf-root", default=str(Path(shared) / "hf"), help="published config folders (default $DIFFRL_SHARED/hf)")
    parser.add_argument("--size", choices=("tiny", "mid", "real"), default="mid")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--vocab", type=int, default=None,
        help="tiny and mid sizes: vocabulary (special ids move to its top; default 512 tiny, as in the tests, and 8192 mid). "
        "The published 126k-152k vocabularies would make the LM head most of a mid-size model's FLOPs, while on the real "
        "models it is about 7%% of them",
    )
    parser.add_argument("--std", type=float, default=0.5, help="init std of the random weights (sharper outputs when larger)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32, help="bidirectional families (block-causal ones use their block_size)")
    parser.add_argument("--cache", choices=("prefix", "dual"), default="dual", help="bidirectional cache (block-causal: the block cache)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 gives steady numbers on a shared machine)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="batch throughput of cached+threshold at these sizes")
    parser.add_argument("--recipes", action="store_true", help=f"faithful vs fast rollout recipes ({', '.join(RECIPE_PAIRS)})")
    parser.add_argument("--compile", action="store_true", help="eager vs rollout.compile=true, compile time apart")
    parser.add_argument("--gemm-rows", type=int, nargs="+", default=None, help="matmul rate of the mid size's shapes at these row counts")
    args = parser.parse_args()
    if args.vocab is None:
        args.vocab = 512 if args.size == "tiny" else 8192
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device={args.device} size={args.size} vocab={args.vocab if args.size != 'real' else 'published'} std={args.std} "
        f"dtype={args.dtype} batch={args.batch} prompt={args.prompt_length} "
        f"gen={args.gen_length} steps={args.gen_length} T=0 threads={torch.get_num_threads()}"
    )
    if args.gemm_rows:
        bench_gemm(args)
        return
    for model_type in args.families:
        if args.batches:
            bench_batches(model_type, args)
        elif args.compile:
            bench_compile(model_type, args)
        elif args.recipes:
            if model_type in RECIPE_PAIRS:
                bench_recipes(model_type, args)
        else:
            bench_family(model_type, args)


if __name__ == "__main__":
    main()
