"""Dream (Dream-org/Dream-v0-Instruct-7B): Qwen2.5 blocks with q/k/v biases, run bidirectionally.

Dream is initialised from an autoregressive model and keeps its shift: the raw output at position
i predicts token i+1. ``logit_shift = 1`` tells the base class to realign once, in
``DiffusionLM.align``; nothing here shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffrl.models.decoder import Attention, DecoderConfig, DecoderLayer, DecoderLM
from diffrl.models.layers import SwiGLU


@dataclass(kw_only=True)
class DreamConfig(DecoderConfig):
    family_name = "Dream"
    supported = {
        "hidden_act": ("silu",),
        "tie_word_embeddings": (False,),
        "use_sliding_window": (False,),
        "rope_scaling": (None,),
        "use_mrope": (False,),
    }


class DreamModel(DecoderLM):
    family = "dream"
    model_types = ("Dream",)
    config_class = DreamConfig
    logit_shift = 1
    attention_kind = "bidirectional"
    # The published tokenizer_config names a remote-code DreamTokenizer; it is a Qwen2 BPE tokenizer.
    tokenizer_class = "Qwen2Tokenizer"

    def make_layer(self, config: DreamConfig, layer_idx: int) -> DecoderLayer:
        attention = Attention(config, layer_idx, qkv_bias=True, qk_norm=False)
        return DecoderLayer(config, attention, SwiGLU(config.hidden_size, config.intermediate_size))
