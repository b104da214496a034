"""Algorithms by name: each is a likelihood estimator, an advantage rule and a loss, plus optional
rollout hooks (decode order, group repair, group filter, token filter, an NLL term)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import Tensor

from diffrl.algorithms.advantages import Outcome
from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import LikelihoodEstimator, TokenScores
from diffrl.algorithms.losses import clipped_policy_loss
from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.trajectory import Rollout


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
    # The reward (a task reward's name) whose positive value marks a sample correct, for the rules
    # that need correctness (IGPO's trigger, LightningRL's accuracy and NLL); null = total reward > 0,
    # refused for those algorithms when the task has several rewards.
    correctness_reward: str | None = None
    # TRL's reference-model sync: every ref_model_sync_steps steps the KL reference becomes
    # alpha x policy + (1 - alpha) x reference (DiffuCoder: 64 and 0.6).
    sync_ref_model: bool = False
    ref_model_sync_steps: int = 512
    ref_model_mixup_alpha: float = 0.6

    def clipped_loss(self, **options: Any) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
        """:func:`~diffrl.algorithms.losses.clipped_policy_loss` with this config's ``epsilon``,
        ``epsilon_high`` and ``beta`` (``options``: ``ratio_level``, ``log_ratio_clamp``)."""
        return partial(clipped_policy_loss, epsilon=self.epsilon, epsilon_high=self.epsilon_high, beta=self.beta, **options)


@dataclass
class RolloutContext:
    """What a group-repair hook may call: regenerate samples (rows of the batch) with fixed tokens
    [n, Lc] (-1 = free), tell which samples of a rollout are correct, read a sample's reference
    text and tokenize text."""

    regenerate: Callable[[Tensor, Tensor], Rollout]
    correct: Callable[[Rollout, Tensor], Tensor]
    reference_text: Callable[[int], str]
    tokenize: Callable[[str], list[int]]
    seed: int


@dataclass(frozen=True)
class Needs:
    """What an algorithm needs from the run, so start-up can refuse settings that would silently
    void it (see :func:`diffrl.trainer.guards.check_algorithm`)."""

    # Reads which samples are correct (Outcome.correct): a task with several rewards must name
    # the correctness reward.
    correctness: bool = False
    # Normalises within groups of num_generations samples: a group of one has no signal.
    groups: bool = True
    # Rewards tokens per forward: the rollout must be able to decode a varying number per step.
    varying_tpf: bool = False
    # Reads each row's reference answer (task.sft_response_field).
    reference_answer: bool = False
    # Its likelihood is exact only for a left-to-right decode.
    left_to_right: bool = False
    # Whether a KL term (beta > 0) is defined on its estimator.
    kl: bool = True


@dataclass
class NLLTerm:
    """An extra ``coef`` x token-mean NLL over the completions of the samples ``samples`` picks."""

    coef: float
    samples: Callable[[Outcome], Tensor]


@dataclass
class Algorithm:
    """The parts, composed; the trainer only calls these.

    Optional hooks (None = off), each generic so the loop never asks which algorithm it runs:
    ``rollout_config`` rewrites the rollout settings (decode order); ``repair`` may regenerate
    samples after scoring (returns the rollout and the index of rows it replaced);
    ``keep`` drops samples from the update (their weight becomes 0); ``token_filter`` chooses which
    scored tokens train, from the estimator's scores before the update; ``nll`` adds an NLL term;
    ``step_advantages`` rewards each recorded denoising step (``rollout.record_predictions``):
    given the rollout and ``score`` (token rows [B, T, Lc] -> the task's total reward [B, T], each
    row scored against its sample's task row), it returns the rollout that trains (e.g. its record
    narrowed to the chosen steps) and advantages (any shape the loss reads, rows first) that
    replace ``advantage``'s. ``needs`` says what the run must provide (checked at start-up).
    """

    config: AlgorithmConfig
    estimator: LikelihoodEstimator
    advantage: Callable[[Outcome], Tensor]
    loss: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    rollout_config: Callable[[RolloutConfig], RolloutConfig] | None = None
    repair: Callable[[Rollout, Outcome, RolloutContext], tuple[Rollout, Tensor]] | None = None
    keep: Callable[[Outcome], Tensor] | None = None
    token_filter: Callable[[TokenScores, PolicyBatch], Tensor] | None = None
    nll: NLLTerm | None = None
    needs: Needs = field(default_factory=Needs)
    # Prompts (over all ranks) per set of sequences a grpo/dr_grpo loss is normalised over, each
    # set's gradient summed (JustGRPO's accumulation micro-steps); None = the whole mini-batch.
    normaliser_prompts: int | None = None
    step_advantages: Callable[[Rollout, Callable[[Tensor], Tensor]], tuple[Rollout, Tensor]] | None = None


_REGISTRY: dict[str, tuple[type[AlgorithmConfig], Callable[[Any], Algorithm]]] = {}
# Algorithms that do not update the dLLM (their steps run elsewhere): name -> (config, where).
_OTHER_MODES: dict[str, tuple[type[AlgorithmConfig], str]] = {}


def register_algorithm(name: str, config_class: type[AlgorithmConfig]) -> Callable:
    """Decorator registering ``build(config) -> Algorithm`` under ``name``."""

    def wrap(build: Callable[[Any], Algorithm]) -> Callable[[Any], Algorithm]:
        _REGISTRY[name] = (config_class, build)
        return build

    return wrap


def register_other_mode(name: str, config_class: type[AlgorithmConfig], runs_in: str) -> None:
    """Register the config of an algorithm that trains something other than the dLLM (e.g. the
    learned unmasking policy); ``runs_in`` names the module whose steps run it."""
    _OTHER_MODES[name] = (config_class, runs_in)


def algorithm_config_class(name: str) -> type[AlgorithmConfig]:
    """The config class registered under ``name`` (a dLLM algorithm or another mode)."""
    import diffrl.algorithms  # noqa: F401  (registers the built-in algorithms)

    if name in _OTHER_MODES:
        return _OTHER_MODES[name][0]
    return algorithm_entry(name)[0]


def algorithm_entry(name: str) -> tuple[type[AlgorithmConfig], Callable[[Any], Algorithm]]:
    """The config class and builder of the dLLM algorithm registered under ``name``."""
    import diffrl.algorithms  # noqa: F401  (registers the built-in algorithms)

    if name in _OTHER_MODES:
        raise ValueError(f"algorithm.name={name!r} does not train the dLLM; its steps run in {_OTHER_MODES[name][1]}")
    if name not in _REGISTRY:
        known = sorted([*_REGISTRY, *_OTHER_MODES])
        raise ValueError(f"algorithm.name={name!r} is not registered; known: {', '.join(known)}")
    return _REGISTRY[name]


def registered_algorithms() -> list[str]:
    """Every registered algorithm's name, sorted."""
    import diffrl.algorithms  # noqa: F401  (registers the built-in algorithms)

    return sorted(_REGISTRY)


def build_algorithm(config: AlgorithmConfig) -> Algorithm:
    return algorithm_entry(config.name)[1](config)


def registered_algorithms() -> list[str]:
    """Every registered dLLM algorithm's name (the ones :func:`build_algorithm` builds)."""
    import diffrl.algorithms  # noqa: F401  (registers the built-in algorithms)

    return list(_REGISTRY)
