"""The denoising loop: blocks in rounds, steps within a block, one decision per step.

Every row works on its own block of the current round (see :mod:`diffrl.rollout.canvas`). A step
runs the rows that still have something to do in their block through the runner (which asks the
KV-cache plan what to compute), decodes a token for each masked (and, when editing, each
decoded) position of those blocks without materialising [batch, length, vocab], asks the
:class:`~diffrl.rollout.unmasking.UnmaskingRule` what to commit and edit, and records it. Samples whose first stop token is committed with nothing
masked before it leave the batch and free their cache.

Step numbering is per sample: ``step`` is the number of steps that sample has taken part in, so
its random draws, keyed by (seed, sample id, step, position), do not depend on the rest of the
batch or on the cache, and cached and uncached loops draw the same numbers. Steps in which a
schedule commits nothing for a sample are skipped for it (they would change nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels import decode_step
from diffrl.models.base import DiffusionLM
from diffrl.rng import STREAM_REMASK, counter_hash, counter_uniform
from diffrl.rollout.cache import make_cache
from diffrl.rollout.canvas import BlockGrid, Canvas
from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.prediction_record import PredictionRecord
from diffrl.rollout.runner import Runner
from diffrl.rollout.trajectory import EditLog, Rollout, first_stop
from diffrl.rollout.trajectory_rules import running_confidence_remask
from diffrl.rollout.unmasking import Candidates, LearnedUnmaskingRule, make_rule
from diffrl.rollout.unmasking_policy import FEATURES, UnmaskingPolicy, policy_from_path


def finished_rows(completion: Tensor, mask_id: int, stop_ids: Tensor) -> Tensor:
    """Rows whose first stop token is committed and has no mask before it."""
    length = completion.shape[1]
    first = first_stop(completion, stop_ids)
    before = torch.arange(length, device=completion.device)[None, :] < first[:, None]
    return (first < length) & ~((completion == mask_id) & before).any(1)


def check_inputs(prompt_ids: Tensor, prompt_mask: Tensor, cfg: RolloutConfig, fixed_tokens: Tensor | None, mask_id: int) -> None:
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_mask {tuple(prompt_mask.shape)} must have the shape of prompt_ids {tuple(prompt_ids.shape)}")
    real = prompt_mask.bool()
    if not real.any(1).all():
        raise ValueError(f"prompt rows {(~real.any(1)).nonzero().flatten().tolist()} have no real token; drop them before generate")
    if (real[:, :-1] & ~real[:, 1:]).any():
        raise ValueError("prompt_mask must be left-padded (padding first, then the prompt); re-encode the prompts with left padding")
    if fixed_tokens is not None:
        expected = (prompt_ids.shape[0], cfg.max_completion_length)
        if tuple(fixed_tokens.shape) != expected:
            raise ValueError(f"fixed_tokens must be [batch, rollout.max_completion_length] = {expected}, got {tuple(fixed_tokens.shape)}")
        if (fixed_tokens == mask_id).any():
            raise ValueError("fixed_tokens contains the mask token id; use -1 for positions left to the model")


@torch.no_grad()
def generate(
    model: DiffusionLM,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    cfg: RolloutConfig,
    *,
    sample_ids: Tensor | None = None,
    fixed_tokens: Tensor | None = None,
    unmasking_policy: UnmaskingPolicy | None = None,
) -> Rollout:
    """Generate ``cfg.max_completion_length`` tokens after each left-padded prompt.

    The engine samples with ``model``'s current parameters in place (no copy), so right after an
    optimizer step it generates with the updated weights. ``sample_ids`` [B] key each sample's
    random draws (default ``arange(B)``), so a sample's output does not depend on what else is in
    the batch. ``fixed_tokens`` [B, G] (-1 = free) are written into the completion before decoding
    and never remasked or edited (inpainting). ``unmasking_policy`` decides the commits (default:
    the one at ``cfg.unmasking_policy``, if set; else the configured heuristic rule).
    """
    facts = model.facts
    check_inputs(prompt_ids, prompt_mask, cfg, fixed_tokens, facts.mask_token_id)
    bsz, device = prompt_ids.shape[0], prompt_ids.device
    grid = BlockGrid.build(prompt_mask, cfg, facts)
    canvas = Canvas.start(prompt_ids, prompt_mask, grid.canvas_width, cfg, facts, fixed_tokens)
    runner = Runner(model, canvas, make_cache(cfg, facts, canvas), bsz, cfg_scale=cfg.cfg_scale, compile=cfg.compile)
    if unmasking_policy is None and cfg.unmasking_policy is not None:
        unmasking_policy = policy_from_path(cfg.unmasking_policy, device)
    ids = torch.arange(bsz, device=device) if sample_ids is None else sample_ids.to(device)
    loop = DenoisingLoop(model, canvas, grid, runner, cfg, ids, unmasking_policy)
    for rnd in range(grid.rounds):
        loop.run_block(rnd)
        if not loop.active.any():
            break
    glen = canvas.completion_length
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask.bool(),
        completion_ids=canvas.completion.clone(),
        step_map=loop.step_map[:, :glen].contiguous(),
        confidence=loop.confidence[:, :glen].contiguous(),
        logprob=loop.logprob[:, :glen].contiguous(),
        fixed_mask=canvas.fixed,
        nfe=runner.nfe,
        sample_ids=loop.sample_ids,
        stop_token_ids=facts.stop_token_ids,
        nfe_cache=runner.nfe_cache,
        edits=EditLog.cat(loop.edit_log) if loop.edit_log else None,
        **loop.decisions,
        **(loop.predictions.fields() if loop.predictions is not None else {}),
    )


def generate_chunked(
    model: DiffusionLM,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    cfg: RolloutConfig,
    *,
    chunk: int | None = None,
    sample_ids: Tensor | None = None,
    fixed_tokens: Tensor | None = None,
    unmasking_policy: UnmaskingPolicy | None = None,
) -> Rollout:
    """:func:`generate` over the batch in chunks of ``chunk`` samples (None: one chunk), concatenated
    with every per-sample record (``trainer.rollout_batch_size`` bounds a rollout's memory this way).
    Each sample's draws are keyed by its id, so the result equals one unchunked call's."""
    bsz = prompt_ids.shape[0]
    ids = torch.arange(bsz, device=prompt_ids.device) if sample_ids is None else sample_ids
    step = chunk or bsz
    parts = [
        generate(
            model, prompt_ids[s : s + step], prompt_mask[s : s + step], cfg, sample_ids=ids[s : s + step],
            fixed_tokens=None if fixed_tokens is None else fixed_tokens[s : s + step], unmasking_policy=unmasking_policy,
        )
        for s in range(0, bsz, step)
    ]
    return Rollout.concat(parts)


class DenoisingLoop:
    """The state of one rollout between steps: which samples are active, what each step decided."""

    def __init__(
        self, model: DiffusionLM, canvas: Canvas, grid: BlockGrid, runner: Runner, cfg: RolloutConfig, sample_ids: Tensor, policy: UnmaskingPolicy | None = None
    ) -> None:
        self.model, self.canvas, self.grid, self.runner, self.cfg = model, canvas, grid, runner, cfg
        self.sample_ids = sample_ids
        self.rule = make_rule(cfg, policy, eos_id=model.facts.eos_token_id)
        facts = model.facts
        self.mask_id, self.eos_id = facts.mask_token_id, facts.eos_token_id
        self.stop_ids = torch.tensor(facts.stop_token_ids, device=canvas.tokens.device)
        bsz, glen, device = canvas.tokens.shape[0], canvas.completion_length, canvas.tokens.device
        self.active = torch.ones(bsz, dtype=torch.bool, device=device)
        self.step = torch.zeros(bsz, dtype=torch.long, device=device)
        # The per-token records carry one spare column that takes the writes of positions a step
        # does not commit, so a step writes them without first finding which ones it commits.
        self.step_map = torch.full((bsz, glen + 1), -1, dtype=torch.long, device=device)
        self.confidence = torch.zeros(bsz, glen + 1, device=device)
        self.logprob = torch.zeros(bsz, glen + 1, device=device)
        self.edit_log: list[EditLog] = []
        # The learned rule's record, one slot per step a sample can take: a block-causal grid may
        # span one block more than the completion, so every rollout of a recipe has one width.
        self.decisions: dict[str, Tensor] = {}
        if isinstance(self.rule, LearnedUnmaskingRule):
            slots, block = (cfg.num_blocks + 1) * self.rule.max_steps, cfg.block_length
            self.decisions = {
                "unmask_logprob": torch.zeros(bsz, slots, device=device),
                "unmask_features": torch.zeros(bsz, slots, block, len(FEATURES), device=device),
                "unmask_commits": torch.zeros(bsz, slots, block, dtype=torch.bool, device=device),
            }

        # Same slot count as the learned rule's record, so every rollout of a recipe has one width.
        self.predictions = PredictionRecord(bsz, (cfg.num_blocks + 1) * self.rule.max_steps, glen, device) if cfg.record_predictions else None

    def run_block(self, rnd: int) -> None:
        """Denoise every active row's block of round ``rnd`` until the rule says it is done.

        A step synchronises with the device twice, to find its rows and their candidate positions
        (both shapes the forward and the decode need); everything else stays on the device. When
        every row takes the step (batch 1, or a batch in lockstep) nothing is gathered by rows."""
        c, bsz = self.canvas, self.canvas.tokens.shape[0]
        cols = self.grid.columns(rnd)
        lo = cols[:, 0]
        in_completion = (cols >= c.prompt_width) & (cols < c.prompt_width + c.completion_length)
        comp = (cols - c.prompt_width).clamp(0, c.completion_length - 1)  # completion index of each column
        spare = torch.where(in_completion, comp, c.completion_length)  # the records' column, or the spare one
        fixed = c.fixed.gather(1, comp) & in_completion
        progress = self.rule.start_block(((c.tokens.gather(1, cols) == self.mask_id) & in_completion).sum(1))
        for s in range(self.rule.max_steps):
            tokens = c.tokens.gather(1, cols)
            masked = (tokens == self.mask_id) & in_completion
            editable = self.rule.editable(in_completion & ~fixed & ~masked)
            decodes, k = progress.plan(s, masked, editable)
            rows = (self.active & decodes).nonzero().squeeze(1)
            if rows.numel() == 0:
                if not (self.active & masked.any(1)).any():
                    break
                continue
            at = slice(None) if rows.numel() == bsz else rows
            hidden = self.runner.block_hidden(rows, lo[at], cols.shape[1], rnd)
            step, committed, edited = self._decide(rows, hidden, tokens[at], masked[at], editable[at], comp[at], k[at], s)
            self._write(rows, at, cols[at], spare[at], step, committed, edited)
            if self.rule.running_confidence:
                self._remask_least_confident(rows, comp[at], (in_completion & ~fixed)[at], masked[at].sum(1) - k[at])
            if self.rule.editing:
                progress.record(rows, committed, edited)
            self.step[at] += 1
            if self.cfg.stop_at_eos:
                self._stop_finished()
        # Finished rows stopped taking steps at once; their cache rows are freed once per block.
        self.runner.drop_inactive(self.active)

    def _decide(
        self, rows: Tensor, hidden: Tensor, tokens: Tensor, masked: Tensor, editable: Tensor, comp: Tensor, k: Tensor, block_step: int
    ) -> tuple[Candidates, Tensor, Tensor]:
        """Decode the rows' candidates and ask the rule (at in-block step ``block_step``); returns
        them and (committed, edited) [n, block]."""
        step = self._decode(rows, hidden, tokens, masked, editable, comp)
        committed, edited = self.rule.decide(step, k, block_step)
        if self.predictions is not None:
            self.predictions.record(rows, self.step[rows], self.canvas.completion[rows], comp, masked, step.token, step.prob)
        if self.decisions:
            assert isinstance(self.rule, LearnedUnmaskingRule) and self.rule.last is not None
            decision, slot = self.rule.last, self.step[rows]
            self.decisions["unmask_logprob"][rows, slot] = decision.logprob
            self.decisions["unmask_features"][rows, slot] = decision.features
            self.decisions["unmask_commits"][rows, slot] = decision.commits
        return step, committed, edited

    def _decode(self, rows: Tensor, hidden: Tensor, tokens: Tensor, masked: Tensor, editable: Tensor, comp: Tensor) -> Candidates:
        """A token, its probabilities and the remasking score for every candidate position.

        Keys and uniforms are hashed only when something draws: sampling (temperature > 0) or a
        rule that reads the uniforms."""
        cfg, rule = self.cfg, self.rule
        candidate = masked | editable if rule.editing else masked
        r_i, c_i = candidate.nonzero(as_tuple=True)
        keys = uniforms = None
        if cfg.temperature > 0 or rule.needs_uniforms:
            keys = counter_hash(cfg.seed, self.sample_ids[rows][r_i], self.step[rows][r_i], comp[r_i, c_i])
        if rule.needs_uniforms:
            uniforms = counter_uniform(STREAM_REMASK, cfg.seed, keys)
        decoded = decode_step(
            hidden[r_i, c_i],
            self.model.lm_head.weight,
            temperature=cfg.temperature,
            noise_keys=keys,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            suppress_ids=(self.mask_id,),
            stats=rule.stats,
            needs=rule.needs,
        )
        scores = rule.scores(decoded, uniforms)
        if rule.editing:
            is_masked = masked[r_i, c_i]
            scores = torch.where(is_masked, scores, float("-inf"))
        # Every per-candidate value goes into the block matrices with one scatter, as float64
        # columns (token ids and float32 values are exact there): name -> (values, fill off the candidates).
        fields: dict[str, tuple[Tensor, float]] = {
            "token": (decoded.token, -1.0),
            "prob": (decoded.prob, 0.0),
            "logprob": (decoded.logprob, 0.0),
            "score": (scores, float("-inf")),
        }
        for name in ("margin", "entropy"):
            values = getattr(decoded, name)
            if values is not None:
                fields[name] = (values if not rule.editing else torch.where(is_masked, values.double(), float("nan")), float("nan"))
        if uniforms is not None:
            fields["uniform"] = (uniforms, 0.5)
        fills = torch.tensor([fill for _, fill in fields.values()], dtype=torch.float64, device=masked.device)
        out = fills.expand(*masked.shape, len(fields)).clone()
        out[r_i, c_i] = torch.stack([values.double() for values, _ in fields.values()], dim=-1)
        block = dict(zip(fields, out.unbind(-1)))
        return Candidates(
            masked=masked,
            editable=editable,
            current=tokens,
            token=block["token"].long(),
            prob=block["prob"],
            logprob=block["logprob"].float(),
            score=block["score"],
            margin=block.get("margin"),
            entropy=block.get("entropy"),
            uniform=block.get("uniform"),
        )

    def _write(self, rows: Tensor, at: Tensor | slice, cols: Tensor, spare: Tensor, step: Candidates, committed: Tensor, edited: Tensor) -> None:
        """Write the committed and edited tokens into the canvas and the trajectory record.

        ``at`` selects the step's rows (a slice when it is every row), ``cols`` [n, block] are their
        canvas columns (distinct per row), ``spare`` their record columns with the spare one outside
        the completion; positions not written keep their token and send their record to the spare
        column, so no step has to find its writes first."""
        write = committed
        if self.rule.editing:
            er, ec = edited.nonzero(as_tuple=True)
            self.edit_log.append(
                EditLog(rows[er], spare[er, ec], self.step[rows][er], step.current[er, ec], step.token[er, ec], step.prob[er, ec].float())
            )
            write = committed | edited
        index = rows[:, None] if isinstance(at, Tensor) else torch.arange(cols.shape[0], device=cols.device)[:, None]
        self.canvas.tokens[index, cols] = torch.where(write, step.token, step.current)
        pos = torch.where(write, spare, self.canvas.completion_length)
        self.step_map[index, pos] = self.step[at][:, None].expand_as(pos)
        self.confidence[index, pos] = step.prob.float()
        self.logprob[index, pos] = step.logprob

    def _remask_least_confident(self, rows: Tensor, comp: Tensor, writable: Tensor, keep_masked: Tensor) -> None:
        """Running-confidence remasking: mask again the ``keep_masked`` [n] decoded, non-fixed
        tokens of each row's block with the lowest confidence recorded when they were written."""
        completion = self.canvas.completion
        written = writable & (completion[rows[:, None], comp] != self.mask_id)
        remask = running_confidence_remask(self.confidence[rows[:, None], comp], written, keep_masked.clamp_min(0))
        rr, cc = remask.nonzero(as_tuple=True)
        completion[rows[rr], comp[rr, cc]] = self.mask_id

    def _stop_finished(self) -> None:
        """Rows that committed their first stop token with no mask before it leave the batch; what
        is still masked after it becomes EOS, never decoded."""
        completion = self.canvas.completion
        done = finished_rows(completion, self.mask_id, self.stop_ids) & self.active
        completion.masked_fill_(done[:, None] & (completion == self.mask_id), self.eos_id)
        self.active &= ~done
