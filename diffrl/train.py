"""Train: ``python -m diffrl.train recipe=<name> key=value ...`` (Hydra).

    python -m diffrl.train                                   # the CPU demo (tiny LLaDA sorts digits)
    python -m diffrl.train recipe=d1_llada_gsm8k model.path=/ckpt/LLaDA-8B-Instruct
    torchrun --nproc_per_node 2 -m diffrl.train trainer=fsdp2 trainer.fsdp.param_dtype=null trainer.output_dir=runs/demo2
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 \
        -m diffrl.train recipe=d1_llada_gsm8k_multinode         # on each of two nodes
    python -m diffrl.train --cfg job                         # print the composed recipe

Recipes live in ``recipes/``: groups model/, task/, algorithm/, rollout/, optim/, trainer/ and
the experiment recipes in recipe/.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@hydra.main(config_path=str(RECIPES), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from diffrl.trainer.config import to_config
    from diffrl.trainer.distributed import shutdown
    from diffrl.trainer.loop import train

    try:
        train(to_config(cfg), OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    finally:
        shutdown()


if __name__ == "__main__":
    main()
