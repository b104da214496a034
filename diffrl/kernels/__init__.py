"""Hot paths, each an exact PyTorch implementation beside a fused Triton kernel; callers import
them from here only, and nothing else in the package imports triton.

Which one runs is one rule and one switch (:mod:`diffrl.kernels.dispatch`): Triton on CUDA tensors
when triton is installed, PyTorch otherwise; ``set_backend("torch" | "triton" | "auto")`` or the
``DIFFRL_KERNELS`` environment variable overrides it.
"""

from diffrl.kernels.decode import DecodeResult, decode_step
from diffrl.kernels.dispatch import get_backend, set_backend, use_backend
from diffrl.kernels.logprob import selected_logprobs
from diffrl.kernels.rmsnorm import rms_norm
from diffrl.kernels.rope import apply_rope

__all__ = [
    "DecodeResult",
    "apply_rope",
    "decode_step",
    "get_backend",
    "rms_norm",
    "selected_logprobs",
    "set_backend",
    "use_backend",
]
