"""Memory: meta-device builds allocate no weights; a sharded load never holds the model twice.

Both run in a fresh subprocess and read the kernel's resident-set counters (``VmRSS`` and its
peak ``VmHWM``, reset through ``/proc/self/clear_refs``), so pytest's own memory is not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffrl.models.tiny import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
MB = 2**20

PROBE = textwrap.dedent(
    """
    import gc, json, sys

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def reset_peak():
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status("VmRSS")
    """
)


def run_probe(body: str) -> dict:
    # A fixed mmap threshold makes glibc return large freed blocks to the kernel, so freed memory
    # is not silently reused and the counters see every allocation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE + textwrap.dedent(body)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_building_every_published_config_on_meta_allocates_no_weights(shared: Path) -> None:
    results = run_probe(
        f"""
        from pathlib import Path
        from diffrl.models import FactOverrides, build_model
        from diffrl.models.tiny import shrink_config

        facts = FactOverrides(block_size=4, mask_token_id=1, eos_token_id=2)
        folders = sorted(Path({str(shared / "hf")!r}).iterdir())
        for folder in folders:  # import every family and page in the code once
            build_model(shrink_config(json.loads((folder / "config.json").read_text()), 64), overrides=facts)
        results = {{}}
        for folder in folders:
            base = reset_peak()
            model = build_model(folder, overrides=facts)
            state = model.state_dict()
            results[folder.name] = {{
                "peak": status("VmHWM") - base,
                "modules": sum(1 for _ in model.modules()),
                "all_meta": all(t.is_meta for t in state.values()),
                "bf16_bytes": sum(t.numel() * 2 for t in state.values()),
            }}
            del model, state
        print(json.dumps(results))
        """
    )
    assert len(results) == len(list((shared / "hf").iterdir()))
    for name, r in results.items():
        assert r["all_meta"], name
        # Python objects only: a few KB per module (25k modules for SDAR-30B), against GBs of weights.
        bound = 8 * MB + 4096 * r["modules"]
        assert r["peak"] <= bound, f"{name}: RSS grew {r['peak'] / MB:.1f} MB building on meta (bound {bound / MB:.1f} MB)"
        assert r["bf16_bytes"] > 100 * bound


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """About 190 MB of fp32 weights in 13 shards of at most 16 MB."""
    return write_tiny_checkpoint(
        shared / "hf" / "LLaDA-8B-Instruct", tmp_path_factory.mktemp("sharded"), vocab_size=8192, max_shard_bytes=16 * MB,
        d_model=512, n_heads=8, n_kv_heads=8, n_layers=12, mlp_hidden_size=1536,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sharded_load_never_holds_the_model_twice(sharded_checkpoint: Path, tiny_checkpoint, dtype: str) -> None:
    folder = sharded_checkpoint
    shard_bytes = max(p.stat().st_size for p in folder.glob("model-*.safetensors"))
    assert len(list(folder.glob("model-*.safetensors"))) >= 10
    r = run_probe(
        f"""
        import torch
        from diffrl.models import load_pretrained

        # Warm up on a small checkpoint of the same family: pages in the code, not the weights.
        load_pretrained({str(tiny_checkpoint("llada").folder)!r}, dtype={dtype!r})
        base = reset_peak()
        model = load_pretrained({str(folder)!r}, dtype={dtype!r})
        load_peak = status("VmHWM") - base
        touched = sum(p.float().sum().item() for p in model.parameters())  # page in every weight
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        print(json.dumps({{"load_peak": load_peak, "resident": status("VmRSS") - base, "params": params}}))
        """
    )
    # The loaded weights are really resident once touched (the counters see them)...
    assert r["resident"] >= 0.9 * r["params"]
    # ...and loading never needed more than the weights plus one shard in flight.
    bound = r["params"] + shard_bytes + 16 * MB
    assert r["load_peak"] <= bound, f"peak {r['load_peak'] / MB:.0f} MB > weights {r['params'] / MB:.0f} MB + one shard {shard_bytes / MB:.0f} MB"
    print(f"{dtype}: load peak {r['load_peak'] / MB:.0f} MB for {r['params'] / MB:.0f} MB of weights, shards <= {shard_bytes / MB:.0f} MB")
