"""The unmasking decision of the denoising loop, in one place: built once from :class:`RolloutConfig`.

For each block the rule says how many steps it may take, whether a step needs a quota from the
schedule to run, and (per step) which masked positions commit and which decoded ones are edited.
The engine only decodes the candidates, asks the rule, and writes what it chose.

* Quota: the schedule (:mod:`~diffrl.rollout.schedule`) gives each step's count ``k``; the
  threshold and factor rules may commit without one (SDAR's dynamic rule takes every confident
  position even on a step whose count is 0), and the Fast-dLLM threshold and factor rules commit
  at least one position per step, so a block takes at most ``block_length`` steps.
* Commit: the factor rule, else a threshold rule, else (Gumbel-)top-k on the remasking score; the
  early-commit margin may add every masked position of a confident block
  (:mod:`~diffrl.rollout.selection` holds the rules).
* Learned (:class:`LearnedUnmaskingRule`): a small policy network reads the block's features and
  commits each masked position with its own probability, at least one per step (no quota); its
  decisions' log-probabilities are recorded for training (:mod:`~diffrl.rollout.unmasking_policy`).
* Trajectory rules (:mod:`~diffrl.rollout.trajectory_rules`): EOS Early Rejection scales the
  score of EOS candidates by a factor rising over the block (CJ-GRPO); running-confidence
  remasking writes every masked position and leaves the engine to mask the least confident
  decoded ones again (MDPO).
* Edit (LLaDA2.1): a decoded, non-fixed position whose new choice differs and is confident enough;
  once a block has no masks, up to ``max_post_steps`` more steps run while they change tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffrl.kernels import DecodeResult
from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.schedule import BlockSchedule
from diffrl.rollout.selection import commit_topk, decode_stats, dynamic_commit, factor_commit, remasking_scores, sample_topk, threshold_commit
from diffrl.rollout.unmasking_policy import UnmaskingPolicy, block_features, decision_logprob, sample_decision
from diffrl.rollout.trajectory_rules import block_progress, reject_eos


@dataclass
class Candidates:
    """One step's decoded positions as block-local matrices [rows, block].

    ``token``/``prob``/``logprob`` are the decoded choice, its score probability and its sampling
    log-probability (-1 / 0 / 0 off the candidates); ``score`` the remasking score and ``margin``
    the top-1 minus top-2 probability (-inf / NaN off the masked positions); ``uniform`` the keyed
    draw per position (0.5 off the candidates); ``current`` the tokens there now. ``margin`` and
    ``entropy`` are ``None`` when the rule does not read them (see :attr:`UnmaskingRule.needs`),
    ``uniform`` when it draws nothing (:attr:`UnmaskingRule.needs_uniforms`).
    """

    masked: Tensor
    editable: Tensor
    current: Tensor
    token: Tensor
    prob: Tensor
    logprob: Tensor
    score: Tensor
    margin: Tensor | None
    entropy: Tensor | None
    uniform: Tensor | None


def rule_needs(cfg: RolloutConfig, learned: bool) -> frozenset[str]:
    """The per-position statistics (``decode_step``'s ``needs``) a rule reads, and no more.

    ``prob`` always: it is the trajectory's confidence record, the low-confidence/MaskGIT score,
    what a threshold compares and what an edit must beat. ``margin`` for the margin score and the
    early-commit rule; ``entropy`` for the entropy score. The learned policy reads both as features.
    """
    needs = {"prob"}
    if learned or cfg.remasking == "topk_margin" or cfg.early_commit_margin is not None:
        needs.add("margin")
    if learned or cfg.remasking == "entropy":
        needs.add("entropy")
    return frozenset(needs)


class UnmaskingRule:
    """The configured decision: steps per block, quotas, commits and edits."""

    def __init__(self, cfg: RolloutConfig, eos_id: int | None = None) -> None:
        self.cfg = cfg
        # EOS Early Rejection scales the score of EOS candidates (needs the family's EOS id).
        self.eos_id = eos_id if cfg.eos_min_gamma is not None else None
        self.running_confidence = cfg.running_confidence
        # The distribution the remasking score reads (see decode_step's ``stats``).
        self.stats = decode_stats(cfg.remasking)
        self.editing = cfg.editing_threshold is not None
        self.commits_at_least_one = cfg.factor is not None or (cfg.threshold is not None and cfg.threshold_rule == "fast_dllm")
        # A threshold or factor rule may commit on a step whose schedule count is 0.
        self.needs_quota = not (self.commits_at_least_one or cfg.threshold is not None)
        self.max_steps = (cfg.block_length if self.commits_at_least_one else cfg.steps_per_block) + cfg.max_post_steps
        self.needs = rule_needs(cfg, learned=False)
        # The keyed per-position draws: the random score and Dream's alg_temp read them.
        self.needs_uniforms = cfg.remasking == "random" or bool(cfg.alg_temp)

    def start_block(self, num_masked: Tensor) -> "BlockProgress":
        """The per-row progress of a block that starts with ``num_masked`` masks [rows]."""
        return BlockProgress(self, num_masked)

    def editable(self, decoded: Tensor) -> Tensor:
        """Which decoded (non-fixed) positions [rows, block] a step may edit: all of them when
        editing is on, none otherwise."""
        return decoded if self.editing else torch.zeros_like(decoded)

    def scores(self, decoded: DecodeResult, uniforms: Tensor | None) -> Tensor:
        """The remasking score of each decoded candidate (higher commits first), float64."""
        return remasking_scores(self.cfg.remasking, decoded, uniforms)

    def decide(self, step: Candidates, k: Tensor, block_step: int = 0) -> tuple[Tensor, Tensor]:
        """(committed, edited) [rows, block]: masked positions to commit, given the schedule's
        counts ``k`` [rows] at in-block step ``block_step``, and decoded positions to replace."""
        if self.running_confidence:
            # Every masked position is written; the engine masks the least confident ones again.
            return torch.isfinite(step.score) & step.masked, self.edits(step)
        return self.commit(step, k, block_step) & step.masked, self.edits(step)

    def commit(self, step: Candidates, k: Tensor, block_step: int = 0) -> Tensor:
        cfg, scores = self.cfg, step.score
        if self.eos_id is not None:
            assert cfg.eos_min_gamma is not None
            progress = block_progress(block_step, cfg.steps_per_block, ascending=cfg.schedule == "ascending")
            scores = reject_eos(scores, step.token, self.eos_id, cfg.eos_min_gamma + (cfg.eos_max_gamma - cfg.eos_min_gamma) * progress)
        if cfg.factor is not None:
            chosen = factor_commit(scores, cfg.factor)
        elif cfg.threshold is not None and cfg.threshold_rule == "fast_dllm":
            chosen = threshold_commit(scores, cfg.threshold)
        elif cfg.threshold is not None:
            chosen = dynamic_commit(scores, k, cfg.threshold)
        elif cfg.alg_temp:
            assert step.uniform is not None, "alg_temp draws with the keyed uniforms (needs_uniforms asks for them)"
            chosen = sample_topk(scores, k, cfg.alg_temp, step.uniform)
        else:
            chosen = commit_topk(scores, k)
        if cfg.early_commit_margin is not None:
            assert step.margin is not None, "the early-commit rule needs the margin (rule_needs asks for it)"
            confident = step.margin.nanmean(-1) >= cfg.early_commit_margin
            chosen = chosen | (confident[:, None] & torch.isfinite(scores))
        return chosen

    def edits(self, step: Candidates) -> Tensor:
        """LLaDA2.1: decoded positions whose new choice differs from the current token and has
        probability > editing_threshold."""
        if self.cfg.editing_threshold is None:
            return torch.zeros_like(step.editable)
        return step.editable & (step.token != step.current) & (step.prob > self.cfg.editing_threshold)


class BlockProgress:
    """One block under the rule, per row: the schedule's quotas and LLaDA2.1's post steps."""

    def __init__(self, rule: UnmaskingRule, num_masked: Tensor) -> None:
        cfg = rule.cfg
        self.rule = rule
        self.schedule = BlockSchedule(cfg.schedule, num_masked, cfg.steps_per_block, cfg.eps)
        self.post_steps = torch.zeros_like(num_masked)
        self.changed = torch.ones_like(num_masked, dtype=torch.bool)

    def plan(self, step: int, masked: Tensor, editable: Tensor) -> tuple[Tensor, Tensor]:
        """Which rows [rows] take step ``step`` of the block, and each row's quota ``k`` [rows]."""
        has_masks = masked.any(1)
        k = self.schedule.counts(step, masked.sum(1))
        decodes = has_masks & ((k > 0) | (not self.rule.needs_quota))
        if self.rule.editing:
            post = ~has_masks & editable.any(1) & self.changed & (self.post_steps < self.rule.cfg.max_post_steps)
            decodes |= post
            self.post_steps += post.long()
        return decodes, k

    def record(self, rows: Tensor, committed: Tensor, edited: Tensor) -> None:
        """Rows ``rows`` took a step; a post step runs again only while the last one changed tokens."""
        self.changed[rows] = committed.any(1) | edited.any(1)


@dataclass
class Decision:
    """One step of the learned rule for its rows: the policy's input [rows, block, F], the commits
    it drew [rows, block] and their log-probability [rows]."""

    features: Tensor
    commits: Tensor
    logprob: Tensor


class LearnedUnmaskingRule(UnmaskingRule):
    """The commit decision of a learned policy (paper: arXiv 2512.09106): per masked position a
    Bernoulli draw with the policy's probability, keyed by the step's uniforms (so cached and
    uncached loops draw alike), and at least one commit per step; the schedule is not used.
    Edits (LLaDA2.1) stay the configured rule's. ``last`` holds the latest step's decision."""

    def __init__(self, cfg: RolloutConfig, policy: UnmaskingPolicy) -> None:
        super().__init__(cfg)
        self.policy = policy
        self.commits_at_least_one, self.needs_quota = True, False
        self.max_steps = cfg.block_length + cfg.max_post_steps
        self.needs = rule_needs(cfg, learned=True)
        self.needs_uniforms = True
        self.last: Decision | None = None

    def commit(self, step: Candidates, k: Tensor, block_step: int = 0) -> Tensor:
        assert step.margin is not None and step.entropy is not None and step.uniform is not None, "the learned rule reads margin, entropy and draws"
        features = block_features(step.masked, step.prob, step.margin, step.entropy)
        logits = self.policy(features).to(step.prob.device)
        commits = sample_decision(logits, step.masked, step.uniform)
        self.last = Decision(features, commits, decision_logprob(logits, step.masked, commits).float())
        return commits


def make_rule(cfg: RolloutConfig, policy: UnmaskingPolicy | None, eos_id: int | None = None) -> UnmaskingRule:
    """The learned rule when a policy is given, else the configured heuristic (``eos_id``: for
    CJ-GRPO's EOS Early Rejection)."""
    return UnmaskingRule(cfg, eos_id=eos_id) if policy is None else LearnedUnmaskingRule(cfg, policy)
