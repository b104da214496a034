"""Evaluation metrics against their definitions: pass@k, hand-made trajectories split by
correctness, the JSONL that survives a kill mid-write, and settings that cannot run."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest
import torch

from diffrl.errors import DiffrlConfigError
from diffrl.eval.metrics import pass_at_k, summarize
from diffrl.eval.records import PartWriter, read_all, read_jsonl
from diffrl.eval.samples import SampleScorer
from diffrl.rewards import RewardRunner, RewardSpec
from diffrl.rollout import Rollout
from tests.eval_helpers import byte_tokenizer, compose_eval


def pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """The definition: the share of k-subsets of the n samples that hold a correct one."""
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_the_closed_form_and_the_definition() -> None:
    # n=5 samples, 2 correct, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10.
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_by_enumeration(n, c, k)), (n, c, k)
    # Large n stays finite where the binomials overflow a float.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def hand_made_rollout(tokenizer, texts: list[str], step_maps: list[list[int]]) -> Rollout:
    """Completions ``texts`` (+ EOS fill) finalized at ``step_maps`` (-1 for the EOS fill)."""
    width = max(len(m) for m in step_maps)
    eos = tokenizer.eos_token_id
    ids = torch.full((len(texts), width), eos)
    steps = torch.full((len(texts), width), -1)
    for b, (text, step_map) in enumerate(zip(texts, step_maps)):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(tokens) <= len(step_map)
        ids[b, : len(tokens)] = torch.tensor(tokens)
        steps[b, : len(step_map)] = torch.tensor(step_map)
    return Rollout(
        prompt_ids=torch.zeros(len(texts), 1, dtype=torch.long), prompt_mask=torch.ones(len(texts), 1, dtype=torch.bool),
        completion_ids=ids, step_map=steps, confidence=torch.ones(ids.shape), logprob=torch.zeros(ids.shape),
        fixed_mask=torch.zeros(ids.shape, dtype=torch.bool), nfe=torch.tensor([max(m) + 1 for m in step_maps]),
        sample_ids=torch.arange(len(texts)), stop_token_ids=(eos,),
    )


def test_trajectory_measures_split_by_correct_and_incorrect() -> None:
    tok = byte_tokenizer()
    row = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "4242"}, "extra_info": {"index": 9}}
    # Sample 0: right, strictly left to right, EOS decoded last (tau 1, AFP 1, TPF 1).
    # Sample 1: wrong, all five tokens (four digits and the EOS) in one step (AFP 5, TPF 5, tau undefined).
    # Sample 2: right, right to left two at a time plus the EOS alone (tau -1 with ties, AFP 5/3).
    texts = ["4242", "4243", "4242"]
    step_maps = [[0, 1, 2, 3, 4], [0, 0, 0, 0, 0], [1, 1, 0, 0, 2]]
    rollout = hand_made_rollout(tok, texts, step_maps)
    with RewardRunner([RewardSpec("exact_match")], num_workers=0) as rewards:
        records = SampleScorer(tok, rewards, "exact_match")(rollout, [row] * 3, [(0, 0), (0, 1), (0, 2)], gen_s=3.0)
    assert [r["completion"] for r in records] == texts
    assert [r["correct"] for r in records] == [True, False, True]
    assert [r["afp"] for r in records] == pytest.approx([1.0, 5.0, 5 / 3])
    assert [r["tpf"] for r in records] == pytest.approx([1.0, 5.0, 5 / 3])
    assert records[0]["kendall_tau"] == 1.0 and records[1]["kendall_tau"] is None
    # Steps [1, 1, 0, 0, 2] by hand: of the 10 position pairs, 2 tie, 4 are concordant (each
    # earlier position against the last) and 4 discordant (the first two against the middle two).
    assert records[2]["kendall_tau"] == pytest.approx(0.0)
    assert [r["step_map"] for r in records] == step_maps and [r["nfe"] for r in records] == [5, 1, 3]
    summary = summarize(records, ["exact_match"], [1, 2, 3])
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["pass@1"] == pytest.approx(2 / 3)
    assert summary["pass@2"] == 1.0 and summary["pass@3"] == 1.0
    assert summary["rollout/afp/correct"] == pytest.approx((1 + 5 / 3) / 2) and summary["rollout/afp/incorrect"] == 5.0
    assert summary["rollout/kendall_tau/correct"] == pytest.approx(0.5) and summary["rollout/kendall_tau/incorrect"] is None
    assert summary["rollout/kendall_tau"] == pytest.approx(0.5)  # the undefined sample is left out, not counted as 0
    assert summary["rollout/tpf"] == pytest.approx((1 + 5 + 5 / 3) / 3)
    assert summary["reasons"]["exact_match"] == {"ok": 2, "wrong": 1}
    assert json.loads(json.dumps(summary)) == summary


def test_rows_with_different_sample_counts_are_refused() -> None:
    base = {"correct": True, "truncated": False, "score": 1.0, "nfe": 1, "tpf": 1.0, "afp": 1.0, "length": 1, "kendall_tau": None, "rewards": {}, "reasons": {}}
    records = [{**base, "index": 0, "sample": 0}, {**base, "index": 0, "sample": 1}, {**base, "index": 1, "sample": 0}]
    with pytest.raises(ValueError, match="same n"):
        summarize(records, [], [1])


def test_a_torn_last_line_is_dropped_and_never_glued_to_the_next_record(tmp_path: Path) -> None:
    first = {"index": 0, "sample": 0, "completion": "a"}
    part = tmp_path / "samples.rank0.jsonl"
    part.write_text(json.dumps(first) + "\n" + '{"index": 1, "sample": 0, "compl')  # killed mid-write
    assert read_jsonl(part) == [first]
    writer = PartWriter(tmp_path, 0)
    writer.write([{"index": 1, "sample": 0, "completion": "b"}])
    writer.close()
    assert sorted(read_all(tmp_path)) == [(0, 0), (1, 0)]
    assert read_all(tmp_path)[(1, 0)]["completion"] == "b"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.correct_reward=code", r"eval.correct_reward='code' is not one of the task's rewards \(math, format\)"),
        ("+eval.sweep.treshold=[0.9]", r"eval.sweep key 'treshold' is not a rollout field"),
        ("+eval.sweep.threshold=[]", r"eval.sweep.threshold must be a non-empty list"),
        ("eval.num_samples=0", r"eval.num_samples=0 must be >= 1"),
        ("eval.pass_k=[0]", r"eval.pass_k=\[0\] must list positive k"),
        ("eval.kernels=cuda", r"eval.kernels='cuda' is not one of auto, torch, triton"),
    ],
)
def test_bad_eval_settings_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compose_eval(override)


def test_unknown_eval_key_is_rejected_with_its_name() -> None:
    with pytest.raises(DiffrlConfigError, match=r"eval.num_sample is not a setting of EvalConfig.*did you mean eval.num_samples"):
        compose_eval("+eval.num_sample=3")


def test_eval_recipe_uses_the_training_groups() -> None:
    recipe = compose_eval("model=llada_tiny", "task=countdown", "rollout=llada_fast_dllm")
    assert recipe.task.name == "countdown" and recipe.rollout.kv_cache == "dual" and recipe.eval.output_dir == "evals/countdown"
    assert math.isclose(recipe.rollout.threshold, 0.9)


@pytest.mark.parametrize(
    ("override", "message"),
    [("trainer.val_every=-1", r"trainer.val_every=-1 must be >= 0"), ("trainer.val_size=0", r"trainer.val_size=0 must be >= 1 when trainer.val_every")],
)
def test_bad_validation_settings_name_the_field(override: str, message: str) -> None:
    from diffrl.trainer.config import to_config
    from tests.test_recipes import compose_recipe

    with pytest.raises(ValueError, match=message):
        to_config(compose_recipe("trainer.val_every=5", override))
