"""Reward functions registered by name; task recipes choose and weight them."""

from diffrl.rewards import countdown, exact, format, math  # noqa: F401  (registers)
from diffrl.rewards.registry import RewardBatch, RewardRunner, RewardSpec, Score, get_reward, register_reward

__all__ = ["RewardBatch", "RewardRunner", "RewardSpec", "Score", "get_reward", "register_reward"]
