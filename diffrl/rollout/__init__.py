"""The diffusion generation engine used by training and evaluation."""

from diffrl.rollout.backend import InProcessBackend, RolloutBackend
from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.engine import generate
from diffrl.rollout.trajectory import EditLog, Rollout

__all__ = ["EditLog", "InProcessBackend", "Rollout", "RolloutBackend", "RolloutConfig", "generate"]
