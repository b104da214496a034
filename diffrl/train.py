"""Train: ``python -m diffrl.train recipe=<name> key=value ...`` (Hydra).

    python -m diffrl.train                                   # the CPU demo (tiny LLaDA sorts digits)
    python -m diffrl.train recipe=d1_llada_gsm8k model.path=/ckpt/LLaDA-8B-Instruct
    torchrun --nproc_per_node 2 -m diffrl.train trainer=fsdp2 trainer.fsdp.param_dtype=null trainer.output_dir=runs/demo2
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 \\
        -m diffrl.train recipe=d1_llada_gsm8k_multinode         # on each of two nodes
    python -m diffrl.train --cfg job                         # print the composed recipe
    python -m diffrl.train -m optim.lr=1e-6,3e-6             # a sweep: one run folder per job

Recipes live in ``recipes/``: groups model/, task/, algorithm/, rollout/, optim/, trainer/ and
the experiment recipes in recipe/. The root (``recipes/train.yaml``) is a neutral base; a command
that chooses no recipe and none of the groups that decide what is trained (model, task,
algorithm, rollout) runs the demo recipe, so ``python -m diffrl.train`` with only ``trainer.*`` or
``optim.*`` settings is the demo with those settings.

A mistake in the config, paths or data prints one ``error: ...`` line naming the field and the
fix; ``--debug`` (or ``HYDRA_FULL_ERROR=1``) shows the full traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from diffrl.errors import reports_config_errors, take_debug_flag

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEMO_RECIPE = "demo"
# Choosing any of these on the command line means "not the demo".
WHAT_TO_TRAIN = ("recipe", "model", "task", "algorithm", "rollout")


def chosen_groups(overrides: list[str]) -> set[str]:
    """The config groups a list of Hydra command-line arguments selects (``model=x``, ``+recipe=y``)."""
    groups = set()
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg and not arg.startswith("~"):
            continue
        key = arg.lstrip("+~").split("=", 1)[0].split("@", 1)[0]
        if "." not in key:
            groups.add(key)
    return groups


def with_default_recipe(argv: list[str]) -> list[str]:
    """``argv`` with ``recipe=demo`` added when it chooses nothing of what is trained."""
    if chosen_groups(argv) & set(WHAT_TO_TRAIN):
        return argv
    # Hydra's parser takes the overrides as one run of positional arguments: join the first.
    at = next((i for i, arg in enumerate(argv) if "=" in arg and not arg.startswith("-")), len(argv))
    return [*argv[:at], f"recipe={DEMO_RECIPE}", *argv[at:]]


def job_output_dir(cfg: DictConfig) -> None:
    """Under ``-m`` each job trains in its own folder: Hydra's job folder
    (``trainer.output_dir/<job number>``), so no job resumes another's checkpoints."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        cfg.trainer.output_dir = hydra_cfg.runtime.output_dir


@hydra.main(config_path=str(RECIPES), config_name="train", version_base="1.3")
@reports_config_errors
def _main(cfg: DictConfig) -> None:
    from diffrl.trainer.config import check_launch, to_config
    from diffrl.trainer.distributed import shutdown
    from diffrl.trainer.loop import train

    job_output_dir(cfg)
    config = to_config(cfg)
    check_launch(config.trainer)
    try:
        train(config, OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    finally:
        shutdown()


def main() -> None:
    """The ``python -m diffrl.train`` command (also callable from a launcher script)."""
    sys.argv[1:] = with_default_recipe(take_debug_flag(sys.argv[1:]))
    _main()


if __name__ == "__main__":
    main()
