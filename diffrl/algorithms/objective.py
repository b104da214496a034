"""The objective one RL update minimises: the algorithm's likelihood estimator, its policy loss,
the optional NLL term and the entropy metric.

An :class:`Objective` maps ``(model, batch, seed)`` to a loss and the weighted sums its metrics
need; the trainer's :class:`~diffrl.trainer.policy.Policy` runs it inside the strategy's forward
and backpropagates. :func:`score_in_micro_batches` is the no-grad scoring pass of the old and
reference policies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch
from torch import Tensor

from diffrl.algorithms.batch import PolicyBatch
from diffrl.algorithms.estimators import LikelihoodEstimator, TokenScores
from diffrl.algorithms.registry import Algorithm
from diffrl.models.base import DiffusionLM


class Objective(Protocol):
    """One micro-batch's loss and the detached sums its metrics need."""

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> tuple[Tensor, dict[str, Tensor]]: ...


def score_in_micro_batches(model: DiffusionLM, estimator: LikelihoodEstimator, batch: PolicyBatch, seed: int, micro_batch_size: int) -> TokenScores:
    """The estimator over the whole batch, in micro-batches (old / reference scores; call without grad)."""
    parts = [estimator(model, mb, seed) for mb in batch.split(micro_batch_size)]
    return TokenScores(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(TokenScores)))


@dataclass
class UpdateTargets:
    """What the loss compares the current scores with, for every sample of the batch: advantages
    [B], per-token loss weights [B, Lc], the old and reference log-probs [B, Lc] (None: on-policy
    / no KL term) and the NLL term's weights [B, Lc] (None: no NLL term)."""

    advantages: Tensor
    weights: Tensor
    old_logp: Tensor | None = None
    ref_logp: Tensor | None = None
    nll_weights: Tensor | None = None

    def select(self, index: Tensor | slice) -> "UpdateTargets":
        """Rows ``index`` of every target."""
        return replace(self, **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index] for f in fields(self)})


@dataclass
class PolicyObjective:
    """The algorithm's loss on a micro-batch against its targets.

    loss = algorithm.loss(l, l_old, A, w, l_ref) + nll.coef * -(sum_t w_nll l_t), with l the
    estimator's per-token scores under the current weights (``l_old = l`` detached when the update
    is on-policy); ``normalized/`` terms are already global means, the others weighted sums.
    """

    algorithm: Algorithm
    targets: UpdateTargets

    def __call__(self, model: DiffusionLM, batch: PolicyBatch, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        algorithm, t = self.algorithm, self.targets
        scores = algorithm.estimator(model, batch, seed)
        old = t.old_logp if t.old_logp is not None else scores.logp.detach()
        loss, terms = algorithm.loss(scores.logp, old, t.advantages, t.weights, ref_logp=t.ref_logp)
        terms["actor/entropy"] = (scores.entropy * t.weights).sum()
        if algorithm.nll is not None and t.nll_weights is not None:
            nll = -(scores.logp * t.nll_weights).sum()
            loss = loss + algorithm.nll.coef * nll
            terms["normalized/actor/nll_loss"] = nll.detach()
        return loss, terms
