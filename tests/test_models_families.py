"""Every family: published names and sizes at full scale, facts, save/load, errors, masks, training hooks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffrl.models import CheckpointError, FactOverrides, build_model, read_facts, save_pretrained
from tests.conftest import TINY_SOURCES, TINY_VOCAB

FAMILIES = list(TINY_SOURCES)
BLOCK_CAUSAL = ["sdar", "sdar_moe", "llada2_moe"]
# What the LLaDA2 and SDAR-30B recipes add to configs that lack it (models.md sections 3-4).
RECIPE_FACTS = {
    "LLaDA2.0-mini": FactOverrides(mask_token_id=156895, eos_token_id=156892, block_size=32),
    "LLaDA2.1-mini": FactOverrides(mask_token_id=156895, eos_token_id=156892, block_size=32),
    "SDAR-30B-A3B-Chat": FactOverrides(block_size=4),
}
# Shapes documented in models.md (sections 1-4), checked on top of the byte total of each index.
DOCUMENTED_SHAPES = {
    "LLaDA-8B-Instruct": {
        "model.transformer.ff_out.weight": (126464, 4096),
        "model.transformer.blocks.31.ff_proj.weight": (12288, 4096),
        "model.transformer.blocks.0.ff_out.weight": (4096, 12288),
    },
    "Dream-v0-Instruct-7B": {
        "model.layers.0.self_attn.k_proj.weight": (512, 3584),
        "model.layers.0.self_attn.k_proj.bias": (512,),
        "model.layers.27.mlp.down_proj.weight": (3584, 18944),
    },
    "SDAR-4B-Chat": {
        "model.layers.0.self_attn.q_proj.weight": (4096, 2560),
        "model.layers.0.self_attn.k_proj.weight": (1024, 2560),
        "model.layers.35.self_attn.o_proj.weight": (2560, 4096),
        "model.layers.0.self_attn.q_norm.weight": (128,),
    },
    "SDAR-8B-Chat": {"model.layers.0.self_attn.q_proj.weight": (4096, 4096)},
    "SDAR-30B-A3B-Chat": {
        "model.layers.0.self_attn.q_proj.weight": (4096, 2048),
        "model.layers.0.self_attn.k_proj.weight": (512, 2048),
        "model.layers.47.mlp.gate.weight": (128, 2048),
        "model.layers.47.mlp.experts.127.gate_proj.weight": (768, 2048),
        "model.layers.0.mlp.experts.0.down_proj.weight": (2048, 768),
    },
    "LLaDA2.0-mini": {
        "model.layers.0.attention.query_key_value.weight": (3072, 2048),
        "model.layers.0.attention.query_layernorm.weight": (128,),
        "model.layers.0.mlp.gate_proj.weight": (5120, 2048),
        "model.layers.1.mlp.gate.weight": (256, 2048),
        "model.layers.19.mlp.gate.expert_bias": (256,),
        "model.layers.19.mlp.experts.255.down_proj.weight": (2048, 512),
        "model.layers.1.mlp.shared_experts.gate_proj.weight": (512, 2048),
    },
}
DOCUMENTED_SHAPES["LLaDA2.1-mini"] = DOCUMENTED_SHAPES["LLaDA2.0-mini"]
INDEXED = sorted(DOCUMENTED_SHAPES)


@pytest.mark.parametrize("name", INDEXED)
def test_full_size_meta_build_matches_the_published_index(shared: Path, name: str) -> None:
    folder = shared / "hf" / name
    model = build_model(folder, overrides=RECIPE_FACTS.get(name))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = model.state_dict()
    missing, extra = set(index["weight_map"]) - set(state), set(state) - set(index["weight_map"])
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    assert all(t.is_meta for t in state.values())
    for key, shape in DOCUMENTED_SHAPES[name].items():
        assert tuple(state[key].shape) == shape, key
    # bf16 everywhere; LLaDA2.1 ships expert_bias in fp32 (the only byte-count difference to 2.0).
    fp32 = (lambda k: k.endswith("expert_bias")) if name == "LLaDA2.1-mini" else (lambda k: False)
    nbytes = sum(t.numel() * (4 if fp32(k) else 2) for k, t in state.items())
    assert nbytes == index["metadata"]["total_size"]


def name_pattern(names) -> set[str]:
    return {re.sub(r"\.\d+\.", ".N.", n) for n in names}


def test_sdar_1p7b_has_the_dense_sdar_name_pattern(shared: Path) -> None:
    model = build_model(shared / "hf" / "SDAR-1dot7B-Chat")
    index = json.loads((shared / "hf" / "SDAR-4B-Chat" / "model.safetensors.index.json").read_text())
    assert name_pattern(model.state_dict()) == name_pattern(index["weight_map"])
    cfg = json.loads((shared / "hf" / "SDAR-1dot7B-Chat" / "config.json").read_text())
    assert len(model.blocks()) == cfg["num_hidden_layers"]
    assert model.state_dict()["model.layers.0.self_attn.q_proj.weight"].shape == (cfg["num_attention_heads"] * cfg["head_dim"], cfg["hidden_size"])


def test_facts_come_from_config_generation_config_and_tokenizer(shared: Path) -> None:
    hf = shared / "hf"
    read = lambda name, file: json.loads((hf / name / file).read_text())  # noqa: E731
    dream = read_facts(hf / "Dream-v0-Instruct-7B")
    assert (dream.logit_shift, dream.attention, dream.mask_token_id) == (1, "bidirectional", read("Dream-v0-Instruct-7B", "config.json")["mask_token_id"])
    sdar = read_facts(hf / "SDAR-1dot7B-Chat")
    cfg = read("SDAR-1dot7B-Chat", "config.json")
    assert (sdar.logit_shift, sdar.attention, sdar.block_size, sdar.mask_token_id) == (0, "block_causal", cfg["block_size"], cfg["mask_token_id"])
    assert set(read("SDAR-1dot7B-Chat", "generation_config.json")["eos_token_id"]) <= set(sdar.stop_token_ids)
    # SDAR-30B: no mask id in config.json; the tokenizer's mask_token names it.
    moe = read_facts(hf / "SDAR-30B-A3B-Chat", overrides=FactOverrides(block_size=4))
    assert moe.mask_token_id == read("SDAR-30B-A3B-Chat", "added_tokens.json")["<|MASK|>"]
    llada2 = read_facts(hf / "LLaDA2.1-mini", overrides=RECIPE_FACTS["LLaDA2.1-mini"])
    assert llada2.pad_token_id == read("LLaDA2.1-mini", "config.json")["pad_token_id"] and llada2.block_size == 32


def test_recipe_stop_tokens_extend_the_stop_list(shared: Path) -> None:
    facts = read_facts(shared / "hf" / "Dream-v0-Instruct-7B", overrides=FactOverrides(stop_tokens=["<|im_end|>"]))
    added = json.loads((shared / "hf" / "Dream-v0-Instruct-7B" / "added_tokens.json").read_text())
    assert facts.stop_token_ids == (facts.eos_token_id, added["<|im_end|>"])


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("SDAR-30B-A3B-Chat", FactOverrides(), "model.block_size"),
        ("LLaDA2.0-mini", FactOverrides(block_size=32), "model.mask_token_id"),
        ("LLaDA2.0-mini", FactOverrides(block_size=32, mask_token_id=156895), "model.eos_token_id"),
    ],
)
def test_missing_facts_name_the_recipe_field(shared: Path, name: str, overrides: FactOverrides, field: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(field)):
        read_facts(shared / "hf" / name, overrides=overrides)


def test_family_names_stay_inside_models() -> None:
    """Nothing outside diffrl/models/ branches on a family's name or hard-codes a family token id."""
    root = Path(__file__).resolve().parents[1] / "diffrl"
    families = {"llada", "dream", "sdar", "sdar_moe", "llada2_moe"}
    ids = ("126336", "126081", "126348", "151666", "151669", "151643", "156895", "156892")
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not [i for i in ids if i in text], path
        if "models" not in path.relative_to(root).parts:
            assert not re.search(r"family\s*(==|!=|in)", text), path
            assert not [f for f in families if re.search(rf"['\"]{f}['\"]", text)], path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shard_bytes", [10**9, 40_000])
def test_save_load_round_trip_is_bit_exact(tiny_checkpoint, tmp_path: Path, family: str, shard_bytes: int) -> None:
    ckpt = tiny_checkpoint(family)
    model = ckpt.load()
    out = save_pretrained(model, tmp_path / "rt", max_shard_bytes=shard_bytes)
    assert (out / "model.safetensors.index.json").exists() == (shard_bytes < 10**9)
    again = ckpt.load(folder=out)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert json.loads((out / "config.json").read_text()) == json.loads((ckpt.folder / "config.json").read_text())
    ids = torch.randint(0, TINY_VOCAB, (2, 10))
    with torch.no_grad():
        # Equal weights; outputs may differ in the last bits only because BLAS takes other paths
        # for tensors at other memory alignments (memory-mapped shards).
        assert torch.allclose(model(ids), again(ids), rtol=0, atol=1e-6)


def test_bf16_load_keeps_the_fp32_expert_bias_of_the_file(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint("llada2_moe")
    model = ckpt.load(dtype=torch.bfloat16)
    assert model.model.layers[1].mlp.gate.expert_bias.dtype == torch.float32
    assert model.model.layers[1].mlp.gate.weight.dtype == torch.bfloat16
    out = save_pretrained(model, tmp_path / "bf16")
    with safe_open(out / "model.safetensors", "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {d for k, d in dtypes.items() if k.endswith("expert_bias")} == {"F32"}
    assert {d for k, d in dtypes.items() if not k.endswith("expert_bias")} == {"BF16"}


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_and_unexpected_tensors_are_named(tiny_checkpoint, tmp_path: Path, family: str) -> None:
    ckpt = tiny_checkpoint(family)
    bad = copy_folder(ckpt.folder, tmp_path / "bad")
    weights = load_file(bad / "model.safetensors")
    victim = sorted(k for k in weights if ".1." in k)[-1]
    weights.pop(victim)
    weights["model.extra.weight"] = torch.zeros(2)
    save_file(weights, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(victim)) as err:
        ckpt.load(folder=bad)
    assert "model.extra.weight" in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_shard_is_named(tiny_checkpoint, tmp_path: Path, family: str) -> None:
    ckpt = tiny_checkpoint(family)
    out = save_pretrained(ckpt.load(), tmp_path / "sharded", max_shard_bytes=40_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        ckpt.load(folder=out)


UNSUPPORTED = {
    "llada": ("alibi", True),
    "dream": ("use_sliding_window", True),
    "sdar": ("attention_bias", True),
    "sdar_moe": ("rope_scaling", {"type": "yarn", "factor": 4.0}),
    "llada2_moe": ("score_function", "softmax"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_unsupported_config_field_is_named(tiny_checkpoint, tmp_path: Path, family: str) -> None:
    ckpt = tiny_checkpoint(family)
    bad = copy_folder(ckpt.folder, tmp_path / "unsupported")
    key, value = UNSUPPORTED[family]
    cfg = json.loads((bad / "config.json").read_text())
    cfg[key] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"'{key}'"):
        ckpt.load(folder=bad)


def test_llada2_rejects_expert_groups_it_cannot_route(tiny_checkpoint, tmp_path: Path) -> None:
    bad = copy_folder(tiny_checkpoint("llada2_moe").folder, tmp_path / "groups")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_group"] = 16  # groups of one expert: the top-2 group score does not exist
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="n_group=16"):
        tiny_checkpoint("llada2_moe").load(folder=bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_does_not_change_real_token_logits(tiny_checkpoint, family: str) -> None:
    model = tiny_checkpoint(family).load()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TINY_VOCAB - 3, (1, 11), generator=gen)
    pad = 5  # not a multiple of the block size: block grids must follow each row's first real token
    padded = torch.cat((torch.full((1, pad), model.facts.pad_token_id), ids), dim=1)
    mask = torch.cat((torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 11, dtype=torch.bool)), dim=1)
    with torch.no_grad():
        alone = model.logits(model(ids))
        out = model.logits(model(padded, mask))[:, pad:]
        leaky = model.logits(model(padded))[:, pad:]
    # A shifted family's first real position reads a pad's output, in the reference samplers too.
    first = model.facts.logit_shift
    assert (out - alone)[:, first:].abs().max() < 1e-4
    assert torch.equal(out[:, first:].argmax(-1), alone[:, first:].argmax(-1))
    assert (leaky - alone)[:, first:].abs().max() > 1e-2  # the mask is what makes the difference


@pytest.mark.parametrize("family", BLOCK_CAUSAL)
def test_block_causal_attention_sees_own_and_earlier_blocks_only(tiny_checkpoint, family: str) -> None:
    model = tiny_checkpoint(family).load()
    b = model.facts.block_size
    ids = torch.randint(0, TINY_VOCAB - 3, (1, 3 * b), generator=torch.Generator().manual_seed(0))

    def hidden_after_changing(pos: int) -> torch.Tensor:
        changed = ids.clone()
        changed[0, pos] = (changed[0, pos] + 7) % (TINY_VOCAB - 3)
        with torch.no_grad():
            return model(changed)[0]

    with torch.no_grad():
        base = model(ids)[0]
    later = hidden_after_changing(2 * b + 1)  # a token of the last block
    assert (later[: 2 * b] - base[: 2 * b]).abs().max() < 1e-6
    earlier = hidden_after_changing(1)  # a token of the first block
    assert (earlier[b:] - base[b:]).abs().amax(-1).min() > 1e-4
    inside = hidden_after_changing(b + b - 1)  # the last token of the middle block
    assert (inside[b] - base[b]).abs().max() > 1e-4  # bidirectional within the block


def test_bidirectional_families_see_the_future(tiny_checkpoint) -> None:
    for family in ("llada", "dream"):
        model = tiny_checkpoint(family).load()
        ids = torch.randint(0, TINY_VOCAB - 3, (1, 8), generator=torch.Generator().manual_seed(0))
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % (TINY_VOCAB - 3)
        with torch.no_grad():
            assert (model(ids)[0, 2] - model(changed)[0, 2]).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(tiny_checkpoint, family: str) -> None:
    model = tiny_checkpoint(family).load().train()
    ids = torch.randint(0, TINY_VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        model.logits(model(ids)).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == {n for n, _ in model.named_parameters()}
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


EXPECTED_LORA = {
    "llada": {"q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"},
    "dream": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "sdar": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "sdar_moe": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
    "llada2_moe": {
        "attention.query_key_value", "attention.dense", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        "mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj", "mlp.shared_experts.down_proj",
    },
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_wrap_block_projections_and_never_the_head(tiny_checkpoint, family: str) -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny_checkpoint(family).load()
    ids = torch.randint(0, TINY_VOCAB, (1, 8))
    with torch.no_grad():
        before = model.logits(model(ids))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=type(model).lora_target_modules, init_lora_weights=False))
    wrapped = {n.split("base_model.model.")[1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.count(".") > 2}
    suffixes = {re.sub(r"^model\.(transformer\.blocks|layers)\.\d+\.", "", n) for n in wrapped}
    assert suffixes == EXPECTED_LORA[family]
    assert not [n for n in wrapped if "experts." in n and "shared_experts" not in n]
    assert not hasattr(model.lm_head, "lora_A")
    with torch.no_grad():
        after = model.logits(model(ids))
        assert (after - before).abs().max() > 1e-4  # the adapters are on the forward path
        with peft_model.disable_adapter():
            assert torch.allclose(model.logits(model(ids)), before, atol=1e-6)


# model recipe -> (its path variable, the shared folder with that model's files)
RECIPES = {
    "llada_8b_instruct": ("LLADA_8B_INSTRUCT", "LLaDA-8B-Instruct"),
    "dream_v0_instruct_7b": ("DREAM_V0_INSTRUCT_7B", "Dream-v0-Instruct-7B"),
    "sdar_1p7b_chat": ("SDAR_1P7B_CHAT", "SDAR-1dot7B-Chat"),
    "sdar_4b_chat": ("SDAR_4B_CHAT", "SDAR-4B-Chat"),
    "sdar_8b_chat": ("SDAR_8B_CHAT", "SDAR-8B-Chat"),
    "sdar_30b_a3b_chat": ("SDAR_30B_A3B_CHAT", "SDAR-30B-A3B-Chat"),
    "llada2_0_mini": ("LLADA2_0_MINI", "LLaDA2.0-mini"),
    "llada2_1_mini": ("LLADA2_1_MINI", "LLaDA2.1-mini"),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_model_recipe_supplies_every_fact_its_folder_lacks(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: str) -> None:
    from tests.test_recipes import compose_recipe

    from diffrl.trainer.config import to_config

    variable, name = RECIPES[recipe]
    folder = shared / "hf" / name
    if not (folder / "tokenizer_config.json").exists():
        # The local SDAR-4B/8B folders hold only config.json; the released ones carry the same
        # Qwen3 tokenizer files as SDAR-1.7B.
        folder = copy_folder(shared / "hf" / "SDAR-1dot7B-Chat", tmp_path / name)
        shutil.copy(shared / "hf" / name / "config.json", folder / "config.json")
    monkeypatch.setenv(variable, str(folder))
    cfg = to_config(compose_recipe(f"model={recipe}")).model
    assert cfg.path == str(folder) and cfg.dtype == "bfloat16" and cfg.gradient_checkpointing
    facts = read_facts(cfg.path, overrides=cfg.overrides())
    assert facts.mask_token_id != facts.pad_token_id
    if facts.attention == "block_causal":
        assert facts.block_size
    assert len(facts.stop_token_ids) >= (2 if cfg.stop_tokens else 1)
