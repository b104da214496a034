"""Kernel benchmark: fused Triton kernel vs chunked PyTorch fallback vs naive PyTorch, in one run.

    python scripts/bench_kernels.py                                  # GPU: 8192 rows, hidden 4096, bf16
    python scripts/bench_kernels.py --rows 1024 --hidden 256         # CPU-sized shapes (fp32)
    python scripts/bench_kernels.py --kernels logprob decode --vocab 151936

For every kernel it prints the median time and the peak memory of each path and their ratios.
"naive" is what the reference code does: full [rows, vocab] logits, then log_softmax / softmax;
for RMSNorm and RoPE the fallback is already plain eager PyTorch, and naive is torch's own
``F.rms_norm`` and Hugging Face's ``rotate_half`` in the activation dtype. Peak memory is the CUDA allocator's high-water mark, or
on CPU the process's peak resident set (Linux ``/proc/self/clear_refs``). Without CUDA the fused
column prints n/a: Triton's interpreter is not a timing. On a GPU the fused kernel's achieved
bandwidth counts the bytes it must move at least once (inputs read, outputs written), against the
device's peak from its memory clock and bus width; the LM-head kernels also print TFLOP/s, since
at thousands of rows they are bound by the matmul, not by memory.

A benchmark, not a test: it prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from diffrl.kernels import apply_rope, decode_step, rms_norm, selected_logprobs, use_backend
from diffrl.kernels.dispatch import triton_available
from diffrl.models.layers import rope_cos_sin
from diffrl.rng import counter_hash


def per_head(proj: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """The [B, L, H * D] q/k projection seen as [B, H, L, D], as the models hand it to RoPE (no copy)."""
    return proj.unflatten(-1, (heads, head_dim)).transpose(1, 2)

PATHS = ("fused", "fallback", "naive")
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


@dataclass
class Case:
    """One kernel at one shape: a callable per path, and the work the fused kernel must do."""

    name: str
    runs: dict[str, Callable[[], object]]
    min_bytes: float
    flops: float = 0.0
    results: dict[str, tuple[float, float]] = field(default_factory=dict)


def backend_run(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with use_backend(backend):
            return fn()

    return run


def lm_head_inputs(args: argparse.Namespace, vocab: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=args.device).manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden, device=args.device, dtype=args.dtype, generator=gen)
    weight = torch.randn(vocab, args.hidden, device=args.device, dtype=args.dtype, generator=gen) * args.hidden**-0.5
    targets = torch.randint(0, vocab, (args.rows,), device=args.device, generator=gen)
    return hidden.requires_grad_(grad), weight.requires_grad_(grad), targets


def logprob_case(args: argparse.Namespace, vocab: int, backward: bool, entropy: bool = False) -> Case:
    """Selected-token log-prob (and, with ``entropy``, the entropy and its gradient too, which the
    naive path also computes then)."""
    hidden, weight, targets = lm_head_inputs(args, vocab, backward)

    def ours() -> object:
        logp, ent = selected_logprobs(hidden, weight, targets, entropy=entropy)
        if backward:
            torch.autograd.grad(logp.sum() + (ent.sum() if entropy else 0), (hidden, weight))
        return logp

    def naive() -> object:
        logp_all = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
        logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
        loss = logp.sum()
        if entropy:
            loss = loss - (logp_all.exp() * logp_all).sum()
        if backward:
            torch.autograd.grad(loss, (hidden, weight))
        return logp

    size = hidden.element_size()
    passes = 2 if backward else 1  # backward reads h and W again and writes dh and dW
    matmuls = 3 if backward else 1
    return Case(
        f"log-prob{' +entropy' if entropy else ''} {'fwd+bwd' if backward else 'fwd'}",
        {"fused": backend_run("triton", ours), "fallback": backend_run("torch", ours), "naive": naive},
        min_bytes=passes * size * (args.rows + vocab) * args.hidden + 8 * args.rows,
        flops=2.0 * matmuls * args.rows * vocab * args.hidden,
    )


def decode_case(args: argparse.Namespace, vocab: int, rows: int, temperature: float, top_k: int | None) -> Case:
    hidden, weight, _ = lm_head_inputs(argparse.Namespace(**{**vars(args), "rows": rows}), vocab, False)
    keys = counter_hash(0, torch.arange(rows, device=args.device))
    mask_id = vocab - 1

    def ours() -> object:
        return decode_step(hidden, weight, temperature=temperature, noise_keys=keys, top_k=top_k, suppress_ids=(mask_id,))

    def naive() -> object:
        logits = (hidden @ weight.T).float()
        logits[:, mask_id] = float("-inf")
        if top_k is not None:
            logits = logits.masked_fill(logits < logits.topk(top_k, dim=-1).values[:, -1:], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if temperature > 0:
            token = torch.argmax(logits / temperature - torch.log(-torch.log(torch.rand_like(logits))), dim=-1)
        else:
            token = torch.argmax(logits, dim=-1)
        top2 = probs.topk(2, dim=-1).values
        entropy = -(probs * torch.log_softmax(logits, dim=-1).nan_to_num(neginf=0.0)).sum(-1)
        return token, probs.gather(-1, token[:, None]), top2[:, 0] - top2[:, 1], entropy

    label = "argmax" if temperature == 0 else f"T={temperature}" + (f" top-k {top_k}" if top_k else "")
    return Case(
        f"decode {rows} rows {label}",
        {"fused": backend_run("triton", ours), "fallback": backend_run("torch", ours), "naive": naive},
        min_bytes=hidden.element_size() * (rows + vocab) * args.hidden + 32 * rows,
        flops=2.0 * rows * vocab * args.hidden,
    )


def rmsnorm_case(args: argparse.Namespace) -> Case:
    x = torch.randn(args.rows, args.hidden, device=args.device, dtype=args.dtype, requires_grad=True)
    weight = torch.ones(args.hidden, device=args.device, dtype=args.dtype, requires_grad=True)

    def run(norm: Callable[[], torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(norm().float().square().sum(), (x, weight))

    ours = run(lambda: rms_norm(x, weight, 1e-5))
    return Case(
        "RMSNorm fwd+bwd",
        {"fused": backend_run("triton", ours), "fallback": backend_run("torch", ours), "naive": run(lambda: F.rms_norm(x, (args.hidden,), weight, 1e-5))},
        min_bytes=5 * x.numel() * x.element_size(),  # read x, write y; read x and dy, write dx
    )


def rope_case(args: argparse.Namespace, rotary_dim: int) -> Case:
    head_dim = 128
    heads = max(1, args.hidden // head_dim)
    proj = torch.randn(1, args.rows, heads * head_dim, device=args.device, dtype=args.dtype, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(args.rows, device=args.device)[None], rotary_dim, 500000.0)

    def run(rotate: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(rotate(per_head(proj, heads, head_dim)).float().square().sum(), proj)

    def transformers_style(x: torch.Tensor) -> torch.Tensor:
        # rotate_half in the activation dtype, as Hugging Face's apply_rotary_pos_emb does
        rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
        rotated = torch.cat((-rot[..., rotary_dim // 2 :], rot[..., : rotary_dim // 2]), dim=-1)
        return torch.cat((rot * cos.to(x.dtype) + rotated * sin.to(x.dtype), rest), dim=-1)

    ours = run(lambda x: apply_rope(x, cos, sin))
    return Case(
        f"RoPE fwd+bwd rot {rotary_dim}/{head_dim}",
        {"fused": backend_run("triton", ours), "fallback": backend_run("torch", ours), "naive": run(transformers_style)},
        min_bytes=4 * proj.numel() * proj.element_size(),  # read x, write y; read dy, write dx
    )


def _proc_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field_name))


def measure(fn: Callable[[], object], device: torch.device, repeat: int) -> tuple[float, float]:
    """Median seconds over ``repeat`` runs after one warm-up, and the peak memory above the
    starting point (bytes) across them."""
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak resident set to the current one
        start_mem = _proc_kib("VmRSS:") * 1024
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_kib("VmHWM:") * 1024
    return statistics.median(times), peak - start_mem


def peak_bandwidth(device: torch.device) -> float | None:
    """Bytes/s from the memory clock (double data rate) and the bus width."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8


def fmt_time(x: float | None) -> str:
    return f"{x * 1e3:10.1f}" if x is not None else f"{'n/a':>10}"


def fmt_mem(x: float | None) -> str:
    return f"{x / 2**20:9.0f}" if x is not None else f"{'n/a':>9}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:7.2f}x" if a is not None and b is not None and b > 0 else f"{'n/a':>8}"


def report(case: Case, vocab: int | None, device: torch.device) -> None:
    t = {p: case.results[p][0] if p in case.results else None for p in PATHS}
    m = {p: case.results[p][1] if p in case.results else None for p in PATHS}
    peak = peak_bandwidth(device)
    bandwidth = f"{case.min_bytes / t['fused'] / 1e9:7.0f} ({case.min_bytes / t['fused'] / peak:4.0%})" if t["fused"] and peak else f"{'n/a':>14}"
    tflops = f"{case.flops / t['fused'] / 1e12:7.1f}" if t["fused"] and case.flops else f"{'n/a':>7}"
    print(
        f"{case.name:32} {vocab or '':>7} |{fmt_time(t['fused'])}{fmt_time(t['fallback'])}{fmt_time(t['naive'])} |"
        f"{fmt_mem(m['fused'])}{fmt_mem(m['fallback'])}{fmt_mem(m['naive'])} |"
        f" {fmt_ratio(t['naive'], t['fused'])} {fmt_ratio(m['naive'], m['fused'])}"
        f" {fmt_ratio(t['naive'], t['fallback'])} {fmt_ratio(m['naive'], m['fallback'])} | {bandwidth} {tflops}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--rows", type=int, default=8192, help="B*L tokens scored or decoded")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, nargs="+", default=[126464, 151936])
    parser.add_argument(
        "--decode-rows", type=int, nargs="+", default=None,
        help="rows per decode step (default: --rows, and 256, where reading the LM head dominates)",
    )
    parser.add_argument("--kernels", nargs="+", default=["logprob", "decode", "rmsnorm", "rope"])
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per path (default 10 on GPU, 1 on CPU)")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    if not cuda and MMAP_ENV not in os.environ:
        # glibc keeps freed blocks below its (self-raising) mmap threshold for reuse, which hides
        # later peaks from the resident set; a fixed threshold returns every large block on free.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "65536"})
    args.dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    repeat = args.repeat or (10 if cuda else 1)
    fused = cuda and triton_available()
    name = torch.cuda.get_device_name(args.device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}: rows={args.rows} hidden={args.hidden} dtype={str(args.dtype).removeprefix('torch.')} repeat={repeat}")
    if not fused:
        print("fused: n/a (needs CUDA and triton; the interpreter is not a timing)")
    print(
        f"{'kernel':32} {'vocab':>7} |{'fused ms':>10}{'fallbk ms':>10}{'naive ms':>10} |{'fused MiB':>9}{'fallbk':>9}{'naive':>9} |"
        f" {'naive/fused':>17} {'naive/fallback':>17} | {'GB/s (of peak)':>14} {'TFLOP/s':>7}"
    )
    print(f"{'':41}|{'':30} |{'':27} | {'time':>8} {'memory':>8} {'time':>8} {'memory':>8} |")

    def cases() -> Iterator[tuple[Case, int | None]]:
        # built one at a time, so only one case's inputs are alive
        for vocab in args.vocab:
            if "logprob" in args.kernels:
                yield logprob_case(args, vocab, False), vocab
                yield logprob_case(args, vocab, True), vocab
                yield logprob_case(args, vocab, True, entropy=True), vocab
            if "decode" in args.kernels:
                for rows in args.decode_rows or (args.rows, 256):
                    yield decode_case(args, vocab, rows, 0.0, None), vocab
                    yield decode_case(args, vocab, rows, 0.9, None), vocab
                    yield decode_case(args, vocab, rows, 0.9, 50), vocab
        if "rmsnorm" in args.kernels:
            yield rmsnorm_case(args), None
        if "rope" in args.kernels:
            yield rope_case(args, 128), None
            yield rope_case(args, 64), None

    for case, vocab in cases():
        for path in PATHS:
            if path != "fused" or fused:
                case.results[path] = measure(case.runs[path], args.device, repeat)
        report(case, vocab, args.device)


if __name__ == "__main__":
    main()
