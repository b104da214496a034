"""Trainer settings that cannot run are rejected with the field and the fix; DeepSpeed's config
is ours with the recipe's raw keys merged in."""

from __future__ import annotations

import pytest

from diffrl.trainer.parallelize import deepspeed_config
from tests.test_recipes import compose_recipe


def _validate(*overrides: str):
    from diffrl.trainer.config import to_config

    return to_config(compose_recipe(*overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.strategy=ddp", r"trainer.strategy='ddp' is not one of single, fsdp2, deepspeed"),
        ("trainer.mode=dpo", r"trainer.mode='dpo' is not one of rl, sft"),
        ("trainer.fsdp.param_dtype=bf16x", r"trainer.fsdp.param_dtype='bf16x'"),
        ("trainer.deepspeed.stage=1", r"trainer.deepspeed.stage=1 is not supported"),
        ("trainer.kernels=cuda", r"trainer.kernels='cuda' is not one of auto, torch, triton"),
    ],
)
def test_bad_trainer_settings_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _validate(override)


def test_trainer_options_compose_to_their_strategies() -> None:
    assert _validate("trainer=fsdp2").trainer.strategy == "fsdp2"
    ds = _validate("trainer=deepspeed_zero3").trainer.deepspeed
    assert (ds.stage, ds.config) == (3, None)
    assert _validate("trainer=lora").trainer.lora.enabled


def test_deepspeed_config_merges_raw_keys_and_never_names_an_optimizer() -> None:
    config = deepspeed_config(stage=3, bf16=True, micro_batch_size=4, max_grad_norm=0.5,
                              extra={"zero_optimization": {"offload_optimizer": {"device": "cpu"}}})
    assert config["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert config["gradient_clipping"] == 0.5 and config["bf16"] == {"enabled": True} and "optimizer" not in config
