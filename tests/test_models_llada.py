"""LLaDA: published names, safetensors round trip, loading errors, masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffrl.models import CheckpointError, build_model, load_pretrained, save_pretrained


def test_full_size_meta_build_matches_published_index(shared: Path) -> None:
    folder = shared / "hf" / "LLaDA-8B-Instruct"
    model = build_model(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(model.state_dict()) == set(index["weight_map"])
    nbytes = sum(t.numel() * 2 for t in model.state_dict().values())  # published weights are bf16
    assert nbytes == index["metadata"]["total_size"]
    assert all(p.is_meta for p in model.parameters())


def test_facts_come_from_config(shared: Path) -> None:
    facts = build_model(shared / "hf" / "LLaDA-8B-Instruct").facts
    cfg = json.loads((shared / "hf" / "LLaDA-8B-Instruct" / "config.json").read_text())
    assert facts.mask_token_id == cfg["mask_token_id"]
    assert facts.eos_token_id == cfg["eos_token_id"]
    assert facts.logit_shift == 0 and facts.attention == "bidirectional"


@pytest.mark.parametrize("shard_bytes", [10**9, 300_000])
def test_save_load_round_trip_is_bit_exact(tiny_llada, tmp_path: Path, shard_bytes: int) -> None:
    out = save_pretrained(tiny_llada, tmp_path / "rt", max_shard_bytes=shard_bytes)
    sharded = (out / "model.safetensors.index.json").exists()
    assert sharded == (shard_bytes < 10**9)
    again = load_pretrained(out, dtype=torch.float32)
    a, b = tiny_llada.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randint(0, 500, (2, 12))
    assert torch.equal(tiny_llada(x), again(x))


def test_bf16_load_and_save_keep_dtype(tiny_llada_dir: Path, tmp_path: Path) -> None:
    model = load_pretrained(tiny_llada_dir, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    out = save_pretrained(model, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(out / "model.safetensors").values())


def test_missing_and_unexpected_tensors_are_named(tiny_llada_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llada_dir, bad)
    weights = load_file(bad / "model.safetensors")
    weights.pop("model.transformer.blocks.1.q_proj.weight")
    weights["model.transformer.extra.weight"] = torch.zeros(2)
    save_file(weights, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.q_proj\.weight") as err:
        load_pretrained(bad)
    assert "model.transformer.extra.weight" in str(err.value)


def test_missing_shard_is_named(tiny_llada, tmp_path: Path) -> None:
    out = save_pretrained(tiny_llada, tmp_path / "sharded", max_shard_bytes=300_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_pretrained(out)


def test_unsupported_config_field_is_named(tiny_llada_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "alibi"
    shutil.copytree(tiny_llada_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["alibi"] = True
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'alibi'"):
        load_pretrained(bad)


def test_left_padding_does_not_change_real_token_logits(tiny_llada) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (1, 9))
    alone = tiny_llada.logits(tiny_llada(ids))
    pad = tiny_llada.facts.pad_token_id
    padded = torch.cat((torch.full((1, 4), pad), ids), dim=1)
    mask = torch.cat((torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)), dim=1)
    out = tiny_llada.logits(tiny_llada(padded, mask))[:, 4:]
    assert (out - alone).abs().max() < 1e-4
    assert torch.equal(out.argmax(-1), alone.argmax(-1))
    # Without the mask the pads leak into attention: the test can tell the difference.
    leaky = tiny_llada.logits(tiny_llada(padded))[:, 4:]
    assert (leaky - alone).abs().max() > 1e-3


def test_attention_is_bidirectional(tiny_llada) -> None:
    ids = torch.randint(0, 500, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 500
    first = tiny_llada(ids)[0, 0]
    assert (tiny_llada(changed)[0, 0] - first).abs().max() > 1e-6
