"""Every Triton kernel, specialised exactly as its wrapper launches it, compiles to an sm_90 cubin.

There is no GPU in CI: the interpreter tests check what the kernels compute, this checks that the
same code lowers to the GPU (Triton's compiler and the ptxas bundled with triton run on CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.triton_interpret import requires_triton

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compile_kernels.py"


@requires_triton
def test_every_kernel_compiles_for_h100(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile afresh, and keep out of the home folder
    out = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.splitlines()
    for kernel in ("_logprob_fwd_kernel", "_logprob_bwd_kernel", "_decode_kernel", "_rmsnorm_fwd_kernel", "_rmsnorm_bwd_kernel", "_rope_kernel"):
        assert any(kernel in line and "cubin" in line for line in lines), (kernel, out.stdout)
    assert sum("_decode_kernel" in line for line in lines) == 3  # argmax, Gumbel sampling, candidates
