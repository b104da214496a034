"""Compile every Triton kernel of diffrl.kernels for a GPU architecture, without a GPU.

    python scripts/compile_kernels.py                  # sm_90 (H100), bf16 launches
    python scripts/compile_kernels.py --arch 80 --dtype float32 bfloat16

The kernel wrappers are called on small CPU tensors with every kernel launch recorded instead of
run; each recorded launch (its argument types and compile-time constants, exactly as the wrapper
passes them) is then compiled by Triton down to a cubin for the chosen architecture with the
ptxas that ships with triton. This catches what the interpreter cannot: code that does not lower
to the GPU. It checks nothing about speed or results. Must run without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("compile_kernels.py compiles real kernels: unset TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from diffrl.kernels import decode_triton, logprob_triton, rmsnorm_triton, rope_triton  # noqa: E402
from diffrl.rng import counter_hash  # noqa: E402

TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8"}
Launch = tuple[triton.runtime.jit.JITFunction, tuple[Any, ...], dict[str, Any]]


class Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, kernel: triton.runtime.jit.JITFunction, launches: list[Launch]) -> None:
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def record_launches(dtype: torch.dtype) -> list[Launch]:
    """Every launch the wrappers make for ``dtype`` inputs: forward and backward, each decode mode."""
    launches: list[Launch] = []
    for module in (logprob_triton, decode_triton, rmsnorm_triton, rope_triton):
        for name, obj in vars(module).copy().items():
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                setattr(module, name, Recorder(obj, launches))
    hidden = torch.randn(20, 64, dtype=dtype, requires_grad=True)
    weight = torch.randn(300, 64, dtype=dtype, requires_grad=True)
    logp, ent = logprob_triton.selected_logprobs_triton(hidden, weight, torch.randint(0, 300, (20,)))
    (logp.sum() + ent.sum()).backward()
    keys = counter_hash(0, torch.arange(20))
    for temperature, top_k, top_p in ((0.0, None, None), (0.7, None, None), (0.7, 20, 0.9)):
        decode_triton.decode_step_triton(hidden.detach(), weight.detach(), temperature=temperature, noise_keys=keys, top_k=top_k, top_p=top_p, suppress_ids=(1,))
    x = torch.randn(4, 4096, dtype=dtype, requires_grad=True)
    rmsnorm_triton.rms_norm_triton(x, torch.ones(4096, requires_grad=True), 1e-5).sum().backward()
    q = torch.randn(2, 32, 5, 128, dtype=dtype, requires_grad=True)
    rope_triton.apply_rope_triton(q, torch.randn(2, 1, 5, 64), torch.randn(2, 1, 5, 64)).sum().backward()
    return launches


def source_of(kernel: triton.runtime.jit.JITFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[ASTSource, dict[str, Any]]:
    """The kernel specialised as the launch would specialise it, and its launch options."""
    bound = {**dict(zip(kernel.arg_names, args)), **kwargs}
    signature, constants = {}, {}
    for param in kernel.params:
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    return ASTSource(fn=kernel, signature=signature, constexprs=constants), options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 (H100), 80 (A100)")
    parser.add_argument("--dtype", nargs="+", default=["bfloat16"], choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    for dtype_name in args.dtype:
        for kernel, call_args, kwargs in record_launches(getattr(torch, dtype_name)):
            src, options = source_of(kernel, call_args, kwargs)
            start = time.perf_counter()
            compiled = triton.compile(src, target=target, options=options)
            constants = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            print(
                f"sm_{args.arch} {dtype_name:9} {kernel.__name__:22} cubin {len(compiled.asm['cubin']):>8} B  "
                f"shared {compiled.metadata.shared:>6} B  {time.perf_counter() - start:5.1f}s  {constants}"
            )


if __name__ == "__main__":
    main()
