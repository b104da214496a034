"""LLaDA2.0 / LLaDA2.1 mini (inclusionAI, ``llada2_moe``): Bailing-MoE-v2 blocks run block-causally.

Quirks kept from the published checkpoint: q/k/v are one fused ``query_key_value`` projection
(rows ordered [q heads | k heads | v heads]), QK-norm is ``query_layernorm``/``key_layernorm``,
RoPE covers only ``partial_rotary_factor`` of each head, the first ``first_k_dense_replace``
layers are dense, and the rest route with ``moe.GroupLimitedRouter`` plus a shared expert. The
config names neither the mask token nor a block size: the recipe supplies both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from diffrl.models.config import CheckpointError, require
from diffrl.models.decoder import DecoderConfig, DecoderLayer, DecoderLM
from diffrl.models.layers import KVCache, RMSNorm, SwiGLU, rotary_attention
from diffrl.models.moe import Experts, GroupLimitedRouter, SparseMoE


@dataclass(kw_only=True)
class LLaDA2MoeConfig(DecoderConfig):
    family_name = "LLaDA2-MoE"
    # The published code hard-codes sigmoid routing with an expert bias, RMSNorm, QK-norm and no
    # biases; a config asking for anything else describes a model this module would get wrong.
    supported = {
        "hidden_act": ("silu",),
        "tie_word_embeddings": (False,),
        "use_sliding_window": (False,),
        "rope_scaling": (None,),
        "use_qkv_bias": (False,),
        "use_bias": (False,),
        "use_qk_norm": (True,),
        "use_rmsnorm": (True,),
        "score_function": ("sigmoid",),
        "moe_router_enable_expert_bias": (True,),
        "norm_head": (False,),
        "norm_softmax": (False,),
        "using_split_qkv_in_self_attention": (False,),
    }

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    n_group: int
    topk_group: int
    num_shared_experts: int
    routed_scaling_factor: float
    first_k_dense_replace: int
    partial_rotary_factor: float

    @classmethod
    def extra_fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        name = cls.family_name
        fields = {
            "num_experts": require(raw, "num_experts", name),
            "num_experts_per_tok": require(raw, "num_experts_per_tok", name),
            "moe_intermediate_size": require(raw, "moe_intermediate_size", name),
            "n_group": require(raw, "n_group", name),
            "topk_group": require(raw, "topk_group", name),
            "num_shared_experts": raw.get("num_shared_experts") or 0,
            "routed_scaling_factor": float(raw.get("routed_scaling_factor", 1.0)),
            "first_k_dense_replace": int(raw.get("first_k_dense_replace", 0)),
            "partial_rotary_factor": float(raw.get("partial_rotary_factor", 1.0)),
        }
        per_group, rem = divmod(fields["num_experts"], fields["n_group"])
        if rem or per_group < 2:
            raise CheckpointError(
                f"config.json num_experts={fields['num_experts']} must split into n_group={fields['n_group']} "
                "equal groups of at least 2 experts (group scores sum each group's top 2)"
            )
        if fields["num_experts_per_tok"] > fields["topk_group"] * per_group:
            raise CheckpointError(
                f"config.json num_experts_per_tok={fields['num_experts_per_tok']} exceeds the experts in "
                f"topk_group={fields['topk_group']} groups ({fields['topk_group'] * per_group})"
            )
        return fields

    @property
    def rotary_dim(self) -> int:
        # transformers' default RoPE init: int(head_dim * partial_rotary_factor) channels.
        return int(self.head_dim * self.partial_rotary_factor)


class LLaDA2Attention(nn.Module):
    """``attention``: fused ``query_key_value``, per-head ``query_layernorm``/``key_layernorm``
    before (partial) RoPE, output projection ``dense``."""

    def __init__(self, cfg: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, cfg.head_dim
        self.split = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_key_value_heads)
        self.query_key_value = nn.Linear(cfg.hidden_size, sum(self.split) * cfg.head_dim, bias=False)
        self.query_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.key_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.dense = nn.Linear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None, cos: Tensor, sin: Tensor, cache: KVCache | None) -> Tensor:
        q, k, v = self.query_key_value(x).unflatten(-1, (-1, self.head_dim)).split(self.split, dim=2)
        q, k = self.query_layernorm(q), self.key_layernorm(k)
        return self.dense(rotary_attention(q, k, v, cos, sin, mask=mask, layer_idx=self.layer_idx, cache=cache))


class LLaDA2MoeModelLM(DecoderLM):
    family = "llada2_moe"
    model_types = ("llada2_moe",)
    config_class = LLaDA2MoeConfig
    embedding_name = "word_embeddings"
    attention_kind = "block_causal"
    lora_target_modules = r"model\.layers\.\d+\.(attention\.(query_key_value|dense)|mlp\.(shared_experts\.)?(gate|up|down)_proj)"

    def make_layer(self, config: LLaDA2MoeConfig, layer_idx: int) -> DecoderLayer:
        mlp: nn.Module
        if layer_idx < config.first_k_dense_replace:
            mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        else:
            shared = config.moe_intermediate_size * config.num_shared_experts
            mlp = SparseMoE(
                GroupLimitedRouter(
                    config.hidden_size,
                    config.num_experts,
                    config.num_experts_per_tok,
                    config.n_group,
                    config.topk_group,
                    config.routed_scaling_factor,
                ),
                Experts(config.num_experts, config.hidden_size, config.moe_intermediate_size),
                SwiGLU(config.hidden_size, shared) if shared else None,
            )
        return DecoderLayer(config, LLaDA2Attention(config, layer_idx), mlp, attention_name="attention")
