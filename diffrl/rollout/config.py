"""Every decoding knob of the rollout engine, in one dataclass (the ``rollout`` recipe group)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RolloutConfig:
    """How completions are generated.

    Names follow LLaDA's ``generate`` and TRL where they overlap: ``max_completion_length`` is
    LLaDA's ``gen_length``; ``steps`` counts denoising steps over the whole completion and is split
    evenly across the ``max_completion_length / block_length`` semi-autoregressive blocks.
    """

    # Completion length in tokens (LLaDA's gen_length).
    max_completion_length: int = 256
    # Semi-autoregressive block length; equal to max_completion_length gives pure diffusion.
    block_length: int = 32
    # Denoising steps over the whole completion (must divide evenly across blocks).
    steps: int = 128
    # Gumbel-max sampling temperature; 0 decodes greedily.
    temperature: float = 0.0
    # Keep only the k most likely tokens before sampling (None = off).
    top_k: int | None = None
    # Keep the smallest nucleus with this much probability before sampling (None = off).
    top_p: float | None = None
    # Which masked positions to commit each step: low_confidence (highest p first) or random.
    remasking: str = "low_confidence"
    # Stop a sample once its first stop token is committed with nothing masked before it.
    stop_at_eos: bool = True
    # Base seed of every random draw (combined with each sample's id, step and position).
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_completion_length % self.block_length:
            raise ValueError(
                f"rollout.max_completion_length={self.max_completion_length} must be a multiple of "
                f"rollout.block_length={self.block_length}"
            )
        blocks = self.max_completion_length // self.block_length
        if self.steps % blocks:
            raise ValueError(f"rollout.steps={self.steps} must be a multiple of the number of blocks ({blocks})")
        if self.temperature < 0:
            raise ValueError(f"rollout.temperature={self.temperature} must be >= 0")

    @property
    def num_blocks(self) -> int:
        return self.max_completion_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks
