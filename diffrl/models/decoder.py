"""The Qwen-style decoder stack that Dream, SDAR, SDAR-MoE and LLaDA2 share.

``model.<embedding>``, ``model.layers.N.{input_layernorm, <attention>, post_attention_layernorm,
mlp}``, ``model.norm`` and an untied ``lm_head``: each family module only reads its config and
says how to build one layer. Field names follow the transformers configs these checkpoints ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from diffrl.models.base import AttentionKind, DiffusionLM, ModelFacts
from diffrl.models.config import CheckpointError, FactOverrides, FolderFiles, build_facts, check_supported, require
from diffrl.models.layers import KVCache, RMSNorm, rope_cos_sin, rotary_attention

# LoRA targets of the Qwen-named families: attention and dense MLP projections of every layer.
# Routed experts and routers are left out (see docs/models.md).
QWEN_LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@dataclass(kw_only=True)
class DecoderConfig:
    """The config.json fields every Qwen-style family shares; subclasses add their own."""

    family_name: ClassVar[str]
    # config.json fields whose other values select variants we do not implement.
    supported: ClassVar[dict[str, tuple[Any, ...]]]

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DecoderConfig:
        check_supported(raw, cls.supported, cls.family_name)
        return cls(**cls.common_fields(raw), **cls.extra_fields(raw), raw=raw)

    @classmethod
    def common_fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        hidden = require(raw, "hidden_size", cls.family_name)
        heads = require(raw, "num_attention_heads", cls.family_name)
        head_dim = raw.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise CheckpointError(f"config.json hidden_size={hidden} is not divisible by num_attention_heads={heads}; set head_dim")
            head_dim = hidden // heads
        kv = raw.get("num_key_value_heads") or heads
        if heads % kv:
            raise CheckpointError(f"config.json num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
        return {
            "hidden_size": hidden,
            "num_hidden_layers": require(raw, "num_hidden_layers", cls.family_name),
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "head_dim": head_dim,
            "intermediate_size": require(raw, "intermediate_size", cls.family_name),
            "vocab_size": require(raw, "vocab_size", cls.family_name),
            "rope_theta": float(raw.get("rope_theta", 10000.0)),
            "rms_norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
        }

    @classmethod
    def extra_fields(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {}

    @property
    def rotary_dim(self) -> int:
        return self.head_dim


class Attention(nn.Module):
    """``self_attn`` with the Qwen names: q/k/v/o_proj, q/k/v biases (Qwen2), per-head QK-norm
    ``q_norm``/``k_norm`` applied before RoPE (Qwen3)."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int, *, qkv_bias: bool, qk_norm: bool) -> None:
        super().__init__()
        self.layer_idx, self.head_dim, self.qk_norm = layer_idx, cfg.head_dim, qk_norm
        q_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=False)
        if qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None, cos: Tensor, sin: Tensor, cache: KVCache | None) -> Tensor:
        d = self.head_dim
        q, k, v = self.q_proj(x).unflatten(-1, (-1, d)), self.k_proj(x).unflatten(-1, (-1, d)), self.v_proj(x).unflatten(-1, (-1, d))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.o_proj(rotary_attention(q, k, v, cos, sin, mask=mask, layer_idx=self.layer_idx, cache=cache))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``h + attn(input_layernorm(h))``, then ``h + mlp(post_attention_layernorm(h))``.

    The attention module is registered under the family's name for it (``self_attn`` or LLaDA2's
    ``attention``) so parameter names match the checkpoint.
    """

    def __init__(self, cfg: DecoderConfig, attention: nn.Module, mlp: nn.Module, attention_name: str = "self_attn") -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention_name = attention_name
        self.add_module(attention_name, attention)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = mlp

    def forward(self, h: Tensor, mask: Tensor | None, cos: Tensor, sin: Tensor, cache: KVCache | None) -> Tensor:
        h = h + self._modules[self.attention_name](self.input_layernorm(h), mask, cos, sin, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderLM(DiffusionLM):
    """A Qwen-style family: subclasses set the class attributes and implement ``make_layer``."""

    config_class: ClassVar[type[DecoderConfig]]
    embedding_name: ClassVar[str] = "embed_tokens"
    logit_shift: ClassVar[int] = 0
    attention_kind: ClassVar[AttentionKind]
    lora_target_modules: ClassVar[str] = QWEN_LORA_TARGETS

    def __init__(self, config: DecoderConfig, facts: ModelFacts) -> None:
        super().__init__(config, facts)
        self.model = nn.Module()
        self.model.add_module(self.embedding_name, nn.Embedding(config.vocab_size, config.hidden_size))
        self.model.layers = nn.ModuleList(self.make_layer(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Registered through nn.Module.__setattr__, which bypasses the base class's property.
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def make_layer(self, config: Any, layer_idx: int) -> DecoderLayer:
        raise NotImplementedError

    @classmethod
    def read_config(cls, raw: dict[str, Any]) -> DecoderConfig:
        return cls.config_class.from_dict(raw)

    @classmethod
    def read_facts(cls, config: DecoderConfig, files: FolderFiles, overrides: FactOverrides) -> ModelFacts:
        return build_facts(
            files,
            overrides,
            family=cls.family,
            vocab_size=config.vocab_size,
            logit_shift=cls.logit_shift,
            attention=cls.attention_kind,
            block_size=config.raw.get("block_size"),
        )

    @property
    def lm_head(self) -> nn.Linear:
        return self._modules["lm_head"]  # type: ignore[return-value]

    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def _hidden(self, input_ids: Tensor, mask: Tensor | None, positions: Tensor, cache: KVCache | None) -> Tensor:
        h = self.model._modules[self.embedding_name](input_ids)
        cos, sin = rope_cos_sin(positions, self.config.rotary_dim, self.config.rope_theta)
        for layer in self.model.layers:
            h = self.run_block(layer, h, mask, cos, sin, cache)
        return self.model.norm(h)
