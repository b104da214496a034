"""What the runner guarantees whatever a reward or a completion does: finite values inside the
reward's bounds, a deadline per sample, a reason for every zero; linear-time extraction; rewards
from config (``fn:``), including the worked example of docs/rewards.md."""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffrl.data import DataError
from diffrl.rewards import RewardRunner, RewardSpec, register_reward
from diffrl.rewards.countdown import countdown_reward
from diffrl.rewards.extract import SEARCH_CHARS, answer_tag, last_number, python_blocks
from diffrl.rewards.format import format_reward
from diffrl.rewards.math import math_reward
from diffrl.rewards.sudoku import sudoku_reward
from diffrl.trainer.build import load_task_rows
from diffrl.trainer.config import TaskConfig
from tests import pooled_rewards  # noqa: F401  (registers the pooled misbehaving rewards)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rewards.md"


def row(gt: object, **extra: object) -> dict:
    return {"reward_model": {"ground_truth": gt}, "extra_info": extra}


BAD_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "1e6": 1e6, "-0.5": -0.5, "string": "1", "none": None, "list": [1.0]}


@register_reward("test_returns_bad_values")
def returns_bad_values(completions: list[str], rows: list[dict]) -> list[object]:
    return [BAD_VALUES.get(c, 1.0) for c in completions]


@pytest.mark.parametrize("workers", [0, 1])
def test_values_outside_the_bounds_score_0_with_a_reason_and_are_counted(workers: int) -> None:
    texts = [*BAD_VALUES, "fine"]
    spec = "test_returns_bad_values" if workers == 0 else "test_pooled_bad_values"
    with RewardRunner([RewardSpec(spec)], num_workers=workers) as runner:
        out = runner(texts, [row("x")] * len(texts))
    assert out.per_reward[spec].tolist() == [0.0] * len(BAD_VALUES) + [1.0]
    assert out.reasons[spec] == ["reward_out_of_range"] * len(BAD_VALUES) + [""]
    assert out.metrics()["reward/out_of_range"] == len(BAD_VALUES) and out.errors == 0
    assert all(math.isfinite(v) for v in out.total.tolist())


def test_bounds_are_declared_per_reward() -> None:
    with RewardRunner([RewardSpec("test_worker_pid")], num_workers=1) as runner:  # bounds (0, 2**22)
        out = runner(["x"], [row("x")])
    assert out.per_reward["test_worker_pid"].item() > 1 and out.out_of_range == 0
    with pytest.raises(ValueError, match="bounds"):
        register_reward("test_bad_bounds", bounds=(1.0, float("inf")))


@register_reward("test_slow_inline")
def slow_inline(completions: list[str], rows: list[dict]) -> list[float]:
    if "slow" in completions[0]:
        try:
            while True:
                pass
        except Exception:  # a reward that swallows exceptions still cannot outlive its deadline
            pass
    return [1.0] * len(completions)


def test_an_inline_reward_past_its_per_sample_deadline_times_out() -> None:
    start = time.monotonic()
    with RewardRunner([RewardSpec("test_slow_inline")], num_workers=0, sample_timeout_s=0.5) as runner:
        out = runner(["ok", "slow", "ok"], [row("x")] * 3)
    assert out.reasons["test_slow_inline"] == ["", "timeout", ""]
    assert time.monotonic() - start < 5


def test_non_text_completions_get_a_reason_not_an_exception() -> None:
    texts = [None, 42, b"<answer>1</answer>", ["x"], "<answer>1</answer>"]
    specs = [RewardSpec("exact_match", kwargs={"extract": "tag"}), RewardSpec("format", kwargs={"tags": ["answer"]}), RewardSpec("math")]
    with RewardRunner(specs, num_workers=1) as runner:
        out = runner(texts, [row("1")] * len(texts))
    for name in ("exact_match", "format", "math"):
        assert out.reasons[name] == ["not_text"] * 4 + [""], name
    assert out.total.tolist()[-1] == 3.0


# --- extraction in linear time, on the last SEARCH_CHARS characters ---------------------------


def test_answer_extraction_is_linear_on_unclosed_tags() -> None:
    hostile = "<answer>" * 40000 + "1"  # 320 KB: the old lazy regex took minutes on this
    rows = [row("24", numbers="[1, 2, 3, 4]"), row("1234341221434321", puzzle="0" * 16)]
    start = time.monotonic()
    assert countdown_reward([hostile], rows[:1])[0].reason == "parse_failure"
    assert sudoku_reward([hostile], rows[1:])[0].reason == "parse_failure"
    assert format_reward([hostile], [row("x")])[0].reason == "parse_failure"
    assert format_reward([hostile + "\n</answer>"], [row("x")], tags=["answer"], strict=True)[0].reason == "parse_failure"
    assert python_blocks("```" * 100000) == []
    assert math_reward(["\\boxed{" * 50000], [row("1")])[0].reason == "parse_failure"
    assert time.monotonic() - start < 2.0
    # Only the tail is searched: an answer before the last SEARCH_CHARS characters is not seen.
    assert answer_tag("<answer>5</answer>" + "x" * SEARCH_CHARS) is None
    assert answer_tag("x" * 10**6 + "<answer>5</answer>") == "5"


def test_extraction_matches_the_regular_expressions_it_replaced() -> None:
    import random

    fence = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
    tag = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

    def loose(tags: list[str]) -> re.Pattern[str]:
        return re.compile(r"\s*".join(rf"<{t}>.*?</{t}>" for t in tags), re.DOTALL)

    def strict(tags: list[str]) -> re.Pattern[str]:
        return re.compile(r"\n".join(rf"<{t}>\n.*?\n</{t}>" for t in tags), re.DOTALL)

    rng = random.Random(0)
    code_pieces = ["```", "\n", "python", "py ", " ", "x", "`"]
    tag_pieces = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "x"]
    for _ in range(5000):
        text = "".join(rng.choice(code_pieces) for _ in range(rng.randint(0, 12)))
        assert python_blocks(text) == [b for t, b in fence.findall(text) if t.lower() in ("", "python", "py", "python3")], repr(text)
        text = "".join(rng.choice(tag_pieces) for _ in range(rng.randint(0, 12)))
        tags = rng.choice([["answer"], ["reasoning", "answer"]])
        assert (format_reward([text], [{}], tags=tags)[0].value == 1) == bool(loose(tags).search(text)), repr(text)
        assert (format_reward([text], [{}], tags=tags, strict=True)[0].value == 1) == bool(strict(tags).fullmatch(text.strip())), repr(text)
        # The last pair: the old findall agrees whenever no opening tag sits inside an answer.
        if text.count("<answer>") <= 1:
            found = tag.findall(text)
            assert answer_tag(text) == (found[-1].strip() if found else None), repr(text)


def test_unicode_digits_are_not_numbers() -> None:
    puzzle = "0" * 16
    # "²" and "١" pass str.isdigit(); int("²") raises. They are not cells of a grid.
    texts = ["<answer>" + "1234341221434321".replace("1", "²") + "</answer>", "<answer>" + "1234341221434321".replace("4", "١") + "</answer>"]
    scores = sudoku_reward(texts, [row("1234341221434321", puzzle=puzzle)] * 2)
    assert [s.reason for s in scores] == ["parse_failure", "parse_failure"]
    assert last_number("it is ١٢٣") is None
    assert countdown_reward(["<answer>١ + 2</answer>"], [row("3", numbers="[1, 2]")])[0].reason == "parse_failure"


@pytest.mark.parametrize("truth", [None, float("nan"), "", "  ", "None", "null"])
def test_a_null_or_empty_ground_truth_is_rejected_at_load_with_row_and_field(tmp_path: Path, truth: object) -> None:
    import pandas as pd

    good = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "1"}, "extra_info": {"index": 0}}
    bad = {**good, "reward_model": {"ground_truth": truth}}
    path = tmp_path / "rows.parquet"
    pd.DataFrame([good, bad]).to_parquet(path)
    with pytest.raises(DataError, match=r"row 1: field 'reward_model.ground_truth'"):
        load_task_rows([str(path)], [RewardSpec("math")])


def test_a_null_ground_truth_that_skipped_validation_never_scores() -> None:
    with RewardRunner([RewardSpec("math")], num_workers=0) as runner:
        out = runner(["\\boxed{None}", "\\boxed{nan}"], [row(None), row(float("nan"))])
    assert out.per_reward["math"].tolist() == [0.0, 0.0] and set(out.reasons["math"]) == {"reward_error"}


# --- rewards from config ------------------------------------------------------------------------


def doc_example(kind: str) -> str:
    """The fenced ``kind`` block of docs/rewards.md's custom-reward section."""
    section = DOCS.read_text().split("## Your own rewards", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{kind}\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def specs_from_yaml(text: str) -> list[RewardSpec]:
    task = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.create(text)["task"]))
    return task.rewards  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", [0, 1])
def test_the_documented_custom_reward_runs_from_a_file_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    (tmp_path / "my_rewards.py").write_text(doc_example("python"))
    monkeypatch.chdir(tmp_path)
    specs = specs_from_yaml(doc_example("yaml"))
    assert [s.fn for s in specs if s.fn] == ["my_rewards.py:brevity"]
    texts = ["\\boxed{4}", "\\boxed{4}" + " and so on" * 40, "\\boxed{5}"]
    with RewardRunner(specs, num_workers=workers) as runner:
        out = runner(texts, [row("4")] * 3)
    brevity = out.per_reward["brevity"].tolist()
    assert brevity[0] == 1.0 and 0.0 <= brevity[1] < 1.0 and brevity[2] == 1.0
    assert out.total.tolist()[0] == pytest.approx(2.0 + 0.5)


def test_a_custom_reward_by_dotted_path_follows_the_same_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_pkg").mkdir()
    (tmp_path / "user_pkg" / "__init__.py").write_text("")
    (tmp_path / "user_pkg" / "scoring.py").write_text("def shout(completions, rows, *, bonus=0.0):\n    return [float('nan') if c == 'nan' else min(1.0, c.count('!') / 3 + bonus) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = RewardSpec(fn="user_pkg.scoring:shout", kwargs={"bonus": 0.1}, pooled=True)
    with RewardRunner([spec], num_workers=1) as runner:
        out = runner(["!!!", "!", "nan"], [row("x")] * 3)
    assert out.per_reward["shout"].tolist() == pytest.approx([1.0, 1 / 3 + 0.1, 0.0])
    assert out.reasons["shout"][2] == "reward_out_of_range"
    with pytest.raises(ValueError, match="unexpected keyword|bonus2"):
        RewardRunner([RewardSpec(fn="user_pkg.scoring:shout", kwargs={"bonus2": 1})], num_workers=0)
    with pytest.raises(ValueError, match="registered reward"):
        RewardRunner([RewardSpec(name="math", fn="user_pkg.scoring:shout")], num_workers=0)
    for ref, message in [("user_pkg.nowhere:shout", "cannot import"), ("user_pkg.scoring:whisper", "no function"), ("shout", "package.module:function"), ("nope.py:f", "no file")]:
        with pytest.raises(ValueError, match=message):
            RewardRunner([RewardSpec(fn=ref)], num_workers=0)
    del sys.modules["user_pkg.scoring"], sys.modules["user_pkg"]
