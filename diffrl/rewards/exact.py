"""Exact match with the ground truth, up to whitespace (synthetic tasks, string answers)."""

from __future__ import annotations

from diffrl.rewards.extract import EXTRACT_MODES, extract_answer
from diffrl.rewards.registry import PARSE_FAILURE, WRONG, Score, ground_truth_text, register_reward


@register_reward("exact_match", check_row=lambda row: ground_truth_text(row) and None)
def exact_match_reward(completions: list[str], rows: list[dict], *, extract: str | None = None) -> list[Score]:
    """1 if the (optionally extracted) completion equals ``reward_model.ground_truth``."""
    if extract is not None and extract not in EXTRACT_MODES:
        raise ValueError(f"exact_match reward: extract={extract!r} is not one of {', '.join(EXTRACT_MODES)} (or null)")
    scores = []
    for text, row in zip(completions, rows):
        answer = extract_answer(text, extract) if extract else text
        if answer is None:
            scores.append(Score(0.0, PARSE_FAILURE))
            continue
        same = " ".join(answer.split()) == " ".join(ground_truth_text(row).split())
        scores.append(Score(1.0) if same else Score(0.0, WRONG))
    return scores
