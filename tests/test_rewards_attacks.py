"""Escape and reward-hacking attempts against the code reward's sandbox, grouped by mechanism.

Each attack is a "solution" whose test would pass only if the attack worked. Every one must
score 0 with the reason named, leave no process of its run and no file of its run behind, and get
its verdict from a checker that is still alive (a dead checker raises SandboxError instead of
returning a result). ``audit=False`` runs show the kernel layers holding without the audit hook.
Leftovers are looked for only among this test's own runs (their uids, their run folder).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from diffrl.rewards.sandbox import SandboxLimits, SandboxResult, run_tests
from tests.sandbox_helpers import run_leftovers

LIMITS = SandboxLimits(cpu_seconds=2, wall_seconds=15, memory_mb=1024, max_processes=16, file_size_mb=16, disk_mb=64, max_files=1024)


@pytest.fixture()
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder this test's sandbox runs make their temporary files in (checked empty after)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture()
def host(tmp_path: Path) -> Path:
    """A folder of the host that attacks try to reach."""
    folder = tmp_path / "host"
    folder.mkdir()
    return folder


def attack(runs: Path, solution: str, *asserts: str, audit: bool = True, limits: SandboxLimits = LIMITS) -> SandboxResult:
    """Run one attack and check what every attack must leave: nothing."""
    steps = [{"code": a, "test": True} for a in asserts or ("assert escape() == 1",)]
    plan = {"solution": solution, "context": "", "names": ["escape"], "candidate": None, "bind_as": None, "setup": "", "steps": steps}
    result = run_tests(plan, limits, audit=audit)
    assert "verdict" in result.layers, result.layers
    assert result.total <= len(steps)  # the checker counted the tests, whatever the sample said
    assert run_leftovers(result) == []
    assert list(runs.iterdir()) == []
    return result


def zero(result: SandboxResult, reason: str, detail: str = "") -> None:
    assert (result.passed, result.reason) == (0, reason), result
    assert detail in result.detail, result.detail


# --- forged reports -------------------------------------------------------------------------

FORGED = '{"passed": 1000000, "total": 1000000, "reason": "", "detail": "", "ok": 1, "names": {"escape": ["value", 1]}}'


def test_a_verdict_written_to_every_descriptor_is_not_read(runs: Path) -> None:
    solution = f"import os\nfor fd in range(256):\n    try:\n        os.write(fd, {FORGED!r}.encode() + b'\\n')\n    except OSError:\n        pass\ndef escape():\n    return 0\n"
    # Its forged line lands in the reply pipe out of turn: the checker sees a broken protocol.
    zero(attack(runs, solution), "sandbox_violation", "protocol")


def test_a_printed_verdict_is_only_output(runs: Path) -> None:
    solution = f"import sys\nprint({FORGED!r})\nsys.stderr.write({FORGED!r} + '\\n')\ndef escape():\n    print({FORGED!r})\n    return 0\n"
    zero(attack(runs, solution), "wrong")


@pytest.mark.parametrize("value", ["float('nan')", "float('inf')", "1e6", "-1e300"])
def test_a_harness_patched_to_reply_any_number_only_gives_that_answer(runs: Path, value: str) -> None:
    # The sample rewrites its own side of the protocol to answer every call with one number.
    solution = (
        "import sys\n"
        "wire = sys.modules['sandbox_wire']\n"
        "real = wire.dumps\n"
        f"wire.dumps = lambda message: real({{**message, 'ok': {value}, 'passed': 10 ** 6}})\n"
        "def escape(x):\n    return 0\n"
    )
    result = attack(runs, solution, "assert escape(3) == 9")
    zero(result, "wrong")


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("b'{\"ok\": ' + b'[' * 100000 + b']' * 100000 + b'}\\n'", "protocol"),  # nesting bomb
        ("b'{\"ok\": [\"x\", 1]}\\n'", "tag"),  # not an encoding of plain data
        ("b'{\"ok\": ' + b'9' * 5000 + b'}\\n'", "protocol"),  # an int past Python's digit limit
        ("b'{\"ok\": [\"l\", [' + b'1,' * 1200000 + b'1]]}\\n'", "values"),  # too many values
        ("b'not json at all\\n'", "protocol"),
        ("b'[1, 2]\\n'", "protocol"),
    ],
)
def test_a_malformed_reply_fails_the_whole_sample(runs: Path, reply: str, why: str) -> None:
    solution = f"import sys\nwire = sys.modules['sandbox_wire']\ndef escape():\n    wire.dumps = lambda message: {reply}\n    return 0\n"
    zero(attack(runs, solution), "sandbox_violation", why)


def test_a_reply_over_the_size_cap_fails_the_whole_sample(runs: Path) -> None:
    zero(attack(runs, "def escape():\n    return 'x' * (20 * 1024 * 1024)\n"), "sandbox_violation", "bytes")


# --- harness patching -------------------------------------------------------------------------


def test_patching_the_checker_code_in_its_own_memory_changes_nothing(runs: Path) -> None:
    solution = (
        "import sys, builtins\n"
        "checker = sys.modules['sandbox_checker']\n"
        "checker.Outcome.test = lambda self, source, namespace: (setattr(self, 'passed', self.passed + 1), setattr(self, 'total', self.total + 1))\n"
        "checker.Remote.__call__ = lambda self, *a, **k: 1\n"
        "boot = sys.modules['__main__']\n"
        "boot._verdict = lambda *a, **k: {'passed': 1, 'total': 1, 'reason': '', 'detail': ''}\n"
        "builtins.AssertionError = type('Nope', (Exception,), {})\n"
        "def escape():\n    return 0\n"
    )
    zero(attack(runs, solution), "wrong")


def test_rewriting_every_counter_it_can_find_changes_nothing(runs: Path) -> None:
    solution = (
        "import gc\n"
        "def escape():\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, dict) and 'passed' in o:\n"
        "            o['passed'] = 10 ** 6\n"
        "        if type(o).__name__ in ('Outcome', 'Channel', 'Candidate'):\n"
        "            o.passed = o.total = 10 ** 6\n"
        "    return 0\n"
    )
    zero(attack(runs, solution), "wrong")


def test_the_answer_key_is_not_in_the_candidates_memory(runs: Path) -> None:
    # The expected value sits only in the test; the sample scans every object it can reach.
    solution = (
        "import gc\n"
        "def escape():\n"
        "    needle = ''.join(map(chr, [75, 69, 89, 45, 55, 51, 49]))\n"
        "    for o in gc.get_objects():\n"
        "        items = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()\n"
        "        for item in list(items):\n"
        "            if isinstance(item, str) and needle in item and item != needle:\n"
        "                return 'KEY-731'\n"
        "    return 'not found'\n"
    )
    zero(attack(runs, solution, "assert escape() == 'KEY-731'"), "wrong")


# --- always-equal objects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "returned",
    [
        "type('Eq', (), {'__eq__': lambda s, o: True, '__ne__': lambda s, o: False, '__hash__': lambda s: 0})()",
        "type('Eq', (int,), {'__eq__': lambda s, o: True, '__hash__': int.__hash__})(0)",
        "type('Eq', (str,), {'__eq__': lambda s, o: True, '__hash__': str.__hash__, '__str__': lambda s: 'no'})('no')",
        "type('Eq', (list,), {'__eq__': lambda s, o: True})()",
        "type('Eq', (float,), {'__eq__': lambda s, o: True, '__hash__': float.__hash__})(0.5)",
        "type('Eq', (tuple,), {'__eq__': lambda s, o: True, '__hash__': tuple.__hash__})()",
        "type('Liar', (), {'__class__': property(lambda s: int)})()",
        "iter([42])",
        "[[[]]] * 3 if False else eval('[' * 200 + ']' * 200)",
    ],
)
def test_an_object_that_equals_everything_is_not_plain_data(runs: Path, returned: str) -> None:
    zero(attack(runs, f"def escape():\n    return {returned}\n", "assert escape() == 42"), "wrong")


# --- early exit -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solution", "detail"),
    [
        ("import os\nos._exit(0)\ndef escape():\n    return 1\n", "exited"),
        ("import os\ndef escape():\n    os._exit(0)\n", "exited"),
        ("import sys\ndef escape():\n    sys.exit(0)\n", "SystemExit"),
        ("def escape():\n    raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        ("import os\ndef escape():\n    os.abort()\n", "signal SIG"),
        ("import os\ndef escape():\n    os.closerange(0, 1024)\n    return 1\n", "exited"),
        ("import atexit, os\natexit.register(lambda: os.write(1, b'passed'))\ndef escape():\n    raise SystemExit(0)\n", "SystemExit"),
    ],
)
def test_leaving_early_is_not_a_pass(runs: Path, solution: str, detail: str) -> None:
    result = attack(runs, solution)
    zero(result, "wrong", detail)
    assert "timeout" not in result.reason  # a signal that is not the CPU limit is not a timeout


# --- audit-hook bypass: the kernel layers hold alone -------------------------------------------


def test_hiding_a_refused_operation_from_the_hook_gains_nothing(runs: Path) -> None:
    solution = (
        "import gc\n"
        "def escape():\n"
        "    try:\n"
        "        open('/escaped', 'w').write('x')\n"
        "    except OSError:\n"
        "        pass\n"
        "    for o in gc.get_objects():\n"
        "        if type(o).__name__ == 'Guard':\n"
        "            o.violations.clear()\n"
        "    import os\n"
        "    return int(os.path.exists('/escaped'))\n"
    )
    zero(attack(runs, solution), "wrong")
    assert not os.path.exists("/escaped")


@pytest.mark.parametrize(
    "solution",
    [
        "import _posixsubprocess\ndef escape():\n    return 1\n",
        "import ctypes\ndef escape():\n    return ctypes.CDLL(None).getpid() * 0 + 1\n",
        "import subprocess\ndef escape():\n    return 1\n",
        "import os\ndef escape():\n    os.posix_spawn('/bin/true', ['true'], {})\n    return 1\n",
        "import os\ndef escape():\n    os.system('true')\n    return 1\n",
    ],
)
def test_process_and_native_helpers_are_refused_by_the_hook(runs: Path, solution: str) -> None:
    zero(attack(runs, solution), "sandbox_violation")


def test_without_the_hook_native_calls_cannot_remount_or_unshare(runs: Path, host: Path) -> None:
    solution = (
        "import ctypes\n"
        "def escape():\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    ok = libc.mount(b'none', b'/', None, 32 | 1 << 5, None) == 0  # MS_REMOUNT read-write\n"
        "    ok |= libc.unshare(0x00020000) == 0\n"
        "    ok |= libc.chroot(b'/usr') == 0\n"
        "    ok |= libc.setuid(0) == 0\n"
        "    return int(ok)\n"
    )
    zero(attack(runs, solution, audit=False), "wrong")


def test_a_nested_user_namespace_cannot_undo_the_root(runs: Path) -> None:
    # The classic chroot escape needs CAP_SYS_CHROOT, which a new user namespace would grant; the
    # kernel refuses user namespaces to a chrooted process, so the host's tree stays out of reach.
    solution = (
        "import ctypes, os\n"
        "def escape():\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    libc.unshare(0x10000000 | 0x00020000)  # CLONE_NEWUSER | CLONE_NEWNS\n"
        "    os.mkdir('/sandbox/jail')\n"
        "    libc.chroot(b'/sandbox/jail')\n"
        "    for _ in range(64):\n"
        "        os.chdir('..')\n"
        "    libc.chroot(b'.')\n"
        # Host paths never bound in: the test's own folder, not /tmp, which holds the bound
        # interpreter when the virtual environment lives under it.
        f"    return int(any(os.path.exists(p) for p in ('/etc/passwd', '/work/shared', {str(runs)!r}, '/home')))\n"
    )
    zero(attack(runs, solution, audit=False), "wrong")


# --- file-system writes, every syscall family ---------------------------------------------------

# Each returns 1 only if it changed something outside the run folder. The host's folders are not
# in the sandbox's root at all; its own root is read-only.
WRITES = {
    "open": "open(TARGET, 'w').write('x')",
    "os.open": "os.close(os.open(TARGET, os.O_CREAT | os.O_WRONLY, 0o644))",
    "mkdir": "os.mkdir(TARGET)",
    "mkfifo": "os.mkfifo(TARGET)",
    "mknod-fifo": "os.mknod(TARGET, 0o600 | stat.S_IFIFO)",
    "mknod-device": "os.mknod(TARGET, 0o600 | stat.S_IFCHR, os.makedev(1, 3))",
    "symlink": "os.symlink('/sandbox', TARGET)",
    "hard link": "os.link(sys.executable, TARGET)",
    "rename": "open('/sandbox/f', 'w').close(); os.rename('/sandbox/f', TARGET)",
    "unix socket bind": "socket.socket(socket.AF_UNIX).bind(TARGET)",
    "truncate": "os.truncate(sys.executable, 0)",
    "chmod": "os.chmod(os.path.dirname(sys.executable), 0o777)",
    "utime": "os.utime(sys.executable, (0, 0))",
    "setxattr": "os.setxattr(sys.executable, 'user.x', b'1')",
    "remove": "os.remove(sys.executable)",
    "chdir then relative open": "os.chdir(os.path.dirname(sys.executable)); open('planted', 'w')",
    "chdir race": (
        "import threading\n"
        "    flip = threading.Thread(target=lambda: [os.chdir(d) for _ in range(20000) for d in ('/sandbox', '/', '/usr')])\n"
        "    flip.start()\n"
        "    for _ in range(2000):\n"
        "        try:\n"
        "            open('raced', 'w').close()\n"
        "        except OSError:\n"
        "            pass\n"
        "    flip.join()\n"
        "    if os.path.exists('/raced') or os.path.exists('/usr/raced'):\n"
        "        return 1\n"
        "    raise OSError('no race won')"
    ),
}


def write_attack(operation: str, target: str) -> str:
    return (
        "import os, socket, stat, sys\n"
        "TARGET = " + repr(target) + "\n"
        "def escape():\n"
        f"    {WRITES[operation]}\n"
        "    return 1\n"
    )


@pytest.mark.parametrize("operation", list(WRITES))
def test_writes_outside_the_run_folder_fail_without_the_hook(runs: Path, host: Path, operation: str) -> None:
    for target in (str(host / "escaped"), "/diffrl-attack-escaped"):
        result = attack(runs, write_attack(operation, target), audit=False)
        zero(result, "wrong")
        assert not os.path.lexists(target)
    assert list(host.iterdir()) == []


@pytest.mark.parametrize("operation", ["open", "os.open", "mkdir", "symlink", "rename", "truncate", "chmod", "remove"])
def test_writes_outside_the_run_folder_are_named_by_the_hook(runs: Path, host: Path, operation: str) -> None:
    result = attack(runs, write_attack(operation, str(host / "escaped")))
    zero(result, "sandbox_violation", "outside the run directory")
    assert list(host.iterdir()) == []


def test_reading_files_outside_the_interpreter_finds_nothing(runs: Path) -> None:
    secrets = ["/etc/shadow", "/etc/passwd", "/root/.bashrc", __file__, str(Path(__file__).parents[2] / "shared"), "/proc/1/environ", "/sys/kernel"]
    solution = f"import os\ndef escape():\n    return int(any(os.path.exists(p) for p in {secrets!r}))\n"
    for audit in (True, False):
        zero(attack(runs, solution, audit=audit), "wrong")


# --- exfiltration through sockets of every family ----------------------------------------------


@pytest.fixture()
def listeners(host: Path):
    """A TCP, a TCP6, a unix path and a unix abstract server on this machine."""
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    path = socket.socket(socket.AF_UNIX)
    path.bind(str(host / "s.sock"))
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0diffrl-attack-{os.getpid()}")
    servers = [tcp, tcp6, path, abstract]
    for s in servers:
        s.listen()
        s.settimeout(0.2)
    yield {"tcp": tcp.getsockname()[1], "tcp6": tcp6.getsockname()[1], "path": str(host / "s.sock"), "abstract": f"\0diffrl-attack-{os.getpid()}"}
    for s in servers:
        try:
            s.accept()[0].close()
            raise AssertionError(f"{s} accepted a connection from the sandbox")
        except TimeoutError:
            pass
        s.close()


SOCKETS = {
    "tcp": "socket.create_connection(('127.0.0.1', A['tcp']), timeout=1)",
    "tcp6": "socket.create_connection(('::1', A['tcp6']), timeout=1)",
    "unix path": "socket.socket(socket.AF_UNIX).connect(A['path'])",
    "unix abstract": "socket.socket(socket.AF_UNIX).connect(A['abstract'])",
    "udp": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', A['tcp']))",
    "raw packet": "socket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
    "dns": "socket.getaddrinfo('example.com', 80)",
}


@pytest.mark.parametrize("family", list(SOCKETS))
def test_sockets_of_every_family_reach_nothing(runs: Path, listeners: dict, family: str) -> None:
    solution = f"import socket\nA = {listeners!r}\ndef escape():\n    {SOCKETS[family]}\n    return 1\n"
    zero(attack(runs, solution, audit=False), "wrong")
    zero(attack(runs, solution), "sandbox_violation", "socket")


# --- fork storms ---------------------------------------------------------------------------------


def test_a_fork_storm_hopping_pids_is_gone_with_the_verdict(runs: Path) -> None:
    storm = (
        "import os, time\n"
        "def hop():\n"
        "    while True:\n"
        "        try:\n"
        "            if os.fork():\n"
        "                os._exit(0)\n"
        "        except OSError:\n"
        "            time.sleep(0.001)\n"
        "def escape():\n"
        "    for _ in range(8):\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                hop()\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(0.3)\n"
        "    return 0\n"
    )
    zero(attack(runs, storm, audit=False), "wrong")


def test_a_daemon_that_left_the_session_is_gone_with_the_verdict(runs: Path) -> None:
    daemon = (
        "import os, time\n"
        "def escape():\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(120)\n"
        "        os._exit(0)\n"
        "    time.sleep(0.1)\n"
        "    return 0\n"
    )
    zero(attack(runs, daemon, audit=False), "wrong")


def test_forks_and_threads_stop_at_the_process_limit(runs: Path) -> None:
    bomb = (
        "import os, threading, time\n"
        "def escape():\n"
        "    n = 0\n"
        "    try:\n"
        "        while True:\n"
        "            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "            n += 1\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "    try:\n"
        "        while True:\n"
        "            if os.fork() == 0:\n"
        "                time.sleep(30)\n"
        "            n += 1\n"
        "    except OSError:\n"
        "        return n\n"
    )
    zero(attack(runs, bomb, f"assert escape() > {LIMITS.max_processes}", audit=False), "wrong")
    zero(attack(runs, bomb), "sandbox_violation", "os.fork")


def test_signals_reach_only_the_candidates_own_processes(runs: Path) -> None:
    solution = "import os, signal\ndef escape():\n    os.kill(-1, signal.SIGKILL)\n    return 0\n"
    zero(attack(runs, solution, audit=False), "wrong")
    zero(attack(runs, solution.replace("return 0", "return 1")), "sandbox_violation", "os.kill")


# --- disk and inode floods, deep trees ------------------------------------------------------------


@pytest.mark.parametrize(
    ("solution", "detail"),
    [
        ("def escape():\n    for i in range(200):\n        open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n    return 1\n", "disk"),
        ("def escape():\n    for i in range(100000):\n        open(f'f{i}', 'w').close()\n    return 1\n", "disk"),
        ("import os\ndef escape():\n    for i in range(100000):\n        os.mkdir(f'd{i}')\n    return 1\n", "disk"),
        ("def escape():\n    open('big', 'wb').write(b'x' * (64 << 20))\n    return 1\n", "file over"),
    ],
)
def test_disk_and_inode_floods_stop_at_the_runs_quota(runs: Path, solution: str, detail: str) -> None:
    zero(attack(runs, solution), "sandbox_violation", detail)
    zero(attack(runs, solution, audit=False), "sandbox_violation", detail)


def test_a_deep_locked_tree_leaves_nothing_behind(runs: Path) -> None:
    tree = (
        "import os\n"
        "def escape():\n"
        "    for i in range(1100):\n"
        "        os.mkdir('d')\n"
        "        os.chdir('d')\n"
        "        if i % 100 == 0:\n"
        "            open('f', 'w').write('x')\n"
        "    os.chdir('/sandbox')\n"
        "    os.chmod('d', 0)\n"
        "    return 0\n"
    )
    zero(attack(runs, tree, audit=False, limits=SandboxLimits(**{**LIMITS.__dict__, "max_files": 4096})), "wrong")


# --- resource exhaustion -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solution", "reason", "detail"),
    [
        ("def escape():\n    block = bytearray(10 * 1024 ** 3)\n    return 1\n", "sandbox_violation", "memory"),
        ("def escape():\n    while True:\n        pass\n", "timeout", "CPU"),
        ("def escape():\n    return 10 ** 10 ** 9\n", "timeout", "CPU"),
        ("import sys\ndef escape():\n    sys.stdout.write('x' * (100 * 1024 * 1024))\n    return 1\n", "sandbox_violation", "printed more than"),
        ("def escape():\n    files = [open('/dev/null') for _ in range(100000)]\n    return 1\n", "wrong", "Too many open files"),
        ("def escape():\n    return escape() + 1\n", "wrong", "RecursionError"),
        ("import time\ndef escape():\n    time.sleep(600)\n", "timeout", "wall"),
    ],
)
def test_resource_exhaustion(runs: Path, solution: str, reason: str, detail: str) -> None:
    # The wall clock is well past the CPU limit (2 s; pid 1 ignores SIGXCPU, so the hard limit's
    # SIGKILL ends it at 3 s of CPU) even on two busy cores.
    limits = SandboxLimits(**{**LIMITS.__dict__, "wall_seconds": 6 if reason != "timeout" or "wall" in detail else 20})
    start = time.monotonic()
    zero(attack(runs, solution, limits=limits), reason, detail)
    assert time.monotonic() - start < limits.wall_seconds + 10


# --- through the reward, on a real row ----------------------------------------------------------


def test_forgeries_score_0_through_the_code_reward(shared: Path, runs: Path) -> None:
    from diffrl.data import load_rows
    from diffrl.rewards.code import code_reward

    row = load_rows(str(shared / "data" / "rl" / "test" / "mbpp.parquet"))[6]  # square_perimeter
    completions = [
        "def square_perimeter(a):\n    return 4 * a\n",
        "def square_perimeter(a):\n    return type('Eq', (), {'__eq__': lambda s, o: True})()\n",
        f"import os\nfor fd in range(256):\n    try:\n        os.write(fd, {FORGED!r}.encode() + b'\\n')\n    except OSError:\n        pass\n",
        "import sys\nsys.modules['sandbox_checker'].Outcome.test = lambda *a: None\nsquare_perimeter = lambda a: 0\n",
    ]
    scores = code_reward(completions, [row] * len(completions), cpu_seconds=2, wall_seconds=15)
    assert [(s.value, s.reason) for s in scores] == [(1.0, ""), (0.0, "wrong"), (0.0, "sandbox_violation"), (0.0, "wrong")]
    assert list(runs.iterdir()) == []
