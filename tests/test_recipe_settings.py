"""Each paper recipe composes to its paper's setting: the values below are read off the
reference code (the source of each is the comment beside it in the recipe)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from diffrl.train import RECIPES
from diffrl.trainer.config import to_config

# recipe -> {dotted field: the paper's value}
PAPER = {
    "d1_llada_gsm8k": {
        "trainer.batch_size": 16, "algorithm.num_generations": 6, "algorithm.num_iterations": 12, "trainer.ppo_mini_batch_size": None,
        "algorithm.beta": 0.04, "algorithm.epsilon": 0.5, "algorithm.p_mask_prompt": 0.15, "algorithm.loss_type": "bnpo",
        "optim.lr": 3e-6, "optim.betas": [0.9, 0.99], "optim.weight_decay": 0.1, "optim.max_grad_norm": 0.2, "optim.warmup_steps": 1,
        "trainer.lora.enabled": False, "rewards": [("math", 2.0), ("format", 0.5)], "algorithm.correctness_reward": "math",
    },
    "d1_llada_gsm8k_lora": {"trainer.lora.enabled": True, "trainer.lora.r": 128, "trainer.lora.alpha": 64, "trainer.lora.dropout": 0.05},
    "coupled_grpo_dream_code": {
        "trainer.batch_size": 8, "algorithm.num_generations": 10, "algorithm.num_iterations": 2, "algorithm.beta": 0.01,
        "algorithm.epsilon": 0.5, "algorithm.scale_rewards": "none", "algorithm.sync_ref_model": True, "algorithm.ref_model_sync_steps": 64,
        "algorithm.ref_model_mixup_alpha": 0.6, "optim.lr": 1e-6, "optim.lr_schedule": "cosine", "optim.min_lr_ratio": 0.1,
        "optim.betas": [0.9, 0.99], "optim.weight_decay": 0.1, "optim.max_grad_norm": 0.2, "optim.warmup_steps": 0,
        "trainer.lora.enabled": False, "task.max_prompt_length": 200, "rollout.steps": 256, "rollout.temperature": 1.0,
    },
    "igpo_llada_math": {
        "trainer.batch_size": 64, "algorithm.num_generations": 8, "algorithm.num_iterations": 4, "algorithm.beta": 0.01,
        "algorithm.epsilon": 0.2, "algorithm.epsilon_high": 0.2, "algorithm.igpo.use_gspo": True, "algorithm.igpo.max_replacements": 4,
        "algorithm.igpo.inpaint_ratio_low": 0.2, "algorithm.igpo.inpaint_ratio_high": 0.6, "algorithm.igpo.entropy_clipping_ratio": 0.2,
        "optim.lr": 5e-7, "optim.warmup_steps": 50, "optim.betas": [0.9, 0.99], "optim.weight_decay": 0.1, "optim.max_grad_norm": 0.2,
        "trainer.lora.enabled": True, "trainer.lora.r": 128, "trainer.lora.alpha": 64, "trainer.lora.dropout": 0.05,
        "rollout.temperature": 1.2, "algorithm.correctness_reward": "math",
    },
    "gdpo_llada_countdown": {
        "trainer.batch_size": 16, "algorithm.num_generations": 6, "algorithm.num_iterations": 12, "algorithm.gdpo.num_nodes": 3,
        "optim.lr": 3e-6, "optim.betas": [0.9, 0.99], "optim.weight_decay": 0.1, "trainer.lora.enabled": False,
        "rewards": [("countdown", 1.0), ("format", 0.5)], "algorithm.correctness_reward": "countdown",
    },
    "lightning_rl_sdar_math": {
        "trainer.batch_size": 128, "algorithm.num_generations": 32, "trainer.ppo_mini_batch_size": 16, "algorithm.num_iterations": 1,
        "algorithm.beta": 0.01, "algorithm.epsilon": 0.2, "algorithm.epsilon_high": 0.2, "algorithm.lightning_rl.nll_loss_weight": 0.1,
        "algorithm.lightning_rl.filter_tpf_threshold": 0.01, "algorithm.lightning_rl.tpf_norm_mode": "z_score", "rollout.threshold": 0.9,
        "optim.lr": 1e-6, "optim.betas": [0.9, 0.999], "optim.weight_decay": 0.0, "optim.max_grad_norm": 1.0, "optim.warmup_steps": 10,
        "optim.reset_each_step": True, "optim.lr_schedule": "constant", "trainer.total_steps": 80, "trainer.lora.enabled": False,
        "algorithm.correctness_reward": "math",
    },
    "just_grpo_llada_gsm8k": {
        "trainer.batch_size": 64, "algorithm.num_generations": 16, "algorithm.num_iterations": 1, "algorithm.beta": 0.0,
        "algorithm.scale_rewards": "group", "algorithm.loss_type": "dr_grpo", "algorithm.just_grpo.normalizer": "micro_step",
        "algorithm.just_grpo.micro_step_prompts": 8, "algorithm.just_grpo.learner_temperature": 1.0, "rollout.temperature": 1.0,
        "optim.lr": 5e-6, "optim.betas": [0.9, 0.999], "optim.weight_decay": 0.0, "optim.max_grad_norm": 1.0, "optim.warmup_steps": 0,
        "trainer.total_steps": 125, "trainer.lora.enabled": False, "rewards": [("math", 1.0)],
    },
}


def value(cfg: Any, dotted: str) -> Any:
    if dotted == "rewards":
        return [(spec.name, spec.weight) for spec in cfg.task.rewards]
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


def same(got: Any, want: Any) -> bool:
    """Equal, floats to rounding (1e-6 written as 1.0e-06 in YAML)."""
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return math.isclose(got, want, rel_tol=1e-9)
    return got == want


@pytest.mark.parametrize("recipe", sorted(PAPER))
def test_recipe_composes_to_the_paper_setting(recipe: str) -> None:
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        cfg = to_config(compose("train", overrides=[f"recipe={recipe}"]))
    wrong = {k: (value(cfg, k), want) for k, want in PAPER[recipe].items() if not same(value(cfg, k), want)}
    assert not wrong, f"{recipe}: field: (composed, paper) {wrong}"
