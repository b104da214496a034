"""Algorithms by name: each is a likelihood estimator, an advantage rule and a loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffrl.algorithms.estimators import LikelihoodEstimator


@dataclass
class AlgorithmConfig:
    """The knobs every algorithm shares, with TRL's names (the ``algorithm`` recipe group).

    Algorithm-specific knobs live in subclasses registered with each algorithm.
    """

    # Registered algorithm name.
    name: str = "diffu_grpo"
    # Samples per prompt (G); advantages are computed within each group.
    num_generations: int = 8
    # Weight of the k3 KL term to the reference policy (0 = no reference model).
    beta: float = 0.0
    # Lower clip range of the ratio: [1 - epsilon, 1 + epsilon_high].
    epsilon: float = 0.2
    # Upper clip range (None = epsilon); DAPO suggests 0.28.
    epsilon_high: float | None = None
    # Optimizer updates per rollout batch (mu), each with its own estimator mask seed.
    num_iterations: int = 1
    # Token aggregation: grpo, bnpo, dr_grpo or dapo (see algorithms.losses.token_weights).
    loss_type: str = "bnpo"
    # Reward scaling in the advantage: group, batch or none.
    scale_rewards: str = "none"


@dataclass
class Algorithm:
    """The three parts, composed; the trainer only calls these."""

    config: AlgorithmConfig
    estimator: LikelihoodEstimator
    advantage: Callable[[Tensor, int], Tensor]
    loss: Callable[..., tuple[Tensor, dict[str, Tensor]]]


_REGISTRY: dict[str, tuple[type[AlgorithmConfig], Callable[[Any], Algorithm]]] = {}


def register_algorithm(name: str, config_class: type[AlgorithmConfig]) -> Callable:
    """Decorator registering ``build(config) -> Algorithm`` under ``name``."""

    def wrap(build: Callable[[Any], Algorithm]) -> Callable[[Any], Algorithm]:
        _REGISTRY[name] = (config_class, build)
        return build

    return wrap


def algorithm_entry(name: str) -> tuple[type[AlgorithmConfig], Callable[[Any], Algorithm]]:
    """The config class and builder registered under ``name``."""
    import diffrl.algorithms  # noqa: F401  (registers the built-in algorithms)

    if name not in _REGISTRY:
        raise ValueError(f"algorithm.name={name!r} is not registered; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_algorithm(config: AlgorithmConfig) -> Algorithm:
    return algorithm_entry(config.name)[1](config)
