"""Reward functions registered by name; task recipes choose and weight them."""

from diffrl.rewards import code, countdown, exact, format, math, sudoku  # noqa: F401  (registers)
from diffrl.rewards.registry import (
    RewardBatch,
    RewardRunner,
    RewardSpec,
    Score,
    check_row,
    get_reward,
    register_reward,
    required_fields,
)

__all__ = ["RewardBatch", "RewardRunner", "RewardSpec", "Score", "check_row", "get_reward", "register_reward", "required_fields"]
