"""``final/`` and exports load everywhere: ``auto_map`` stays only with the code it names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from diffrl.models import load_pretrained, save_pretrained
from diffrl.models.checkpoint import copy_tokenizer_files
from diffrl.models.tokenizer import load_tokenizer
from tests.conftest import TINY_SOURCES

FAMILIES = sorted(TINY_SOURCES)


def test_transformers_has_none_of_the_families() -> None:
    """What the export tests can load with transformers' own classes: none of the families (all
    ship remote code). If this fails, load that family's export with transformers below."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    types = {"llada", "Dream", "sdar", "sdar_moe", "llada2_moe"}
    assert not types & {t.lower() for t in CONFIG_MAPPING_NAMES} and not types & set(CONFIG_MAPPING_NAMES)


def published_like(tiny_folder: Path, family: str, shared: Path, dest: Path) -> Path:
    """The tiny checkpoint with its published config's ``auto_map`` back in config.json, as in a
    downloaded folder (whose ``*.py`` files ``shared/`` does not hold)."""
    shutil.copytree(tiny_folder, dest)
    published = json.loads((shared / "hf" / TINY_SOURCES[family][0] / "config.json").read_text())
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, "auto_map": published["auto_map"]}))
    return dest


@pytest.mark.parametrize("family", FAMILIES)
def test_an_export_without_the_source_code_drops_auto_map_and_loads(family: str, tiny_checkpoint, shared: Path, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(family)
    source = published_like(ckpt.folder, family, shared, tmp_path / "source")
    model = ckpt.load(folder=source)
    out = save_pretrained(model, tmp_path / "final", source_folder=source)
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    again = ckpt.load(folder=out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_remote_tokenizer_export_loads_without_its_code(tmp_path: Path, shared: Path, tiny_checkpoint) -> None:
    """Dream's tokenizer_config names DreamTokenizer through auto_map; the export drops the map
    (no tokenization_dream.py) and the project's loader still finds the family's tokenizer."""
    source = published_like(tiny_checkpoint("dream").folder, "dream", shared, tmp_path / "source")
    copy_tokenizer_files(shared / "hf" / "Dream-v0-Instruct-7B", source)
    out = save_pretrained(load_pretrained(source), tmp_path / "final", source_folder=source)
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in tok_config and tok_config["tokenizer_class"] == "DreamTokenizer"
    assert load_tokenizer(out)("1 + 1 =")["input_ids"] == load_tokenizer(source)("1 + 1 =")["input_ids"]


REMOTE_CONFIG = '''
from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
'''


def test_an_export_with_the_source_code_copies_it_and_keeps_auto_map(tmp_path: Path, shared: Path, tiny_checkpoint) -> None:
    """With the published ``*.py`` beside the weights, they travel to the export and transformers
    resolves ``auto_map`` from the export folder alone."""
    import transformers

    source = published_like(tiny_checkpoint("llada").folder, "llada", shared, tmp_path / "source")
    (source / "configuration_llada.py").write_text(REMOTE_CONFIG)
    (source / "modeling_llada.py").write_text("# the published modeling code\n")
    out = save_pretrained(load_pretrained(source), tmp_path / "final", source_folder=source)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_llada.LLaDAConfig"
    assert (out / "modeling_llada.py").exists()
    loaded = transformers.AutoConfig.from_pretrained(str(out), trust_remote_code=True)
    assert type(loaded).__name__ == "LLaDAConfig" and loaded.d_model == config["d_model"]
