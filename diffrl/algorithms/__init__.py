"""RL algorithms for diffusion LMs, each a likelihood estimator x advantage rule x loss."""

from diffrl.algorithms import bgpo, cj_grpo, coupled_grpo, diffu_grpo, espo, gdpo, igpo, just_grpo, lightning_rl, mdpo, spg, trace_rl, unmasking_grpo  # noqa: F401  (registers)
from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.registry import Algorithm, AlgorithmConfig, algorithm_entry, build_algorithm, register_algorithm

__all__ = ["Algorithm", "AlgorithmConfig", "PolicyBatch", "algorithm_entry", "build_algorithm", "register_algorithm"]
