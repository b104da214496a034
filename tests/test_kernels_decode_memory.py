"""The decode step's PyTorch fallback at a published vocabulary size: its peak memory against a
naive full-softmax decode of the same rows, and the same tokens and scores.

Kept apart from ``test_kernels_decode.py``, whose tests all run Triton: this one needs no Triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HIDDEN, VOCAB = 64, 126464

PEAK_SCRIPT = textwrap.dedent(
    f"""
    import json, resource, sys, torch
    from diffrl.kernels import decode_step, use_backend
    from diffrl.kernels.decode import decode_step_reference
    path, rows, temperature = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    torch.manual_seed(0)
    hidden = torch.randn(rows, {HIDDEN})
    weight = torch.randn({VOCAB}, {HIDDEN}) * 0.1
    keys = torch.arange(rows, dtype=torch.int64) * 7919 + 11
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if path == "chunked":
        with use_backend("torch"):
            out = decode_step(hidden, weight, temperature=temperature, noise_keys=keys)
        token, prob, entropy = out.token, out.prob, out.entropy
    else:
        out = decode_step_reference(hidden, weight, temperature=temperature, noise_keys=keys)
        token, prob, entropy = out.token, out.prob, out.entropy
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"peak_bytes": (peak - before) * 1024, "token": token.tolist(),
                      "prob_sum": float(prob.sum()), "entropy_sum": float(entropy.sum())}}))
    """
)


def peak_rss(path: str, rows: int, temperature: float) -> dict:
    """Growth of a fresh process's peak resident memory while it decodes ``rows`` rows one way."""
    # A fixed mmap threshold gives every large tensor its own mapping, returned on free: glibc's
    # adaptive threshold would otherwise serve freed chunk-sized blocks from a heap that keeps a
    # varying share of them resident, which measures the allocator rather than the decode step.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    cmd = [sys.executable, "-c", PEAK_SCRIPT, path, str(rows), str(temperature)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# The fallback's peak is its three [rows, vocabulary chunk] scratch buffers whatever the rows, so
# the rows are chosen to make the naive path's [rows, V] tensors several times that. Temperature 1
# samples without reshaping the distribution, so the naive path stays a plain softmax.
@pytest.mark.parametrize(("rows", "temperature"), [(1024, 0.0), (1024, 1.0)])
def test_chunked_decode_peak_memory_is_under_a_quarter_of_naive(rows: int, temperature: float) -> None:
    """At V=126464 the naive path (the plain definition, ``decode_step_reference``) holds [rows, V]
    fp32 logits, log-probs and probabilities, 0.3-1.5 GB here; the fallback holds one vocabulary
    chunk of every row at a time. Both choose the same tokens with the same scores."""
    chunked, naive = peak_rss("chunked", rows, temperature), peak_rss("naive", rows, temperature)
    logits_bytes = rows * VOCAB * 4
    assert naive["peak_bytes"] >= 2 * logits_bytes, naive["peak_bytes"]  # the measurement sees the naive tensors
    assert chunked["peak_bytes"] < naive["peak_bytes"] / 4, (chunked["peak_bytes"], naive["peak_bytes"])
    assert chunked["token"] == naive["token"]
    for key in ("prob_sum", "entropy_sum"):
        assert abs(chunked[key] - naive[key]) < 1e-4 * abs(naive[key]), (key, chunked[key], naive[key])
