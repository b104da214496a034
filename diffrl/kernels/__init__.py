"""Hot-path computations over the vocabulary, each an exact PyTorch implementation that a fused
kernel may replace; callers import them from here only."""

from diffrl.kernels.decode import DecodeResult, decode_step
from diffrl.kernels.logprob import selected_logprobs

__all__ = ["DecodeResult", "decode_step", "selected_logprobs"]
