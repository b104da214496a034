"""Every decoding knob of the rollout engine, in one dataclass (the ``rollout`` recipe group).

The defaults are LLaDA's semi-autoregressive sampler with no cache and a fixed number of tokens
per step; every other strategy, schedule and cache is switched on by a field below.
"""

from __future__ import annotations

from dataclasses import dataclass

REMASKING = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "left_to_right")
SCHEDULES = ("linear", "proportional", "ascending")
KV_CACHES = ("none", "prefix", "dual")
THRESHOLD_RULES = ("fast_dllm", "dynamic")


@dataclass
class RolloutConfig:
    """How completions are generated.

    Names follow LLaDA's ``generate`` and TRL where they overlap: ``max_completion_length`` is
    LLaDA's ``gen_length``; ``steps`` counts denoising steps over the whole completion and is split
    evenly across the ``max_completion_length / block_length`` blocks. Block-causal models
    (SDAR, LLaDA2) decode on their own attention grid, so ``block_length`` must equal the
    model's ``block_size``.
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
    # Score that orders the masked positions of a block (higher commits first):
    #   low_confidence  p(chosen token) under the model (LLaDA; SDAR's rule at T=1 without filters)
    #   random          a keyed uniform draw (LLaDA)
    #   maskgit_plus    p(chosen token) under the tempered, top-k/top-p filtered distribution (Dream, SDAR, LLaDA2)
    #   topk_margin     top-1 minus top-2 probability of that distribution (Dream)
    #   entropy         minus its entropy (Dream)
    #   left_to_right   none: ties go to the lower position, so the leftmost masked one commits
    #                   first (with steps = max_completion_length: autoregressive order, JustGRPO)
    remasking: str = "low_confidence"
    # How many tokens a step commits when no threshold rule is set:
    #   linear        m // steps per step, the first m % steps steps one more, m = masks at block start (LLaDA, SDAR)
    #   proportional  int(m_now * (1 - s/t)) over t = linspace(1, eps, steps + 1), all the rest on the last step (Dream)
    #   ascending     2^i at step i, all the rest on the last step (CJ-GRPO's Ascending Step-Size)
    schedule: str = "linear"
    # Final time of the proportional schedule (Dream's eps).
    eps: float = 1e-3
    # Dream's alg_temp: choose the scheduled positions by sampling softmax(score / alg_temp) without
    # replacement instead of taking the top ones (None or 0 = top).
    alg_temp: float | None = None
    # Parallel decoding: a probability threshold on the score (None = off). See threshold_rule.
    threshold: float | None = None
    #   fast_dllm  the best masked position always, every other one with score >= threshold; the
    #              schedule is ignored (Fast-dLLM; LLaDA2.1 with num_to_transfer=1)
    #   dynamic    every position with score > threshold when there are at least as many as the
    #              schedule asks for, else the schedule's top ones (SDAR low_confidence_dynamic, LLaDA2.0)
    threshold_rule: str = "fast_dllm"
    # Fast-dLLM/dInfer factor rule: the n-th best position (n >= 2) needs score >= 1 - factor/(n+1),
    # the longest passing prefix is committed (None = off; excludes threshold).
    factor: float | None = None
    # LLaDA2.1 editing: a decoded token of the current block is replaced when the model now prefers
    # another token with probability > editing_threshold (None = off). Fixed tokens are never edited.
    editing_threshold: float | None = None
    # LLaDA2.1: once a block has no masks, at most this many more steps run while they change tokens.
    max_post_steps: int = 0
    # Prophet-style early commit: when the mean top-1 minus top-2 probability margin over a block's
    # masked positions reaches this, commit all of them in that step (None = off).
    early_commit_margin: float | None = None
    # CJ-GRPO's EOS Early Rejection: an EOS candidate's score is multiplied by a factor rising
    # linearly from eos_min_gamma to eos_max_gamma over the block (None = off).
    eos_min_gamma: float | None = None
    eos_max_gamma: float = 1.0
    # MDPO's running-confidence remasking: each step fills every masked position, then masks again
    # the block's decoded tokens with the lowest confidence (recorded when written), keeping as many
    # masks as the schedule has left; replaces the commit rule.
    running_confidence: bool = False
    # Record every step's prediction x̂0_t of the block's masked positions, the canvas it came from
    # and its confidence (Rollout.step_tokens / step_predicted / step_confidence; MDPO's per-step
    # rewards). Costs steps x completion tokens per sample, so off unless an algorithm asks.
    record_predictions: bool = False
    # KV cache: none (every step runs the whole canvas), prefix (Fast-dLLM PrefixCache; for
    # block-causal models the exact cache of completed blocks) or dual (Fast-dLLM DualCache,
    # bidirectional models only).
    kv_cache: str = "none"
    # Bidirectional caches are refreshed by a full forward when a block starts and, if > 0, on every
    # cache_refresh_steps-th step inside a block (1 = every step: equal to the uncached loop).
    cache_refresh_steps: int = 0
    # A learned unmasking policy (arXiv 2512.09106): the folder an algorithm=unmasking_grpo run
    # writes (final_unmasking_policy/). It decides which masked positions commit at each step in
    # place of remasking/schedule/threshold/factor (null = the heuristic rule above).
    unmasking_policy: str | None = None
    # Stop a sample once its first stop token is committed with nothing masked before it.
    stop_at_eos: bool = True
    # Base seed of every random draw (combined with each sample's id, step and position).
    seed: int = 0
    # Classifier-free guidance (d1's cfg_scale): logits_un + (cfg_scale + 1)(logits - logits_un),
    # logits_un from a second forward with the prompt all M (0 = off; needs kv_cache none).
    cfg_scale: float = 0.0
    # Run the per-step model forward through torch.compile (inductor, symbolic shapes: no
    # recompile per step or block). The first rollout pays the compile (tens of seconds on a CPU);
    # tokens equal eager decoding's at temperature 0 (tests/test_rollout_compile.py).
    compile: bool = False

    def __post_init__(self) -> None:
        if self.max_completion_length <= 0 or self.block_length <= 0:
            raise ValueError("rollout.max_completion_length and rollout.block_length must be positive")
        if self.max_completion_length % self.block_length:
            raise ValueError(
                f"rollout.max_completion_length={self.max_completion_length} must be a multiple of "
                f"rollout.block_length={self.block_length}"
            )
        blocks = self.max_completion_length // self.block_length
        if self.steps <= 0 or self.steps % blocks:
            raise ValueError(f"rollout.steps={self.steps} must be a positive multiple of the number of blocks ({blocks})")
        if self.temperature < 0:
            raise ValueError(f"rollout.temperature={self.temperature} must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"rollout.top_k={self.top_k} must be >= 1 (or null for off)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p={self.top_p} must be in (0, 1] (or null for off)")
        for name, allowed in (("remasking", REMASKING), ("schedule", SCHEDULES), ("kv_cache", KV_CACHES), ("threshold_rule", THRESHOLD_RULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"rollout.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not 0 < self.eps < 1:
            raise ValueError(f"rollout.eps={self.eps} must be in (0, 1)")
        self._check_parallel()
        self._check_trajectory_rules()
        if self.cache_refresh_steps < 0:
            raise ValueError(f"rollout.cache_refresh_steps={self.cache_refresh_steps} must be >= 0")
        if self.cache_refresh_steps and self.kv_cache == "none":
            raise ValueError("rollout.cache_refresh_steps only applies to a cache; set rollout.kv_cache=prefix or dual, or leave it at 0")
        if self.cfg_scale < 0 or (self.cfg_scale > 0 and self.kv_cache != "none"):
            raise ValueError(f"rollout.cfg_scale={self.cfg_scale} must be >= 0, and guidance (> 0) runs without a KV cache (rollout.kv_cache=none)")

    def _check_parallel(self) -> None:
        for name in ("threshold", "editing_threshold", "early_commit_margin"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"rollout.{name}={value} must be a probability in [0, 1] (or null for off)")
        if self.threshold is not None and self.factor is not None:
            raise ValueError("rollout.threshold and rollout.factor are two parallel-decoding rules; set only one")
        if self.factor is not None and self.factor <= 0:
            raise ValueError(f"rollout.factor={self.factor} must be > 0 (or null for off)")
        if (self.threshold is not None or self.factor is not None) and self.remasking in ("random", "entropy", "left_to_right"):
            raise ValueError(
                f"rollout.threshold/factor compare probabilities, which rollout.remasking={self.remasking!r} is not; "
                "use low_confidence, maskgit_plus or topk_margin"
            )
        if self.alg_temp is not None and self.alg_temp < 0:
            raise ValueError(f"rollout.alg_temp={self.alg_temp} must be >= 0 (or null for off)")
        if self.alg_temp and (self.threshold is not None or self.factor is not None):
            raise ValueError("rollout.alg_temp samples the scheduled positions; it does not combine with rollout.threshold/factor")
        if self.max_post_steps < 0:
            raise ValueError(f"rollout.max_post_steps={self.max_post_steps} must be >= 0")
        heuristics = [n for n in ("threshold", "factor", "early_commit_margin") if getattr(self, n) is not None] + (["alg_temp"] if self.alg_temp else [])
        if self.unmasking_policy is not None and heuristics:
            raise ValueError(f"rollout.unmasking_policy decides the commits itself; set {', '.join('rollout.' + n for n in heuristics)} to null")
        if self.max_post_steps and self.editing_threshold is None:
            raise ValueError("rollout.max_post_steps runs editing steps; set rollout.editing_threshold too, or leave it at 0")

    def _check_trajectory_rules(self) -> None:
        if self.eos_min_gamma is not None:
            if not 0 <= self.eos_min_gamma <= self.eos_max_gamma <= 1:
                raise ValueError(f"rollout.eos_min_gamma={self.eos_min_gamma} and eos_max_gamma={self.eos_max_gamma} must satisfy 0 <= min <= max <= 1")
            if self.remasking not in ("low_confidence", "maskgit_plus"):
                raise ValueError(f"rollout.eos_min_gamma scales a probability score; rollout.remasking={self.remasking!r} is not one (use low_confidence or maskgit_plus)")
        if self.running_confidence:
            clashing = [name for name in ("threshold", "factor", "editing_threshold", "early_commit_margin", "alg_temp") if getattr(self, name)]
            if clashing:
                raise ValueError(f"rollout.running_confidence replaces the commit rule; unset rollout.{', rollout.'.join(clashing)}")

    @property
    def num_blocks(self) -> int:
        return self.max_completion_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks
