"""Every family's logits against an independent reference built from transformers' own modules.

Our tiny checkpoint's weights are mapped into the matching transformers architecture (Llama for
LLaDA, Qwen2 for Dream, Qwen3 / Qwen3-MoE for SDAR, GLM-4-MoE for LLaDA2, whose router, shared
expert, dense first layers, QK-norm and partial rotary are the same computation). The reference
gets eager attention with an additive 4-D mask built here from the keep rules in models.md, and
explicit position ids, so neither our mask builder nor our SDPA call is reused.
"""

from __future__ import annotations

import torch
import transformers
from torch import Tensor

from tests.conftest import TINY_VOCAB

ATOL = 1e-4  # models.md section 7: correct fp32 implementations differ by up to ~2e-5


def batch_with_left_padding(seed: int = 0, length: int = 14, pad: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY_VOCAB - 3, (2, length), generator=gen)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[0, :pad] = False
    return ids, mask


def reference_keep(mask: Tensor, block_size: int | None) -> Tensor:
    """[B, 1, L, L] keep-mask: real keys only (block-causal on each row's own grid); every
    query also keeps itself so pad rows stay finite (they are not compared)."""
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    keep = mask[:, None, :].expand(-1, mask.shape[1], -1).clone()
    if block_size is not None:
        blk = pos // block_size
        keep &= blk[:, None, :] <= blk[:, :, None]
    keep |= torch.eye(mask.shape[1], dtype=torch.bool)
    return keep[:, None]


def reference_logits(hf_model: torch.nn.Module, ids: Tensor, mask: Tensor, block_size: int | None) -> Tensor:
    keep = reference_keep(mask, block_size)
    additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return hf_model(input_ids=ids, attention_mask=additive, position_ids=pos).logits


def hf_model(config_cls: type, state: dict[str, Tensor], **fields) -> torch.nn.Module:
    config = config_cls(**fields, attn_implementation="eager", tie_word_embeddings=False)
    arch = getattr(transformers, config_cls.__name__.replace("Config", "ForCausalLM"))
    model = arch(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    return model


def qwen_fields(cfg) -> dict:
    """The transformers config fields every Qwen-style family shares, from our config."""
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
    }  # fmt: skip


def fused_experts(state: dict[str, Tensor], prefix: str, n: int) -> dict[str, Tensor]:
    """Our per-expert linears as transformers' stacked ``gate_up_proj`` / ``down_proj``."""
    e = f"{prefix}.experts"
    gate_up = [torch.cat((state.pop(f"{e}.{i}.gate_proj.weight"), state.pop(f"{e}.{i}.up_proj.weight"))) for i in range(n)]
    down = [state.pop(f"{e}.{i}.down_proj.weight") for i in range(n)]
    return {f"{e}.gate_up_proj": torch.stack(gate_up), f"{e}.down_proj": torch.stack(down)}


def compare(family: str, ours: Tensor, ref: Tensor, where: Tensor) -> None:
    diff = (ours - ref)[where].abs().max().item()
    print(f"{family}: max |logit diff| vs transformers = {diff:.2e}")  # pytest -s shows the numbers docs/models.md quotes
    assert diff <= ATOL, f"{family}: max |logit diff| {diff:.2e} > {ATOL}"
    assert torch.equal(ours[where].argmax(-1), ref[where].argmax(-1))
    assert ref[where].abs().max() > 0.05  # the logits are not trivially tiny


def test_llada_matches_transformers_llama_with_a_bidirectional_mask(tiny_checkpoint) -> None:
    model = tiny_checkpoint("llada").load()
    cfg, sd = model.config, model.state_dict()
    names = {
        "attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
        "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
        "ff_out": "mlp.down_proj",
    }  # fmt: skip
    state = {
        "model.embed_tokens.weight": sd["model.transformer.wte.weight"],
        "model.norm.weight": sd["model.transformer.ln_f.weight"],
        "lm_head.weight": sd["model.transformer.ff_out.weight"],
    }
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            state[f"model.layers.{i}.{theirs}.weight"] = sd[f"model.transformer.blocks.{i}.{ours}.weight"]
    ref_model = hf_model(
        transformers.LlamaConfig, state, vocab_size=cfg.embedding_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )  # fmt: skip
    ids, mask = batch_with_left_padding()
    with torch.no_grad():
        ours = model.logits(model(ids, mask))
    compare("llada", ours, reference_logits(ref_model, ids, mask, None), mask)


def test_dream_matches_transformers_qwen2_shifted_once(tiny_checkpoint) -> None:
    model = tiny_checkpoint("dream").load()
    cfg = model.config
    ref_model = hf_model(transformers.Qwen2Config, model.state_dict(), **qwen_fields(cfg))
    ids, mask = batch_with_left_padding()
    raw = reference_logits(ref_model, ids, mask, None)
    # Dream's samplers realign the raw logits once: position i reads the output at i-1.
    shifted = torch.cat((raw[:, :1], raw[:, :-1]), dim=1)
    with torch.no_grad():
        ours = model.logits(model(ids, mask))
    source_is_real = torch.cat((mask[:, :1], mask[:, :-1]), dim=1) & mask
    compare("dream", ours, shifted, source_is_real)
    # Not shifted zero times: the unshifted reference is far outside the tolerance.
    assert (ours - raw)[source_is_real].abs().max() > 1000 * ATOL


def test_sdar_matches_transformers_qwen3_with_the_block_causal_mask(tiny_checkpoint) -> None:
    model = tiny_checkpoint("sdar").load()
    cfg = model.config
    ref_model = hf_model(transformers.Qwen3Config, model.state_dict(), **qwen_fields(cfg), head_dim=cfg.head_dim)
    ids, mask = batch_with_left_padding()
    with torch.no_grad():
        ours = model.logits(model(ids, mask))
    compare("sdar", ours, reference_logits(ref_model, ids, mask, model.facts.block_size), mask)


def test_sdar_moe_matches_transformers_qwen3_moe(tiny_checkpoint) -> None:
    model = tiny_checkpoint("sdar_moe").load()
    cfg = model.config
    state = dict(model.state_dict())
    for i in range(cfg.num_hidden_layers):
        state.update(fused_experts(state, f"model.layers.{i}.mlp", cfg.num_experts))
    ref_model = hf_model(
        transformers.Qwen3MoeConfig, state, **qwen_fields(cfg), head_dim=cfg.head_dim, num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
        norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=cfg.decoder_sparse_step, mlp_only_layers=cfg.mlp_only_layers,
    )  # fmt: skip
    ids, mask = batch_with_left_padding()
    with torch.no_grad():
        ours = model.logits(model(ids, mask))
    compare("sdar_moe", ours, reference_logits(ref_model, ids, mask, model.facts.block_size), mask)


def llada2_as_glm4_moe(model) -> torch.nn.Module:
    """LLaDA2 weights under GLM-4-MoE names: fused q/k/v split by heads, expert bias as the
    router's score-correction bias, experts stacked."""
    cfg = model.config
    state = {}
    for name, tensor in model.state_dict().items():
        name = name.replace("model.word_embeddings", "model.embed_tokens")
        name = name.replace("attention.query_layernorm", "self_attn.q_norm").replace("attention.key_layernorm", "self_attn.k_norm")
        name = name.replace("attention.dense", "self_attn.o_proj").replace("mlp.gate.expert_bias", "mlp.gate.e_score_correction_bias")
        if "attention.query_key_value" in name:
            d = cfg.head_dim
            q, k, v = tensor.split([cfg.num_attention_heads * d, cfg.num_key_value_heads * d, cfg.num_key_value_heads * d])
            for part, t in zip("qkv", (q, k, v)):
                state[name.replace("attention.query_key_value", f"self_attn.{part}_proj")] = t
        else:
            state[name] = tensor
    for i in range(cfg.first_k_dense_replace, cfg.num_hidden_layers):
        state.update(fused_experts(state, f"model.layers.{i}.mlp", cfg.num_experts))
    return hf_model(
        transformers.Glm4MoeConfig, state, **{**qwen_fields(cfg), "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta, "partial_rotary_factor": cfg.partial_rotary_factor}},
        head_dim=cfg.head_dim,
        use_qk_norm=True, attention_bias=False, n_routed_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.moe_intermediate_size, n_shared_experts=cfg.num_shared_experts, n_group=cfg.n_group,
        topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor, norm_topk_prob=True,
        first_k_dense_replace=cfg.first_k_dense_replace,
    )  # fmt: skip


def test_llada2_matches_transformers_glm4_moe(tiny_checkpoint) -> None:
    model = tiny_checkpoint("llada2_moe").load()
    ref_model = llada2_as_glm4_moe(model)
    ids, mask = batch_with_left_padding()
    with torch.no_grad():
        ours = model.logits(model(ids, mask))
    compare("llada2_moe", ours, reference_logits(ref_model, ids, mask, model.facts.block_size), mask)

