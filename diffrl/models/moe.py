"""Mixture-of-experts layers shared by SDAR-MoE and LLaDA2: two routers, one batched dispatch.

Experts keep the published names (``experts.E.{gate,up,down}_proj``) as separate linears, so the
checkpoint loads as is and LoRA can target them by name. Dispatch sorts the (token, slot) pairs by
expert and runs each expert once on its contiguous slice: one matmul per expert, never a loop
over tokens. Every expert is called, on an empty slice if no token chose it, so each one gets a
gradient (zero when unused) on every rank and the autograd graph does not depend on the routing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffrl.models.layers import SwiGLU


@dataclass
class Routing:
    """Which experts each token uses and with what weights.

    ``indices``/``weights`` are [T, K]; the weights' dtype is the dtype the expert outputs are
    summed in. ``probs`` [T, E] is the router's distribution over experts (for the load statistics).
    """

    indices: Tensor
    weights: Tensor
    probs: Tensor


@dataclass
class RouterStats:
    """Load statistics of one MoE layer's last forward (detached, on the model's device).

    ``load[e]`` is the fraction of routed (token, slot) pairs that went to expert e; ``aux_loss``
    is the Switch-Transformer balance loss ``E * sum_e load[e] * mean_prob[e]`` (1 when balanced).
    Every token the layer saw counts, padding and masked positions included.
    """

    load: Tensor
    aux_loss: Tensor


class SoftmaxRouter(nn.Module):
    """Qwen3-MoE / SDAR-MoE gate: logits in the input dtype, softmax over all experts in fp32,
    top-k, renormalised to sum to one when ``norm_topk_prob``, weights cast to the input dtype."""

    def __init__(self, hidden: int, num_experts: int, top_k: int, norm_topk_prob: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob

    def forward(self, x: Tensor) -> Routing:
        probs = F.linear(x, self.weight).softmax(-1, dtype=torch.float32)
        top, indices = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            top = top / top.sum(-1, keepdim=True)
        return Routing(indices, top.to(x.dtype), probs)


class GroupLimitedRouter(nn.Module):
    """LLaDA2 / Bailing-MoE-v2 gate, all in fp32 (models.md section 4).

    Sigmoid scores; ``expert_bias`` (a persistent buffer kept in the file's dtype) shifts them for
    selection only. Experts are chosen within the ``topk_group`` groups whose two best biased
    scores sum highest; the weights are the unbiased scores of the chosen experts, renormalised
    and multiplied by ``routed_scaling_factor``. Expert outputs are then summed in fp32.
    """

    def __init__(
        self, hidden: int, num_experts: int, top_k: int, n_group: int, topk_group: int, routed_scaling_factor: float
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        self.top_k, self.n_group, self.topk_group = top_k, n_group, topk_group
        self.routed_scaling_factor = routed_scaling_factor

    def forward(self, x: Tensor) -> Routing:
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        biased = scores + self.expert_bias.float()
        tokens, experts = biased.shape
        grouped = biased.view(tokens, self.n_group, experts // self.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        kept_groups = group_scores.topk(self.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept_groups, True)
        expert_mask = group_mask.repeat_interleave(experts // self.n_group, dim=1)
        indices = biased.masked_fill(~expert_mask, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        probs = scores / scores.sum(-1, keepdim=True)
        return Routing(indices, weights * self.routed_scaling_factor, probs)


def dispatch(x: Tensor, indices: Tensor, weights: Tensor, experts: list[Callable[[Tensor], Tensor]]) -> tuple[Tensor, Tensor]:
    """Weighted sum of each token's experts [T, H] (``indices``/``weights`` [T, k]), and the tokens
    per expert [E]."""
    tokens, k = indices.shape
    flat = indices.flatten()
    order = flat.argsort(stable=True)
    # A fixed-size count (unlike bincount) keeps the shape static for torch.compile.
    counts = torch.zeros(len(experts), dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))
    # One host sync per layer: the slice sizes.
    slices = x[order // k].split(counts.tolist())
    sorted_out = torch.cat([expert(chunk) for expert, chunk in zip(experts, slices)])
    out = torch.empty_like(sorted_out).index_copy(0, order, sorted_out).view(tokens, k, -1)
    return (out.to(weights.dtype) * weights[..., None]).sum(1).to(x.dtype), counts


@torch.library.custom_op("diffrl::moe_dispatch", mutates_args=())
def compiled_dispatch(
    x: Tensor, indices: Tensor, weights: Tensor, gate: list[Tensor], up: list[Tensor], down: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """:func:`dispatch` as one opaque op for compiled forwards: its host sync (the slice sizes) stays
    inside, and its outputs' shapes do not depend on the routing, so the graph does not break."""
    experts = [
        (lambda chunk, g=g, u=u, d=d: F.linear(F.silu(F.linear(chunk, g)) * F.linear(chunk, u), d)) for g, u, d in zip(gate, up, down)
    ]
    return dispatch(x, indices, weights, experts)


@compiled_dispatch.register_fake
def _(x: Tensor, indices: Tensor, weights: Tensor, gate: list[Tensor], up: list[Tensor], down: list[Tensor]) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), indices.new_empty(len(gate))


class Experts(nn.ModuleList):
    """Routed SwiGLU experts, dispatched by sorting (token, slot) pairs by expert."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__(SwiGLU(hidden, intermediate) for _ in range(num_experts))

    def forward(self, x: Tensor, routing: Routing) -> tuple[Tensor, Tensor]:
        """Weighted sum of each token's experts [T, H], and the tokens per expert [E]."""
        if torch.compiler.is_compiling() and not torch.is_grad_enabled():
            # Inference only (rollout.compile): the op has no backward, so a compiled training
            # forward keeps the plain dispatch (and its graph break).
            experts: list[SwiGLU] = list(self)  # type: ignore[arg-type]
            return compiled_dispatch(
                x, routing.indices, routing.weights, [e.gate_proj.weight for e in experts], [e.up_proj.weight for e in experts],
                [e.down_proj.weight for e in experts],
            )
        return dispatch(x, routing.indices, routing.weights, list(self))


class SparseMoE(nn.Module):
    """``mlp`` of an MoE layer: ``gate`` (router), ``experts`` and optional ``shared_experts``,
    whose output is added unweighted. Keeps the last forward's :class:`RouterStats`."""

    def __init__(self, gate: nn.Module, experts: Experts, shared_experts: SwiGLU | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.shared_experts = shared_experts
        self.last_stats: RouterStats | None = None

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        routing = self.gate(flat)
        out, counts = self.experts(flat, routing)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        with torch.no_grad():
            load = counts.float() / counts.sum().clamp_min(1)
            aux = len(self.experts) * (load * routing.probs.mean(0)).sum()
            self.last_stats = RouterStats(load=load, aux_loss=aux)
        return out.view(x.shape)
