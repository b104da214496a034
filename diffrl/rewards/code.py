"""Code rewards: HumanEval / HumanEval+ (``check(candidate)``) and MBPP (assert lists), sandboxed.

The ground truth says which kind a row is: Python source defining ``check(candidate)``, or a JSON
list of assert statements. HumanEval rows carry no entry point, so it is the last top-level
``def`` of the prompt's code. A completion may be a fenced block, MBPP's ``[BEGIN] ... [DONE]``
or raw code, and for HumanEval either a whole function or a body continuing the prompt.

Tests are split into steps so the reward can be the fraction that pass: each top-level statement
of ``check``'s body that uses ``candidate`` is a test (a ``for`` loop over inputs is one test per
iteration, as in HumanEval+); the other statements are setup. MBPP: one test per assert.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
import sys
import textwrap
from functools import lru_cache
from typing import Any

from diffrl.rewards.extract import parse_python, python_blocks, tail
from diffrl.rewards.registry import PARSE_FAILURE, WRONG, Score, register_reward
from diffrl.rewards.sandbox import ALL_LAYERS, SandboxLimits, SandboxResult, missing_verdict_layers, run_tests, sandbox_layers

_MODES = ("fraction", "all")
_CHECK_DEF = re.compile(r"^def check\(\s*\w+", re.MULTILINE)


def _tidy(code: str) -> str:
    """Unix newlines, no trailing space, leading blank lines dropped (indentation kept)."""
    lines = code.replace("\r\n", "\n").replace("\r", "\n").rstrip().split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines) + "\n" if lines else ""


def _defines(code: str, name: str) -> bool:
    tree = parse_python(code)
    return tree is not None and any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in a completion: the last fenced Python block (preferring one that defines
    ``entry_point``, an unclosed final fence included), else MBPP's ``[BEGIN] 'code' [DONE]``,
    else the text itself up to any stray fence."""
    text = tail(text)
    blocks = python_blocks(text)
    if blocks:
        defining = [b for b in blocks if entry_point and _defines(b, entry_point)]
        return _tidy((defining or blocks)[-1])
    if "[DONE]" in text or "[BEGIN]" in text:
        code = text.split("[BEGIN]")[-1].split("[DONE]")[0].strip()
        if len(code) >= 2 and code[0] == code[-1] and code[0] in "'\"":
            code = code[1:-1]
        return _tidy(code)
    return _tidy(text.split("```")[0])


def prompt_code(row: dict[str, Any]) -> str:
    """The code of a HumanEval prompt: the last user message, minus leading lines of prose
    (the parquet's HumanEval prompts start with "Complete the following python code:")."""
    users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
    if not users:
        raise ValueError("field 'prompt' has no user message; HumanEval rows carry the code to complete in one")
    lines = users[-1].split("\n")
    for start in range(len(lines)):
        code = "\n".join(lines[start:])
        if parse_python(code) is not None:
            return code
    raise ValueError("field 'prompt' holds no Python code that parses; HumanEval rows need the function signature and docstring in the last user message")


def entry_point(code: str) -> str:
    """The function a HumanEval prompt asks for: the last top-level ``def``."""
    names = [n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not names:
        raise ValueError("field 'prompt' defines no function; HumanEval rows need the signature of the function to write")
    return names[-1]


def assemble_humaneval(prompt: str, code: str, name: str) -> str:
    """The program to test: the prompt then a whole function (it replaces the stub), or the prompt
    continued by a body (indented here if the model did not indent it)."""
    if _defines(code, name):
        return prompt + "\n" + code
    first = next(line for line in code.split("\n") if line.strip())
    return prompt + (code if first[0].isspace() else textwrap.indent(code, "    "))


def _uses(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _step(stmt: ast.stmt, param: str) -> dict[str, Any]:
    if not _uses(stmt, param):
        return {"code": ast.unparse(stmt), "test": False}
    if isinstance(stmt, ast.For) and not stmt.orelse:
        body = ast.unparse(ast.Module(body=stmt.body, type_ignores=[]))
        try:
            compile(body, "<test>", "exec")  # `break`/`continue` need the loop: keep it whole
            return {"loop": {"target": ast.unparse(stmt.target), "iter": ast.unparse(stmt.iter), "body": body}}
        except SyntaxError:
            pass
    return {"code": ast.unparse(stmt), "test": True}


def _assert_list(ground_truth: Any) -> list[str] | None:
    value = ground_truth
    if isinstance(value, str):
        if not value.lstrip().startswith("["):
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)) and value and all(isinstance(a, str) for a in value):
        return list(value)
    return None


def _check_function(tree: ast.Module) -> ast.FunctionDef:
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check" and n.args.args]
    if not checks:
        raise ValueError("field 'reward_model.ground_truth' defines no check(candidate) function")
    return checks[-1]


@lru_cache(maxsize=512)
def _check_steps(ground_truth: str) -> tuple[str, str, list[dict[str, Any]]]:
    """(check's parameter name, the module without check, check's body as steps)."""
    tree = ast.parse(ground_truth)
    check = _check_function(tree)
    param = check.args.args[0].arg
    # HumanEval+ ends with a top-level check(entry_point) call: the harness makes that call itself.
    setup = ast.unparse(ast.Module(body=[n for n in tree.body if n is not check and not _uses(n, "check")], type_ignores=[]))
    return param, setup, [_step(stmt, param) for stmt in check.body]


def ground_truth_kind(row: dict[str, Any]) -> str:
    """``asserts`` (MBPP) or ``check`` (HumanEval); raises ValueError naming the field otherwise."""
    ground_truth = row["reward_model"]["ground_truth"]
    if _assert_list(ground_truth) is not None:
        return "asserts"
    # A look for the def, not a parse: HumanEval+'s tests are megabytes of literals, parsed once
    # per row (and cached) when a sample is scored.
    if isinstance(ground_truth, str) and _CHECK_DEF.search(ground_truth):
        return "check"
    raise ValueError(
        "field 'reward_model.ground_truth' is neither a JSON list of assert statements (MBPP) nor Python source "
        "defining check(candidate) (HumanEval); the code reward cannot test this row"
    )


@lru_cache(maxsize=512)
def _free_names(asserts: tuple[str, ...]) -> list[str]:
    """Names the asserts read but do not define and Python does not provide: what the checker
    asks the candidate for (MBPP's function under test, a module the solution imported)."""
    loaded, stored = [], set()
    for source in asserts:
        tree = parse_python(source)
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Name):
                (stored.add(node.id) if isinstance(node.ctx, ast.Store) else loaded.append(node.id))
    return [n for n in dict.fromkeys(loaded) if n not in stored and not hasattr(builtins, n)]


def plan_for(completion: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """What the sandbox runs for one completion, or None if there is no parsable code in it.

    ``solution`` runs in the candidate process; ``context`` (the prompt's code), ``setup`` and
    ``steps`` (the row's tests) run in the trusted checker, which gets the candidate's ``names``
    through the data-only protocol and binds ``candidate`` to the test's ``bind_as`` parameter.
    """
    if ground_truth_kind(row) == "asserts":
        solution = extract_code(completion)
        asserts = tuple(_assert_list(row["reward_model"]["ground_truth"]) or [])
        plan = {"context": "", "names": _free_names(asserts), "candidate": None, "bind_as": None, "setup": "", "steps": [{"code": a, "test": True} for a in asserts]}
    else:
        prompt = prompt_code(row)
        name = entry_point(prompt)
        code = extract_code(completion, name)
        solution = assemble_humaneval(prompt, code, name) if code.strip() else ""
        param, setup, steps = _check_steps(row["reward_model"]["ground_truth"])
        plan = {"context": prompt, "names": [name], "candidate": name, "bind_as": param, "setup": setup, "steps": steps}
    if not solution.strip() or parse_python(solution) is None:
        return None
    return {"solution": solution, **plan}


def score_result(result: SandboxResult, mode: str) -> Score:
    """The fraction of tests passed (``fraction``) or 1 only if all passed (``all``)."""
    if result.reason:
        return Score(0.0, result.reason)
    if result.total == 0:
        return Score(0.0, WRONG)
    if mode == "all":
        return Score(1.0) if result.passed == result.total else Score(0.0, WRONG)
    return Score(result.passed / result.total)


def _check_row(row: dict[str, Any]) -> None:
    if ground_truth_kind(row) == "check":
        entry_point(prompt_code(row))


@lru_cache(maxsize=2)
def check_sandbox(allow_unsafe_code: bool) -> tuple[str, ...]:
    """The sandbox layers this machine gives (probed once per process); refuses to go on without
    the verdict isolation unless ``allow_unsafe_code``."""
    layers = sandbox_layers()
    missing = missing_verdict_layers()
    if missing and not allow_unsafe_code:
        raise ValueError(
            f"the code reward's sandbox cannot keep the verdict out of the sample's reach on this machine (missing: {', '.join(missing)}; "
            "it needs root for a uid and pid namespace of the checker's own); run as root, or set task.allow_unsafe_code=true to accept it"
        )
    return layers


def report_layers(layers: tuple[str, ...]) -> None:
    """One start-up line: the layers that hold and those this machine does not give."""
    absent = [layer for layer in ALL_LAYERS if layer not in layers]
    print(f"code reward sandbox: layers {', '.join(layers)}" + (f"; NOT available here: {', '.join(absent)}" if absent else ""), file=sys.stderr, flush=True)


@register_reward("code", check_row=_check_row, pooled=True)
def code_reward(
    completions: list[str],
    rows: list[dict],
    *,
    mode: str = "fraction",
    cpu_seconds: int = 10,
    wall_seconds: float = 30.0,
    memory_mb: int = 2048,
    disk_mb: int = 64,
    allow_unsafe_code: bool = False,
) -> list[Score]:
    """Run each completion's code against its row's tests in a sandbox (a checker and a
    sandboxed candidate per sample).

    ``mode``: ``fraction`` (DiffuCoder/open-r1: share of tests passed) or ``all`` (pass@1: 1 only if
    every test passes). A sample that breaks a sandbox rule scores 0 (sandbox_violation), one that
    runs out of time 0 (timeout), one without parsable code 0 (parse_failure). The first call
    (the runner's start-up check, with no samples) prints the layers that hold and refuses to run
    without verdict isolation unless ``allow_unsafe_code``.
    """
    if mode not in _MODES:
        raise ValueError(f"code reward mode {mode!r} is not one of {', '.join(_MODES)}")
    layers = check_sandbox(bool(allow_unsafe_code))
    if not completions:  # the runner's start-up call
        report_layers(layers)
    limits = SandboxLimits(cpu_seconds=cpu_seconds, wall_seconds=wall_seconds, memory_mb=memory_mb, disk_mb=disk_mb)
    scores = []
    for text, row in zip(completions, rows):
        plan = plan_for(text, row)
        scores.append(Score(0.0, PARSE_FAILURE) if plan is None else score_result(run_tests(plan, limits), mode))
    return scores
