"""Evaluation metrics from per-sample records: accuracy, pass@k, cost and decoding-order measures.

Every number of a summary is a function of the records in ``samples.jsonl``, so a summary can be
recomputed (and a resumed evaluation ends with the same one). Sums are kept separate from means so
that ranks can add their sums with one all-reduce (validation during training).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

# Per-sample values averaged over all samples and over the correct and the incorrect ones.
AVERAGED = ("score", "nfe", "tpf", "afp", "length", "kendall_tau")
GROUPS = ("all", "correct", "incorrect")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct among ``n`` samples (Chen et al., 2021):
    the chance that ``k`` of the samples drawn without replacement include a correct one,
    ``1 - C(n - c, k) / C(n, k)``, computed as a product to stay exact for large n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def totals(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Sums and counts of the averaged values under ``all/``, ``correct/`` and ``incorrect/``.

    Kendall's tau is undefined for some samples (fewer than two decoded tokens, or all in one
    step); it is averaged over the samples where it is defined and counted separately.
    """
    # Every key on every rank, in one order, so ranks can all-reduce the values as one vector.
    out = {f"{group}/{name}": 0.0 for group in GROUPS for name in ("count", "truncated", *AVERAGED, *(f"{k}/count" for k in AVERAGED))}
    for r in records:
        for group in ("all", "correct" if r["correct"] else "incorrect"):
            out[f"{group}/count"] += 1
            out[f"{group}/truncated"] += float(r["truncated"])
            for key in AVERAGED:
                if r[key] is not None:
                    out[f"{group}/{key}"] += float(r[key])
                    out[f"{group}/{key}/count"] += 1
    return out


def means(sums: dict[str, float], group: str = "all") -> dict[str, float | None]:
    """Per-sample means of one group (``all``, ``correct``, ``incorrect``) from :func:`totals`;
    None where no sample of the group defines the value."""
    out: dict[str, float | None] = {}
    for key in AVERAGED:
        count = sums[f"{group}/{key}/count"]
        out[key] = sums[f"{group}/{key}"] / count if count else None
    return out


def summarize(records: list[dict[str, Any]], reward_names: list[str], pass_k: list[int]) -> dict[str, Any]:
    """The summary of an evaluation from its per-sample records (timing left to the caller)."""
    if not records:
        raise ValueError("no samples to summarize")
    by_row: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        by_row[r["index"]].append(bool(r["correct"]))
    sizes = {len(v) for v in by_row.values()}
    if len(sizes) != 1:
        raise ValueError(f"rows have different numbers of samples ({sorted(sizes)}); pass@k needs the same n for every row")
    n = sizes.pop()
    sums = totals(records)
    count = sums["all/count"]
    overall = means(sums)
    out: dict[str, Any] = {"rows": len(by_row), "num_samples": n, "samples": int(count)}
    out["accuracy"] = sum(r["correct"] for r in records) / count
    for k in sorted(set(pass_k)):
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(n, sum(c), k) for c in by_row.values()) / len(by_row)
    out["score/mean"] = overall["score"]
    for name in reward_names:
        out[f"reward/{name}/mean"] = sum(r["rewards"][name] for r in records) / count
    out["response_length/mean"] = overall["length"]
    out["response_length/clip_ratio"] = sums["all/truncated"] / count
    for group in GROUPS:
        suffix = "" if group == "all" else f"/{group}"
        values = means(sums, group)
        for key in ("nfe", "tpf", "afp", "kendall_tau"):
            out[f"rollout/{key}{suffix}"] = values[key]
    out["reasons"] = {name: dict(sorted(Counter(r["reasons"][name] or "ok" for r in records).items())) for name in reward_names}
    return out


def timing(records: list[dict[str, Any]], wall_s: float) -> dict[str, float | None]:
    """Generation throughput over the records (their ``gen_s`` shares add up to the time spent
    generating, across resumed runs) and this invocation's wall time."""
    gen_s = sum(r["gen_s"] for r in records)
    tokens = sum(r["decoded"] for r in records)
    return {
        "wall_s": wall_s,
        "gen_s": gen_s,
        "tokens_per_s": tokens / gen_s if gen_s > 0 else None,
        "samples_per_s": len(records) / gen_s if gen_s > 0 else None,
    }
