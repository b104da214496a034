"""``rollout.compile``: the per-step model forward through ``torch.compile`` (inductor).

Every dimension is symbolic (``dynamic=True``), so the row count, the window width and the key
length of a step are sizes inside one graph, not guards that recompile it: a rollout compiles a
handful of graphs (cached and uncached forwards, each also for a single row, which dynamo always
specialises) and then none per step, block or batch size. The KV buffer is bound with tensor indices for a compiled forward
(``KVBuffer.bind(traced=True)``) for the same reason. The first forward of a rollout writes the
buffer from deduplicated prompts and runs eagerly.

Mixture-of-experts layers dispatch through one opaque op under compile (``diffrl::moe_dispatch``,
``models/moe.py``): the per-expert slice sizes are read on the host inside it, and its outputs'
shapes do not depend on the routing, so the layer loop stays one graph.

The decode step is not compiled: its PyTorch fallback already walks the vocabulary in fused
chunks, and on a GPU the Triton kernel replaces it. CUDA graphs are not used (they need fixed
shapes, that is rows padded to buckets and a static window; see docs/rollout.md).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from diffrl.models.base import DiffusionLM

# Every family's forward is DiffusionLM.forward, one code object whose compiled entries dynamo caps
# at 8 by default: a process that rolls out with two families (or uncached and cached, each with its
# one-row variants) would pass it and silently fall back to eager.
RECOMPILE_LIMIT = 64
# torch.compile's backend. The tests that check tracing (graph breaks, recompiles) on every family
# switch it to aot_eager, which traces the same graphs without inductor's C++ build.
BACKEND = "inductor"
# One compiled forward per model class and backend: the model is an argument, so nothing here
# keeps a model alive.
_COMPILED: dict[tuple[type, str], Callable[..., Tensor]] = {}


def compiled_forward(model: DiffusionLM) -> Callable[..., Tensor]:
    """``model.forward`` compiled with symbolic shapes; call it like the model."""
    # Imported here, not at module level: torch._dynamo imports triton, and importing diffrl must not
    # fix triton's mode before a caller chooses it (the kernel tests set TRITON_INTERPRET first).
    from torch._dynamo import config as dynamo_config
    from torch.fx.experimental import _config as fx_config

    key = (type(model), BACKEND)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(type(model).forward, dynamic=True, backend=BACKEND)
    fn = _COMPILED[key]

    def forward(*args: Any, **kwargs: Any) -> Tensor:
        # Duck sizing would tie sizes that happen to be equal at the first call (the forward's rows
        # and the cache's) and recompile when they part.
        with fx_config.patch(use_duck_shape=False), dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
            return fn(model, *args, **kwargs)

    return forward
