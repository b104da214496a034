"""Every recipe composes and validates against the typed schema."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf.errors import ConfigKeyError

from diffrl.train import RECIPES
from diffrl.trainer.config import to_config

RECIPE_NAMES = sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml"))
GROUPS = {g: sorted(p.stem for p in (RECIPES / g).glob("*.yaml")) for g in ("model", "task", "algorithm", "rollout", "optim", "trainer")}


def compose_recipe(*overrides: str):
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_experiment_recipe_validates(name: str) -> None:
    cfg = to_config(compose_recipe(f"recipe={name}"))
    assert cfg.trainer.total_steps > 0 and cfg.task.rewards


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_validates(group: str, option: str) -> None:
    to_config(compose_recipe(f"{group}={option}"))


def test_unknown_key_is_rejected_with_its_name() -> None:
    with pytest.raises(ConfigKeyError, match="micro_batchsize"):
        to_config(compose_recipe("+trainer.micro_batchsize=3"))


def test_algorithm_knobs_are_typed_per_algorithm() -> None:
    cfg = to_config(compose_recipe("algorithm.p_mask_prompt=0.5"))
    assert cfg.algorithm.p_mask_prompt == 0.5
