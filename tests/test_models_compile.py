"""torch.compile captures every family's forward as one graph in inference: MoE layers dispatch
through one opaque op (``diffrl::moe_dispatch``) that keeps the per-expert slice sizes inside.

The ``aot_eager`` backend runs dynamo and AOTAutograd (the parts that must accept our code)
without inductor's C++ code generation, which takes minutes on two CPU cores.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from tests.conftest import TINY_VOCAB


FAMILIES = ("llada", "dream", "sdar", "sdar_moe", "llada2_moe")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_forward_equals_eager(tiny_checkpoint, family: str) -> None:
    torch._dynamo.reset()
    counters.clear()
    model = tiny_checkpoint(family).load()
    ids = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :3] = False
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        eager = model.logits(model(ids, mask))
        out = model.logits(compiled(ids, mask))
    assert (out - eager)[mask].abs().max() < 1e-5
    assert torch.equal(out[mask].argmax(-1), eager[mask].argmax(-1))
    assert not counters["graph_break"], dict(counters["graph_break"])
