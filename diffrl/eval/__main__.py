"""Evaluate: ``python -m diffrl.eval model=... task=... rollout=... key=value ...`` (Hydra).

    python -m diffrl.eval model.path=/ckpt/LLaDA-8B-Instruct task=gsm8k rollout=llada_instruct
    torchrun --nproc_per_node 8 -m diffrl.eval task=humaneval eval.num_samples=10 eval.pass_k=[1,5,10]
    python -m diffrl.eval task=gsm8k rollout=llada_fast_dllm '+eval.sweep={threshold: [0.95, 0.9, 0.7]}'
    python -m diffrl.eval --cfg job                          # print the composed recipe

The model/, task/ and rollout/ groups are the training recipes' (``recipes/``); the root is
``recipes/eval.yaml``. Results go to ``eval.output_dir`` (default ``evals/<task>``). A mistake in
the config, paths or data prints one ``error: ...`` line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from diffrl.errors import reports_config_errors, take_debug_flag
from diffrl.train import RECIPES


@hydra.main(config_path=str(RECIPES), config_name="eval", version_base="1.3")
@reports_config_errors
def _main(cfg: DictConfig) -> None:
    from diffrl.eval.config import to_eval_config
    from diffrl.eval.runner import evaluate
    from diffrl.trainer.distributed import shutdown

    try:
        summary = evaluate(to_eval_config(cfg))
        if summary:
            shown = {k: v for k, v in summary.items() if isinstance(v, (int, float)) or v is None}
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()), flush=True)
    finally:
        shutdown()


def main() -> None:
    """The ``python -m diffrl.eval`` command."""
    sys.argv[1:] = take_debug_flag(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
