"""Every recipe composes and validates against the typed schema; the root is a neutral base, the
demo is the default of the command that chooses nothing, and algorithms swap under any recipe."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffrl.algorithms.registry import algorithm_config_class, registered_algorithms
from diffrl.errors import DiffrlConfigError
from diffrl.train import RECIPES, chosen_groups, with_default_recipe
from diffrl.trainer.config import to_config

REPO = Path(__file__).resolve().parents[1]
RECIPE_NAMES = sorted(p.stem for p in (RECIPES / "recipe").glob("*.yaml"))
GROUPS = {g: sorted(p.stem for p in (RECIPES / g).glob("*.yaml")) for g in ("model", "task", "algorithm", "rollout", "optim", "trainer")}


def compose_recipe(*overrides: str):
    """The root recipe (``recipes/train.yaml``) with ``overrides``, as Hydra's compose API gives it."""
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_experiment_recipe_validates(name: str) -> None:
    cfg = to_config(compose_recipe(f"recipe={name}"))
    assert cfg.trainer.total_steps > 0 and cfg.task.rewards


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_validates(group: str, option: str) -> None:
    to_config(compose_recipe(f"{group}={option}"))


@functools.cache
def algorithm_names() -> dict[str, str]:
    """Each algorithm option's registered name (an option may extend another's file)."""
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return {o: compose("train", overrides=[f"algorithm={o}"]).algorithm.name for o in GROUPS["algorithm"]}


def dllm_recipes() -> list[str]:
    """The recipes that train the dLLM (a learned-unmasking recipe trains another model)."""
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        return [r for r in RECIPE_NAMES if compose("train", overrides=[f"recipe={r}"]).algorithm.name in registered_algorithms()]


def test_only_other_mode_recipes_are_left_out_of_the_swap() -> None:
    left_out = set(RECIPE_NAMES) - set(dllm_recipes())
    assert left_out == {r for r in RECIPE_NAMES if r.startswith("unmasking_grpo")}


@pytest.mark.parametrize("recipe", dllm_recipes())
def test_every_algorithm_swaps_in_under_every_recipe(recipe: str) -> None:
    """Algorithm-specific keys live in the algorithm group, so a recipe never carries one that
    another dLLM algorithm's config lacks."""
    names = {o: n for o, n in algorithm_names().items() if n in registered_algorithms()}
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        for option, name in names.items():
            cfg = to_config(compose("train", overrides=[f"recipe={recipe}", f"algorithm={option}"]))
            assert type(cfg.algorithm) is algorithm_config_class(name) and cfg.algorithm.name == name, (recipe, option)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _baseline(recipe: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe's own settings, and what its defaults list alone (groups, parent recipe) composes to."""
    raw = OmegaConf.to_container(OmegaConf.load(RECIPES / "recipe" / f"{recipe}.yaml"))
    overrides = []
    for entry in raw.pop("defaults", []):
        if isinstance(entry, dict):
            (key, option), = entry.items()
            overrides.append(f"{key.removeprefix('override /')}={option}")
        elif entry != "_self_":
            overrides.insert(0, f"recipe={entry}")
    base = OmegaConf.to_container(compose_recipe(*overrides), resolve=False)
    return _leaves(raw), _leaves(base)


@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_experiment_recipes_state_only_what_differs_from_their_defaults(recipe: str) -> None:
    own, base = _baseline(recipe)
    same = sorted(k for k, v in own.items() if k in base and base[k] == v)
    assert not same, f"recipe/{recipe}.yaml repeats its defaults: {same}"


def test_the_root_is_a_neutral_base() -> None:
    """Choosing groups on top of the root gets each group's own settings, none of the demo's."""
    cfg = to_config(compose_recipe("algorithm=gdpo", "task=countdown"))
    demo = to_config(compose_recipe("recipe=demo"))
    assert cfg.trainer.warm_start.steps == 0 and demo.trainer.warm_start.steps > 0
    assert cfg.trainer.output_dir == "runs/countdown" and demo.trainer.output_dir == "runs/demo"
    assert cfg.optim.lr != demo.optim.lr and cfg.trainer.total_steps != demo.trainer.total_steps


def test_the_demo_is_the_default_only_when_nothing_is_chosen() -> None:
    assert with_default_recipe([]) == ["recipe=demo"]
    assert with_default_recipe(["trainer=fsdp2", "task.rewards=[]"]) == ["recipe=demo", "trainer=fsdp2", "task.rewards=[]"]
    assert with_default_recipe(["-m", "optim.lr=1,2", "--cfg", "job"]) == ["-m", "recipe=demo", "optim.lr=1,2", "--cfg", "job"]
    for chosen in ("recipe=d1_llada_gsm8k", "algorithm=gdpo", "+model=llada_tiny", "task@x=countdown", "rollout=tiny"):
        assert with_default_recipe(["--cfg", "job", chosen]) == ["--cfg", "job", chosen]
    assert chosen_groups(["--cfg", "job", "hydra.run.dir=x", "~trainer", "optim.lr=1"]) == {"trainer"}


def _cfg_job(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "diffrl.train", *args, "--cfg", "job", "--resolve"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_commands_compose_the_demo_or_the_neutral_base() -> None:
    """The README's first command is the demo; its group-swapping command is not."""
    assert "output_dir: runs/demo" in _cfg_job()
    assert "output_dir: runs/demo" in _cfg_job("trainer.total_steps=3")
    swapped = _cfg_job("algorithm=gdpo", "task=countdown")
    assert "output_dir: runs/countdown" in swapped and "teacher_accuracy: 0.45" not in swapped


def test_unknown_key_is_rejected_with_its_name_and_the_likely_fix() -> None:
    with pytest.raises(DiffrlConfigError, match=r"trainer.micro_batchsize is not a setting of TrainerConfig.*did you mean trainer.micro_batch_size"):
        to_config(compose_recipe("+trainer.micro_batchsize=3"))
    with pytest.raises(DiffrlConfigError, match=r"trainer.batch_size: Value 'many'"):
        to_config(compose_recipe("trainer.batch_size=many"))


def test_algorithm_knobs_are_typed_per_algorithm() -> None:
    cfg = to_config(compose_recipe("algorithm.p_mask_prompt=0.5"))
    assert cfg.algorithm.p_mask_prompt == 0.5
    with pytest.raises(DiffrlConfigError, match=r"algorithm.p_mask_prompt is not a setting of algorithm=gdpo"):
        to_config(compose_recipe("algorithm=gdpo", "+algorithm.p_mask_prompt=0.5"))


@pytest.mark.slow
def test_multirun_jobs_train_in_folders_of_their_own(tmp_path: Path) -> None:
    """``-m`` with a fixed trainer.output_dir: each job writes its own run folder (no job
    resumes another's checkpoint)."""
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "diffrl.train", "-m", f"trainer.output_dir={out}", "optim.lr=1e-3,2e-3", "trainer.total_steps=1",
           "trainer.batch_size=2", "trainer.warm_start.steps=0", "trainer.progress_bar=false", "trainer.plot=false",
           "task.synthetic.num_train=16", "task.synthetic.num_val=8"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, lr in (("0", "0.001"), ("1", "0.002")):
        assert (out / job / "checkpoints" / "step_000001" / "COMPLETE").exists(), job
        assert f"optim.lr={lr}" in (out / job / ".hydra" / "overrides.yaml").read_text().replace("'", "")
        assert (out / job / "metrics.jsonl").read_text().count("\n") == 1


def _unlisted(schema: Any, node: Any, prefix: str) -> list[str]:
    """Dataclass fields of ``schema`` that the composed ``node`` does not list (recursively)."""
    import dataclasses

    missing = []
    for f in dataclasses.fields(schema):
        if f.name not in node:
            missing.append(prefix + f.name)
        elif dataclasses.is_dataclass(value := getattr(schema, f.name)) and OmegaConf.is_dict(node[f.name]):
            missing += _unlisted(value, node[f.name], f"{prefix}{f.name}.")
    return missing


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_setting_is_listed_so_the_command_line_can_set_it(group: str, option: str) -> None:
    """Hydra refuses ``task.key=value`` for a key its YAML does not list, so each group option
    must list every field of its schema (a new field left out of the YAML is unreachable)."""
    raw = compose_recipe(f"{group}={option}")
    cfg = to_config(raw)
    missing = _unlisted(getattr(cfg, group), raw[group], f"{group}.")
    assert not missing, f"{group}={option} does not list {missing} in its YAML"
    override = {"task": "task.on_bad_rows=skip", "rollout": "rollout.running_confidence=false", "trainer": "trainer.keep_last_n=2"}.get(group)
    if override:
        to_config(compose_recipe(f"{group}={option}", override))
