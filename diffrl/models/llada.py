"""LLaDA (GSAI-ML/LLaDA-8B-Instruct): bidirectional Llama-style blocks under OLMo parameter names.

Quirks kept from the published checkpoint: ``transformer.ff_out`` is the LM head while
``blocks.N.ff_out`` is the MLP down projection, and ``ff_proj`` is the SwiGLU gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from diffrl.models.base import DiffusionLM, ModelFacts
from diffrl.models.config import CheckpointError, FactOverrides, FolderFiles, build_facts, check_supported, require
from diffrl.models.layers import KVCache, RMSNorm, rope_cos_sin, rotary_attention

_SUPPORTED = {
    "block_type": ("llama",),
    "activation_type": ("silu",),
    "layer_norm_type": ("rms",),
    "alibi": (False,),
    "rope": (True,),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "attention_layer_norm": (False,),
    "weight_tying": (False,),
    "scale_logits": (False,),
    "input_emb_norm": (False,),
    "block_group_size": (1,),
    "multi_query_attention": (None, False),
}


@dataclass
class LLaDAConfig:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    embedding_size: int
    rope_theta: float
    rms_norm_eps: float
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LLaDAConfig":
        check_supported(raw, _SUPPORTED, "LLaDA")
        d_model = require(raw, "d_model", "LLaDA")
        n_heads = require(raw, "n_heads", "LLaDA")
        if d_model % n_heads:
            raise CheckpointError(f"config.json d_model={d_model} is not divisible by n_heads={n_heads}")
        mlp = raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * d_model
        vocab = require(raw, "vocab_size", "LLaDA")
        return cls(
            d_model=d_model,
            n_layers=require(raw, "n_layers", "LLaDA"),
            n_heads=n_heads,
            n_kv_heads=raw.get("n_kv_heads") or n_heads,
            mlp_hidden_size=mlp,
            embedding_size=raw.get("embedding_size") or vocab,
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            raw=raw,
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class LLaDABlock(nn.Module):
    def __init__(self, cfg: LLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = cfg.head_dim
        d, kv = cfg.d_model, cfg.n_kv_heads * cfg.head_dim
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=False)

    def forward(self, h: Tensor, mask: Tensor | None, cos: Tensor, sin: Tensor, cache: KVCache | None) -> Tensor:
        x = self.attn_norm(h)
        d = self.head_dim
        q, k, v = self.q_proj(x).unflatten(-1, (-1, d)), self.k_proj(x).unflatten(-1, (-1, d)), self.v_proj(x).unflatten(-1, (-1, d))
        h = h + self.attn_out(rotary_attention(q, k, v, cos, sin, mask=mask, layer_idx=self.layer_idx, cache=cache))
        x = self.ff_norm(h)
        return h + self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))


class LLaDAModelLM(DiffusionLM):
    family = "llada"
    model_types = ("llada",)
    # Block projections only: ``blocks.N.ff_out`` is the MLP down projection, while the LM head
    # ``transformer.ff_out`` shares the suffix and must stay out.
    lora_target_modules = r"model\.transformer\.blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"

    def __init__(self, config: LLaDAConfig, facts: ModelFacts) -> None:
        super().__init__(config, facts)
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.embedding_size, config.d_model),
                "blocks": nn.ModuleList(LLaDABlock(config, i) for i in range(config.n_layers)),
                "ln_f": RMSNorm(config.d_model, config.rms_norm_eps),
                "ff_out": nn.Linear(config.d_model, config.embedding_size, bias=False),
            }
        )

    @classmethod
    def read_config(cls, raw: dict[str, Any]) -> LLaDAConfig:
        return LLaDAConfig.from_dict(raw)

    @classmethod
    def read_facts(cls, config: LLaDAConfig, files: FolderFiles, overrides: FactOverrides) -> ModelFacts:
        return build_facts(
            files, overrides, family=cls.family, vocab_size=config.embedding_size, logit_shift=0, attention="bidirectional"
        )

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.transformer["ff_out"]

    def blocks(self) -> nn.ModuleList:
        return self.model.transformer["blocks"]

    def _hidden(self, input_ids: Tensor, mask: Tensor | None, positions: Tensor, cache: KVCache | None) -> Tensor:
        t = self.model.transformer
        h = t["wte"](input_ids)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        for block in t["blocks"]:
            h = self.run_block(block, h, mask, cos, sin, cache)
        return t["ln_f"](h)
