"""SDAR (JetAstra/SDAR-*-Chat): Qwen3 blocks (QK-norm, head_dim from config) with block-causal
attention; ``sdar_moe`` (SDAR-30B-A3B) swaps the MLP for Qwen3-MoE experts.

Block-causal: a token sees its own block and earlier blocks, on a grid that starts at each row's
first real token (``masks.block_causal_mask``). The dense configs carry ``block_size``; the MoE
config does not, so its recipe sets ``model.block_size``. No logit shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffrl.models.config import require
from diffrl.models.decoder import Attention, DecoderConfig, DecoderLayer, DecoderLM
from diffrl.models.layers import SwiGLU
from diffrl.models.moe import Experts, SoftmaxRouter, SparseMoE

_SUPPORTED = {
    "hidden_act": ("silu",),
    "tie_word_embeddings": (False,),
    "use_sliding_window": (False,),
    "rope_scaling": (None,),
    "attention_bias": (False,),
}


@dataclass(kw_only=True)
class SDARConfig(DecoderConfig):
    family_name = "SDAR"
    supported = _SUPPORTED


@dataclass(kw_only=True)
class SDARMoeConfig(DecoderConfig):
    family_name = "SDAR-MoE"
    supported = _SUPPORTED

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    norm_topk_prob: bool
    decoder_sparse_step: int
    mlp_only_layers: list[int] = field(default_factory=list)

    @classmethod
    def extra_fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {
            "num_experts": require(raw, "num_experts", cls.family_name),
            "num_experts_per_tok": require(raw, "num_experts_per_tok", cls.family_name),
            "moe_intermediate_size": require(raw, "moe_intermediate_size", cls.family_name),
            "norm_topk_prob": bool(raw.get("norm_topk_prob", False)),
            "decoder_sparse_step": int(raw.get("decoder_sparse_step", 1)),
            "mlp_only_layers": list(raw.get("mlp_only_layers") or []),
        }

    def is_sparse(self, layer_idx: int) -> bool:
        """Qwen3-MoE's rule for which layers route to experts."""
        return (
            layer_idx not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )


class SDARForCausalLM(DecoderLM):
    family = "sdar"
    model_types = ("sdar",)
    config_class = SDARConfig
    attention_kind = "block_causal"

    def make_layer(self, config: SDARConfig, layer_idx: int) -> DecoderLayer:
        attention = Attention(config, layer_idx, qkv_bias=False, qk_norm=True)
        return DecoderLayer(config, attention, SwiGLU(config.hidden_size, config.intermediate_size))


class SDARMoeForCausalLM(SDARForCausalLM):
    family = "sdar_moe"
    model_types = ("sdar_moe",)
    config_class = SDARMoeConfig

    def make_layer(self, config: SDARMoeConfig, layer_idx: int) -> DecoderLayer:
        if not config.is_sparse(layer_idx):
            return super().make_layer(config, layer_idx)
        attention = Attention(config, layer_idx, qkv_bias=False, qk_norm=True)
        mlp = SparseMoE(
            SoftmaxRouter(config.hidden_size, config.num_experts, config.num_experts_per_tok, config.norm_topk_prob),
            Experts(config.num_experts, config.hidden_size, config.moe_intermediate_size),
        )
        return DecoderLayer(config, attention, mlp)
