"""The diffusion generation engine used by training and evaluation."""

from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.engine import generate, generate_chunked
from diffrl.rollout.trajectory import EditLog, Rollout
from diffrl.rollout.unmasking import UnmaskingRule

__all__ = ["EditLog", "Rollout", "RolloutConfig", "UnmaskingRule", "generate", "generate_chunked"]
