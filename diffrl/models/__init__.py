"""Model families loaded from their published checkpoints, behind one interface."""

from diffrl.models.base import DiffusionLM, ModelFacts
from diffrl.models.checkpoint import build_model, load_pretrained, random_model, read_facts, save_pretrained
from diffrl.models.config import CheckpointError, FactOverrides

__all__ = [
    "CheckpointError",
    "DiffusionLM",
    "FactOverrides",
    "ModelFacts",
    "build_model",
    "load_pretrained",
    "random_model",
    "read_facts",
    "save_pretrained",
]
