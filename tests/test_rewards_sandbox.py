"""Sandbox escapes: each scores 0 with a reason, never hangs, never hurts the test process.

Each escape is a "solution" whose test passes only if the escape worked. The kernel layers are
also tested alone (audit hook off) where the machine grants them: the run reports which held.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from diffrl.rewards.code import code_reward
from diffrl.rewards.sandbox import SandboxLimits, run_tests
from tests.sandbox_helpers import own_sandboxes, run_leftovers

LIMITS = SandboxLimits(cpu_seconds=2, wall_seconds=10, memory_mb=1024, output_bytes=1 << 20)


def plan(solution: str, *asserts: str) -> dict:
    return {"solution": solution, "context": "", "names": ["escape"], "candidate": None, "bind_as": None, "setup": "", "steps": [{"code": a, "test": True} for a in asserts or ("assert escape() == 1",)]}


@pytest.fixture()
def listener():
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    yield server
    server.close()


def accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
        return True
    except TimeoutError:
        return False


def test_a_well_behaved_solution_passes() -> None:
    result = run_tests(plan("def escape():\n    return 1\n"), LIMITS)
    assert (result.passed, result.total, result.reason) == (1, 1, "")
    assert "audit" in result.layers and "rlimits" in result.layers


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run_tests(plan("def escape():\n    while True:\n        pass\n"), LIMITS)
    assert result.reason == "timeout" and result.passed == 0
    assert time.monotonic() - start < LIMITS.wall_seconds + 5


def test_sleeping_forever_hits_the_wall_clock() -> None:
    result = run_tests(plan("import time\ndef escape():\n    time.sleep(60)\n"), SandboxLimits(wall_seconds=3))
    assert result.reason == "timeout" and "wall" in result.detail


def test_fork_bomb() -> None:
    bomb = "import os\ndef escape():\n    while True:\n        os.fork()\n"
    result = run_tests(plan(bomb), LIMITS)
    assert result.reason == "sandbox_violation" and "os.fork" in result.detail
    assert run_leftovers(result) == []


def test_fork_bomb_without_the_audit_hook_is_held_by_the_process_limit() -> None:
    probe = run_tests(plan("def escape():\n    return 1\n"), LIMITS)
    if "nproc" not in probe.layers:
        # Not root: no uid of its own, so no process limit to test (only the audit hook holds).
        assert "uid" not in probe.layers
        return
    # Forks children that stay alive until the limit refuses one; returns how many it got.
    bomb = (
        "import os, time\n"
        "def escape():\n"
        "    n = 0\n"
        "    try:\n"
        "        while True:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(60)\n"
        "                os._exit(0)\n"
        "            n += 1\n"
        "    except OSError:\n"
        "        return n\n"
    )
    result = run_tests(plan(bomb, f"assert escape() < {LIMITS.max_processes}"), LIMITS, audit=False)
    assert (result.passed, result.total) == (1, 1) and "nproc" in result.layers
    # The children it left sleeping are gone: they died with pid 1 of the run's namespace.
    assert run_leftovers(result) == []


def test_allocating_10_gb() -> None:
    result = run_tests(plan("def escape():\n    block = bytearray(10 * 1024 ** 3)\n    return 1\n"), LIMITS)
    assert result.reason == "sandbox_violation" and "memory" in result.detail


def test_socket_to_localhost(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    connect = f"import socket\ndef escape():\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n    return 1\n"
    result = run_tests(plan(connect), LIMITS)
    assert result.reason == "sandbox_violation" and "socket" in result.detail
    assert not accepted(listener)


def test_socket_without_the_audit_hook_finds_no_network_where_namespaces_exist(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    connect = f"import socket\ndef escape():\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()\n    return 1\n"
    result = run_tests(plan(connect), LIMITS, audit=False)
    if "netns" in result.layers:
        assert result.reason == "wrong" and "OSError" in result.detail
        assert not accepted(listener)
    else:
        # Without a network namespace only the audit hook stands between the sample and the network.
        assert result.passed == 1 and accepted(listener)


def test_writing_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    write = f"def escape():\n    open({str(target)!r}, 'w').write('x')\n    return 1\n"
    result = run_tests(plan(write), LIMITS)
    assert result.reason == "sandbox_violation" and "outside the run directory" in result.detail
    assert not target.exists()
    inside = run_tests(plan("def escape():\n    open('scratch.txt', 'w').write('x')\n    return len(open('scratch.txt').read())\n"), LIMITS)
    assert inside.passed == 1


def test_writing_outside_without_the_audit_hook_finds_a_read_only_root(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    write = f"def escape():\n    open({str(target)!r}, 'w').write('x')\n    return 1\n"
    result = run_tests(plan(write), LIMITS, audit=False)
    assert "ro_root" in result.layers
    # The host's folders are not in the sandbox's root at all.
    assert result.reason == "wrong" and "FileNotFoundError" in result.detail
    assert not target.exists()


def test_the_parents_environment_and_processes_are_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFRL_TEST_SECRET", "hunter2")
    from_env = "import os\ndef escape():\n    return int('hunter2' in repr(dict(os.environ)))\n"
    # In its own pid namespace the candidate is pid 1 with no parent, and there is no /proc.
    from_proc = "import os\ndef escape():\n    return int(os.getppid() != 0 or os.path.exists('/proc/1'))\n"
    for audit in (True, False):
        for source in (from_env, from_proc):
            result = run_tests(plan(source), LIMITS, audit=audit)
            assert (result.passed, result.reason) == (0, "wrong"), result


def test_printing_100_mb() -> None:
    loud = "import sys\ndef escape():\n    sys.stdout.write('x' * (100 * 1024 * 1024))\n    return 1\n"
    start = time.monotonic()
    result = run_tests(plan(loud), LIMITS)
    assert result.reason == "sandbox_violation" and "printed more than" in result.detail
    assert time.monotonic() - start < LIMITS.wall_seconds


def test_leaving_before_the_tests_run_is_not_a_pass() -> None:
    result = run_tests(plan("import os\nos._exit(0)\ndef escape():\n    return 1\n"), LIMITS)
    assert result.reason == "wrong" and result.passed == 0
    # sys.exit is an exception like any other: the tests still run against what was defined.
    result = run_tests(plan("import sys\ndef escape():\n    return 2\nsys.exit(0)\n"), LIMITS)
    assert (result.passed, result.reason) == (0, "wrong")


def test_native_calls_and_process_helpers_are_refused() -> None:
    native = "import ctypes\ndef escape():\n    ctypes.CDLL(None).getpid()\n    return 1\n"
    spawn = "import subprocess\ndef escape():\n    return 1\n"
    assert run_tests(plan(native), LIMITS).reason == "sandbox_violation"
    assert run_tests(plan(spawn), LIMITS).reason == "sandbox_violation"


def test_the_run_directory_is_removed_and_nothing_is_left_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    locked = "import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\ndef escape():\n    return 1\n"
    result = run_tests(plan(locked), LIMITS)
    assert result.passed == 1
    assert list(tmp_path.iterdir()) == []
    assert run_leftovers(result) == []


def test_code_reward_reasons_for_escapes(shared: Path) -> None:
    from diffrl.data import load_rows

    row = load_rows(str(shared / "data" / "rl" / "test" / "mbpp.parquet"))[6]  # square_perimeter
    completions = [
        "def square_perimeter(a):\n    return 4 * a\n",
        "def square_perimeter(a):\n    while True:\n        pass\n",
        "import socket\ndef square_perimeter(a):\n    socket.socket()\n    return 4 * a\n",
    ]
    scores = code_reward(completions, [row] * 3, cpu_seconds=2, wall_seconds=10)
    assert [(s.value, s.reason) for s in scores] == [(1.0, ""), (0.0, "timeout"), (0.0, "sandbox_violation")]


def test_a_sample_past_the_pools_deadline_leaves_no_process_or_directory(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffrl.data import load_rows
    from diffrl.rewards import RewardRunner, RewardSpec

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the worker's sandboxes make their directories

    row = load_rows(str(shared / "data" / "rl" / "test" / "mbpp.parquet"))[6]
    sleeper = "import time\ndef square_perimeter(a):\n    time.sleep(120)\n"
    # The worker's deadline (2 s) comes long before the sandbox's own wall clock (60 s).
    with RewardRunner([RewardSpec("code", kwargs={"wall_seconds": 60})], num_workers=1, sample_timeout_s=2.0) as runner:
        out = runner([sleeper], [row])
        assert out.reasons["code"] == ["timeout"]
        deadline = time.monotonic() + 5
        while own_sandboxes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert own_sandboxes() == []
    assert list(tmp_path.iterdir()) == []


def test_a_file_over_the_size_limit() -> None:
    big = "def escape():\n    with open('big.bin', 'wb') as f:\n        f.write(b'x' * (32 * 1024 * 1024))\n    return 1\n"
    result = run_tests(plan(big), SandboxLimits(file_size_mb=16, memory_mb=1024))
    assert result.reason == "sandbox_violation" and "file over 16 MB" in result.detail


def test_cleanup_removes_a_deep_locked_tree(tmp_path: Path) -> None:
    # The non-root path's run folder is a real directory: 1,100 levels and a chmod 0 inside.
    from diffrl.rewards.sandbox import remove_tree

    top = tmp_path / "run"
    path = str(top)
    os.mkdir(path)
    for _ in range(1100):
        path += "/d"
        os.mkdir(path)  # os.makedirs would recurse past Python's limit
    (top / "d" / "d").chmod(0)
    remove_tree(str(top))
    assert not top.exists()


def test_the_start_up_check_prints_the_layers(capfd: pytest.CaptureFixture[str]) -> None:
    from diffrl.rewards import RewardRunner, RewardSpec

    RewardRunner([RewardSpec("code")], num_workers=0)
    line = capfd.readouterr().err
    assert line.startswith("code reward sandbox: layers ") and "verdict" in line and "ro_root" in line
