"""The diffusion generation engine used by training and evaluation."""

from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.engine import generate
from diffrl.rollout.trajectory import Rollout

__all__ = ["Rollout", "RolloutConfig", "generate"]
