"""The denoising loop: semi-autoregressive blocks, a fixed number of steps per block.

Each step runs the model over the canvas of the samples still working on the block, decodes a
token for every masked position of the block (without materialising [batch, length, vocab]),
commits the positions the remasking rule picks, and records the step in the trajectory. Samples
that have committed their first stop token with nothing masked before it leave the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffrl.kernels import decode_step
from diffrl.models.base import DiffusionLM
from diffrl.rng import counter_hash
from diffrl.rollout.config import RolloutConfig
from diffrl.rollout.schedule import transfer_counts
from diffrl.rollout.strategies import commit_topk, remasking_scores
from diffrl.rollout.trajectory import Rollout


def finished_rows(completion: Tensor, mask_id: int, stop_ids: Tensor) -> Tensor:
    """Rows whose first stop token is committed and has no mask before it."""
    length = completion.shape[1]
    is_stop = torch.isin(completion, stop_ids)
    first = torch.where(is_stop.any(1), is_stop.float().argmax(1), torch.full_like(completion[:, 0], length))
    before = torch.arange(length, device=completion.device)[None, :] < first[:, None]
    return is_stop.any(1) & ~((completion == mask_id) & before).any(1)


@torch.no_grad()
def generate(
    model: DiffusionLM,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    cfg: RolloutConfig,
    *,
    sample_ids: Tensor | None = None,
    fixed_tokens: Tensor | None = None,
) -> Rollout:
    """Generate ``cfg.max_completion_length`` tokens after each left-padded prompt.

    ``sample_ids`` [B] key each sample's random draws (default ``arange(B)``), so a sample's
    output does not depend on what else is in the batch. ``fixed_tokens`` [B, G] (-1 = free)
    are written into the completion before decoding and never remasked (inpainting).
    """
    facts = model.facts
    device = prompt_ids.device
    bsz, plen = prompt_ids.shape
    glen, blen = cfg.max_completion_length, cfg.block_length
    mask_id = facts.mask_token_id
    stop_ids = torch.tensor(facts.stop_token_ids, device=device)
    sample_ids = torch.arange(bsz, device=device) if sample_ids is None else sample_ids.to(device)

    completion = torch.full((bsz, glen), mask_id, dtype=torch.long, device=device)
    fixed_mask = torch.zeros(bsz, glen, dtype=torch.bool, device=device)
    if fixed_tokens is not None:
        fixed_mask = fixed_tokens >= 0
        completion = torch.where(fixed_mask, fixed_tokens, completion)
    canvas = torch.cat((prompt_ids, completion), dim=1)
    key_mask = torch.cat((prompt_mask.bool(), torch.ones(bsz, glen, dtype=torch.bool, device=device)), dim=1)

    step_map = torch.full((bsz, glen), -1, dtype=torch.long, device=device)
    confidence = torch.zeros(bsz, glen, device=device)
    logprob = torch.zeros(bsz, glen, device=device)
    nfe = torch.zeros(bsz, dtype=torch.long, device=device)
    active = torch.ones(bsz, dtype=torch.bool, device=device)
    weight = model.lm_head.weight

    for blk in range(cfg.num_blocks):
        lo = plen + blk * blen
        schedule = transfer_counts((canvas[:, lo : lo + blen] == mask_id).sum(1), cfg.steps_per_block)
        for s in range(cfg.steps_per_block):
            step = blk * cfg.steps_per_block + s
            window_masked = canvas[:, lo : lo + blen] == mask_id
            rows = (active & (schedule[:, s] > 0) & window_masked.any(1)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            hidden = model(canvas[rows], key_mask[rows])
            r_idx, c_idx = window_masked[rows].nonzero(as_tuple=True)
            keys = counter_hash(cfg.seed, sample_ids[rows][r_idx], step, blk * blen + c_idx)
            decoded = decode_step(
                hidden[r_idx, lo + c_idx],
                weight,
                temperature=cfg.temperature,
                noise_keys=keys,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                suppress_ids=(mask_id,),
            )
            scores = torch.full((rows.numel(), blen), float("-inf"), dtype=torch.float64, device=device)
            scores[r_idx, c_idx] = remasking_scores(cfg.remasking, decoded, keys, cfg.seed)
            chosen = commit_topk(scores, schedule[rows, s])[r_idx, c_idx]
            rr, cc = rows[r_idx[chosen]], blk * blen + c_idx[chosen]
            canvas[rr, plen + cc] = decoded.token[chosen]
            step_map[rr, cc] = step
            confidence[rr, cc] = decoded.prob[chosen].float()
            logprob[rr, cc] = decoded.logprob[chosen].float()
            nfe[rows] += 1
            if cfg.stop_at_eos:
                done = finished_rows(canvas[:, plen:], mask_id, stop_ids) & active
                if done.any():
                    tail = canvas[:, plen:]
                    tail[done[:, None] & (tail == mask_id)] = facts.eos_token_id
                    active &= ~done
        if not active.any():
            break

    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask.bool(),
        completion_ids=canvas[:, plen:],
        step_map=step_map,
        confidence=confidence,
        logprob=logprob,
        fixed_mask=fixed_mask,
        nfe=nfe,
        sample_ids=sample_ids,
        stop_token_ids=facts.stop_token_ids,
    )
