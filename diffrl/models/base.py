"""The one model interface the rest of diffrl uses, whatever the family.

A family module subclasses :class:`DiffusionLM`, names its parameters exactly as the published
checkpoint does, and implements ``_hidden``. Everything a sampler, estimator or trainer needs to
know about a family (mask id, stop ids, logit shift, attention kind, block size) is in
:class:`ModelFacts`, read from the checkpoint's config and tokenizer files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffrl.errors import DiffrlConfigError
from diffrl.models.layers import KVCache, RMSNorm
from diffrl.models.masks import bidirectional_mask, block_causal_mask, positions_from_mask
from diffrl.models.moe import SparseMoE

AttentionKind = Literal["bidirectional", "block_causal"]


@dataclass(frozen=True)
class ModelFacts:
    """What the rest of the package may know about a loaded model."""

    family: str
    vocab_size: int
    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    stop_token_ids: tuple[int, ...]
    logit_shift: int
    attention: AttentionKind
    block_size: int | None

    def __post_init__(self) -> None:
        for name in ("mask_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise DiffrlConfigError(f"model.{name}={value} is outside the vocabulary [0, {self.vocab_size}); fix the config or recipe")
        if self.mask_token_id == self.pad_token_id:
            raise DiffrlConfigError(f"model.pad_token_id equals model.mask_token_id ({self.mask_token_id}); padding would read as masks")
        if self.attention == "block_causal" and not self.block_size:
            raise DiffrlConfigError("a block-causal model needs model.block_size (set it in the model recipe)")


class DiffusionLM(nn.Module):
    """Base class of every family: masks, positions, logit alignment and checkpointing in one place."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # peft ``target_modules`` regex (full match on module names) for LoRA on this family.
    lora_target_modules: ClassVar[str]
    # transformers tokenizer class to use when tokenizer_config.json names a remote-code class.
    tokenizer_class: ClassVar[str | None] = None

    def __init__(self, config: Any, facts: ModelFacts) -> None:
        super().__init__()
        self.config = config
        self.facts = facts
        self.gradient_checkpointing = False

    # --- what each family provides -----------------------------------------------------------
    def _hidden(self, input_ids: Tensor, mask: Tensor | None, positions: Tensor, cache: KVCache | None) -> Tensor:
        """Final-normed hidden states [B, L, H], raw (not yet aligned for a logit shift)."""
        raise NotImplementedError

    @property
    def lm_head(self) -> nn.Linear:
        """The output projection (its name differs per family)."""
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, for per-block sharding and activation checkpointing."""
        raise NotImplementedError

    # --- the shared interface -----------------------------------------------------------------
    def build_mask(self, key_mask: Tensor, q_len: int, q_index: Tensor | None = None) -> Tensor:
        """The family's 4-D keep-mask from a 2-D key padding mask (1 = real token)."""
        if self.facts.attention == "block_causal":
            assert self.facts.block_size is not None
            return block_causal_mask(key_mask, q_len, self.facts.block_size, q_index)
        return bidirectional_mask(key_mask, q_len, q_index)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Hidden states [B, L, H] aligned so that ``hidden[:, i]`` predicts the token at ``i``.

        ``attention_mask`` is None (no padding; block-causal families still get their block mask),
        a 2-D key padding mask [B, Lk] whose last ``L`` columns are the queries, or a 4-D bool
        keep-mask [B, 1, L, Lk] used as is. Dream-style logit shifts are undone here and nowhere
        else; a caller that serves a slice of the sequence asks for ``facts.logit_shift`` extra
        positions on the left.
        """
        b, length = input_ids.shape
        mask4d: Tensor | None
        if attention_mask is None:
            key_mask = torch.ones(b, length, dtype=torch.bool, device=input_ids.device)
            mask4d = self.build_mask(key_mask, length) if self.facts.attention == "block_causal" else None
            default_pos = positions_from_mask(key_mask)
        elif attention_mask.dim() == 2:
            mask4d = self.build_mask(attention_mask, length)
            default_pos = positions_from_mask(attention_mask)[:, -length:]
        elif attention_mask.dim() == 4:
            mask4d = attention_mask
            default_pos = None
        else:
            raise ValueError(f"attention_mask must be 2-D [B, L] or 4-D [B, 1, Lq, Lk], got shape {tuple(attention_mask.shape)}")
        if position_ids is None:
            if default_pos is None:
                raise ValueError("a 4-D attention_mask needs explicit position_ids")
            position_ids = default_pos
        hidden = self._hidden(input_ids, mask4d, position_ids, cache)
        return self.align(hidden)

    def align(self, hidden: Tensor) -> Tensor:
        """Undo the family's logit shift: with shift 1, the prediction for i comes from output i-1."""
        if self.facts.logit_shift == 0:
            return hidden
        return torch.cat((hidden[:, :1], hidden[:, :-1]), dim=1)

    def logits(self, hidden: Tensor) -> Tensor:
        """Full-vocabulary logits for the given hidden states (callers pass only the rows they need)."""
        return self.lm_head(hidden)

    def run_block(self, block: nn.Module, *args: Any) -> Tensor:
        """Call a block, through activation checkpointing when enabled and training."""
        if self.gradient_checkpointing and self.training:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random initialisation for tiny test and demo checkpoints: norms to one, matrices (linear,
        embedding and router weights) normal(0, std), biases and buffers (expert biases) to zero."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, RMSNorm):
                    module.weight.fill_(1.0)
                    continue
                for param in module.parameters(recurse=False):
                    if param.dim() >= 2:
                        param.normal_(0.0, std, generator=generator)
                    else:
                        param.zero_()
                for buffer in module.buffers(recurse=False):
                    buffer.zero_()

    def router_stats(self) -> dict[str, float]:
        """Expert-load metrics of the last forward, averaged over MoE layers ({} for dense models).

        ``moe/aux_loss``: Switch balance loss (1 = balanced); ``moe/max_load``: the busiest
        expert's share of routed tokens times the number of experts (1 = balanced);
        ``moe/unused_experts``: fraction of experts no token chose.
        """
        load = self.expert_load()
        if load is None:
            return {}
        aux = torch.stack([m.last_stats.aux_loss for m in self._moe_layers()])
        return {
            "moe/aux_loss": aux.mean().item(),
            "moe/max_load": (load.amax(1) * load.shape[1]).mean().item(),
            "moe/unused_experts": (load == 0).float().mean().item(),
        }

    def expert_load(self) -> Tensor | None:
        """Per-layer expert load [MoE layers, experts] of the last forward (None for dense models)."""
        layers = self._moe_layers()
        return torch.stack([m.last_stats.load for m in layers]) if layers else None

    def _moe_layers(self) -> list[SparseMoE]:
        return [m for m in self.modules() if isinstance(m, SparseMoE) and m.last_stats is not None]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
