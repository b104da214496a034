"""A learned unmasking policy: a single-layer transformer over the current block's per-position
features that gives each masked position a probability of committing now.

Learning Unmasking Policies for Diffusion Language Models (Jazbec et al., Apple, arXiv 2512.09106)
keeps the dLLM frozen as the environment and trains this small policy with GRPO; see
docs/unmasking_policy.md for the paper's facts and where we differ. The decision distribution
(Bernoulli per masked position, at least one commit per step) and its exact log-probability are
here, so that the rollout (which samples) and the update (which recomputes) share one definition.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# Per-position features, in this order (see block_features).
FEATURES = ("confidence", "margin", "entropy", "masked", "offset", "masked_fraction")
CONFIG_FILE, WEIGHTS_FILE = "unmasking_policy.json", "unmasking_policy.safetensors"


@dataclass
class UnmaskingPolicyConfig:
    """Size of the policy and where it starts (the ``policy`` block of algorithm/unmasking_grpo)."""

    d_model: int = 32
    num_heads: int = 2
    dim_feedforward: int = 64
    # The untrained policy is a soft confidence threshold: logit = sharpness * (confidence -
    # init_threshold) (the transformer's head starts at zero), so RL starts from a Fast-dLLM-like
    # rule instead of committing at random (null threshold: every logit starts at 0, p = 0.5).
    init_threshold: float | None = 0.9
    init_sharpness: float = 20.0

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"policy.d_model={self.d_model} must be a multiple of policy.num_heads={self.num_heads}")
        if self.init_threshold is not None and not 0 <= self.init_threshold <= 1:
            raise ValueError(f"policy.init_threshold={self.init_threshold} must be a probability (or null)")


class UnmaskingPolicy(nn.Module):
    """features [rows, block, len(FEATURES)] -> commit logits [rows, block].

    One pre-norm transformer encoder layer attends across the block's positions (masked and
    decoded), so each position's decision can depend on the others'; a linear head gives its logit,
    plus a linear skip from the raw features that carries the initial threshold rule.
    """

    def __init__(self, cfg: UnmaskingPolicyConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or UnmaskingPolicyConfig()
        self.embed = nn.Linear(len(FEATURES), cfg.d_model)
        self.layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.num_heads, cfg.dim_feedforward, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 1)
        self.skip = nn.Linear(len(FEATURES), 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.skip.weight.zero_()
            self.skip.bias.zero_()
            if cfg.init_threshold is not None:
                self.skip.weight[0, FEATURES.index("confidence")] = cfg.init_sharpness
                self.skip.bias.fill_(-cfg.init_sharpness * cfg.init_threshold)

    def forward(self, features: Tensor) -> Tensor:
        x = features.to(self.embed.weight.dtype)
        hidden = self.layer(self.embed(x))
        return (self.head(self.norm(hidden)) + self.skip(x)).squeeze(-1)


def block_features(masked: Tensor, prob: Tensor, margin: Tensor, entropy: Tensor) -> Tensor:
    """The policy's input [rows, block, len(FEATURES)] (float32) from one step's block matrices.

    At a masked position: the decoded token's probability (top-1 when greedy), the top-1 minus
    top-2 margin and the entropy (nats) of the distribution the remasking score reads; all three
    are 0 elsewhere (already decided). Everywhere: the masked flag, the offset in the block
    (0 ... 1) and the fraction of the block still masked (how far the block is, the MDP's clock).
    """
    rows, block = masked.shape
    m = masked.float()
    zero = torch.zeros_like(m)
    offset = torch.arange(block, device=masked.device, dtype=torch.float32) / max(block - 1, 1)
    columns = (
        torch.where(masked, prob.float(), zero),
        torch.where(masked, margin.float(), zero),
        torch.where(masked, entropy.float(), zero),
        m,
        offset.expand(rows, block),
        m.mean(-1, keepdim=True).expand(rows, block),
    )
    return torch.stack(columns, dim=-1)


def _best(logits: Tensor, masked: Tensor) -> Tensor:
    """The masked position with the highest logit per row (ties: the lower position)."""
    return torch.where(masked, logits, float("-inf")).argmax(-1)


def sample_decision(logits: Tensor, masked: Tensor, uniforms: Tensor) -> Tensor:
    """Commit masked position j when u_j < sigmoid(logit_j); a row with masks that drew none
    commits its most likely position instead. ``uniforms`` are the keyed draws [rows, block]."""
    commits = (uniforms < torch.sigmoid(logits.double())) & masked
    forced = masked.any(-1) & ~commits.any(-1)
    best = _best(logits, masked)
    commits[forced.nonzero().squeeze(1), best[forced]] = True
    return commits


def decision_logprob(logits: Tensor, masked: Tensor, commits: Tensor) -> Tensor:
    """log pi(D | s) [rows] of the decisions ``commits`` drawn by :func:`sample_decision`.

    With p_j = sigmoid(logit_j) over the masked set M and a = the most likely masked position:
        log pi(D) = sum_{j in M} [d_j log p_j + (1 - d_j) log(1 - p_j)]      for D != {a}
        log pi({a}) = sum_{j in M, j != a} log(1 - p_j)                      (the empty draw folds into {a})
    so the probabilities of every non-empty decision sum to 1. Rows without masks give 0.
    """
    log_p1, log_p0 = F.logsigmoid(logits), F.logsigmoid(-logits)
    m = masked.to(logits.dtype)
    bernoulli = (torch.where(commits, log_p1, log_p0) * m).sum(-1)
    best = _best(logits, masked)
    skip_best = (log_p0 * m).sum(-1) - log_p0.gather(-1, best[:, None]).squeeze(-1)
    only_best = (commits.sum(-1) == 1) & commits.gather(-1, best[:, None]).squeeze(-1)
    return torch.where(only_best, skip_best, bernoulli)


def save_unmasking_policy(policy: UnmaskingPolicy, folder: str | Path) -> Path:
    """Write the policy as ``folder/unmasking_policy.{json,safetensors}`` (what rollout.unmasking_policy reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"features": list(FEATURES), **asdict(policy.cfg)}, indent=2) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


def load_unmasking_policy(folder: str | Path, device: torch.device | str = "cpu") -> UnmaskingPolicy:
    """A policy written by :func:`save_unmasking_policy`, in eval mode."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        raise FileNotFoundError(
            f"rollout.unmasking_policy={str(folder)!r} holds no {CONFIG_FILE} + {WEIGHTS_FILE}; point it at the "
            "final_unmasking_policy/ folder of an algorithm=unmasking_grpo run"
        )
    raw = json.loads((folder / CONFIG_FILE).read_text())
    features = raw.pop("features")
    if tuple(features) != FEATURES:
        raise ValueError(f"{folder} was trained on features {features}; this version computes {list(FEATURES)}")
    policy = UnmaskingPolicy(UnmaskingPolicyConfig(**raw))
    policy.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return policy.to(device).eval().requires_grad_(False)


@lru_cache(maxsize=4)
def _cached(folder: str, mtime: float, device: str) -> UnmaskingPolicy:
    return load_unmasking_policy(folder, device)


def policy_from_path(folder: str, device: torch.device) -> UnmaskingPolicy:
    """The policy at ``folder``, loaded once per file version and device (evaluation calls
    generate once per batch)."""
    weights = Path(folder) / WEIGHTS_FILE
    return _cached(str(folder), weights.stat().st_mtime if weights.exists() else 0.0, str(device))
