"""MoE: the LLaDA2 router and layer against a step-by-step reference, dispatch, router statistics."""

from __future__ import annotations

import pytest
import torch

from diffrl.models.moe import Experts, GroupLimitedRouter, SoftmaxRouter, SparseMoE
from diffrl.models.layers import SwiGLU


def reference_group_limited_route(x, weight, bias, *, n_group, topk_group, top_k, scale):
    """models.md section 4, one token at a time, in float64 and plain Python lists."""
    chosen_all, weights_all = [], []
    n_experts = weight.shape[0]
    per_group = n_experts // n_group
    for token in x.double():
        s = [torch.sigmoid(token @ weight[e].double()).item() for e in range(n_experts)]
        r = [s[e] + bias[e].item() for e in range(n_experts)]
        group_score = [sum(sorted(r[g * per_group : (g + 1) * per_group], reverse=True)[:2]) for g in range(n_group)]
        groups = sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group]
        candidates = [e for g in groups for e in range(g * per_group, (g + 1) * per_group)]
        chosen = sorted(candidates, key=lambda e: -r[e])[:top_k]
        total = sum(s[e] for e in chosen)
        chosen_all.append(chosen)
        weights_all.append({e: s[e] / total * scale for e in chosen})
    return chosen_all, weights_all


def make_router(seed: int = 0) -> tuple[GroupLimitedRouter, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    router = GroupLimitedRouter(hidden=16, num_experts=16, top_k=4, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    with torch.no_grad():
        router.weight.copy_(torch.randn(16, 16, generator=gen) * 0.3)
        router.expert_bias.copy_(torch.randn(16, generator=gen) * 0.2)
    return router, torch.randn(40, 16, generator=gen)


def test_group_limited_router_matches_the_step_by_step_reference() -> None:
    router, x = make_router()
    routing = router(x)
    ref_chosen, ref_weights = reference_group_limited_route(
        x, router.weight, router.expert_bias, n_group=4, topk_group=2, top_k=4, scale=2.5
    )
    for t in range(x.shape[0]):
        ours = routing.indices[t].tolist()
        assert sorted(ours) == sorted(ref_chosen[t])
        for e, w in zip(ours, routing.weights[t].tolist()):
            assert w == pytest.approx(ref_weights[t][e], abs=1e-6)
    assert routing.weights.dtype == torch.float32
    # The bias changes the selection for these inputs, so the test above checks its use.
    unbiased, _ = reference_group_limited_route(x, router.weight, torch.zeros(16), n_group=4, topk_group=2, top_k=4, scale=2.5)
    assert sum(sorted(a) != sorted(b) for a, b in zip(unbiased, ref_chosen)) >= 5


def test_group_limited_router_keeps_within_the_best_groups() -> None:
    router, x = make_router(seed=3)
    groups = router(x).indices // 4  # 4 experts per group
    assert all(len(set(row.tolist())) <= 2 for row in groups)


def test_bf16_router_math_stays_fp32_with_a_fp32_bias() -> None:
    router, x = make_router()
    router.weight.data = router.weight.data.bfloat16()  # parameters in bf16, expert_bias kept fp32 as LLaDA2.1 ships it
    routing = router(x.bfloat16())
    assert routing.weights.dtype == torch.float32 and router.expert_bias.dtype == torch.float32
    reference = make_router()[0]
    reference.weight.data = router.weight.data.float()
    ref = reference(x.bfloat16().float())
    assert torch.equal(routing.indices, ref.indices)


def test_moe_layer_matches_a_per_token_loop() -> None:
    torch.manual_seed(0)
    router, x = make_router()
    moe = SparseMoE(router, Experts(16, 16, 8), SwiGLU(16, 8))
    for p in moe.experts.parameters():
        p.data.normal_(0, 0.3)
    with torch.no_grad():
        out = moe(x[None])[0]
        chosen, weights = reference_group_limited_route(x, router.weight, router.expert_bias, n_group=4, topk_group=2, top_k=4, scale=2.5)
        for t in range(x.shape[0]):
            expected = moe.shared_experts(x[t]) + sum(weights[t][e] * moe.experts[e](x[t]) for e in chosen[t])
            assert torch.allclose(out[t], expected.float(), atol=1e-5)


def test_softmax_router_renormalises_only_when_asked() -> None:
    torch.manual_seed(0)
    x = torch.randn(10, 8)
    for norm in (True, False):
        router = SoftmaxRouter(8, num_experts=6, top_k=2, norm_topk_prob=norm)
        router.weight.data.normal_()
        routing = router(x)
        probs = torch.softmax(x @ router.weight.T, -1)
        top = probs.topk(2, -1)
        assert torch.equal(routing.indices, top.indices)
        expected = top.values / top.values.sum(-1, keepdim=True) if norm else top.values
        assert torch.allclose(routing.weights, expected, atol=1e-6)


def test_every_expert_gets_a_gradient_even_when_unused() -> None:
    torch.manual_seed(0)
    router = SoftmaxRouter(8, num_experts=6, top_k=1, norm_topk_prob=False)
    router.weight.data.normal_()
    moe = SparseMoE(router, Experts(6, 8, 4))
    x = torch.randn(1, 3, 8)  # 3 tokens, top-1: at most 3 of 6 experts are used
    moe(x).sum().backward()
    used = set(router(x[0]).indices.flatten().tolist())
    assert len(used) < 6
    for e, expert in enumerate(moe.experts):
        grad = expert.down_proj.weight.grad
        assert grad is not None
        assert (grad.abs().sum() > 0) == (e in used)


def test_router_stats_after_a_forward(tiny_checkpoint) -> None:
    model = tiny_checkpoint("llada2_moe").load()
    assert model.router_stats() == {}
    ids = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        model(ids)
    load = model.expert_load()
    assert load.shape == (model.config.num_hidden_layers - model.config.first_k_dense_replace, model.config.num_experts)
    assert torch.allclose(load.sum(1), torch.ones(load.shape[0]))
    stats = model.router_stats()
    assert set(stats) == {"moe/aux_loss", "moe/max_load", "moe/unused_experts"}
    assert stats["moe/max_load"] == pytest.approx((load.amax(1) * load.shape[1]).mean().item())
    assert stats["moe/aux_loss"] > 0


def test_dense_models_report_no_router_stats(tiny_checkpoint) -> None:
    model = tiny_checkpoint("sdar").load()
    with torch.no_grad():
        model(torch.randint(0, 500, (1, 8)))
    assert model.router_stats() == {} and model.expert_load() is None
