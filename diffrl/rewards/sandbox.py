"""Running untrusted test programs: a trusted checker and a sandboxed candidate per sample.

:func:`run_tests` starts ``sandbox_boot.py``, which isolates itself and forks: the *checker* runs
the row's tests and counts what passes; the *candidate* runs the sample's code and is only ever
called through a data-only protocol (``sandbox_wire``), so nothing the sample does can reach the
counters, the comparisons or the verdict. This process reads the verdict from a pipe only the
checker holds, reads at most ``output_bytes`` of output, and kills everything at the wall-time
deadline.

Layers (``SandboxResult.layers`` says which held for a run; :func:`sandbox_layers` probes once):

- ``verdict``: checker and candidate in different uids and pid namespaces (root); ``split`` alone
  (the checker in its own non-dumpable process) where the machine gives no more;
- ``mntns`` + ``ro_root`` + ``disk_quota``: the candidate sees a read-only root holding only the
  interpreter and system libraries, and writes only into a tmpfs of ``disk_mb`` / ``max_files``;
- ``pidns``: the candidate is pid 1 of a namespace of its own, so killing it kills every process
  it started, however fast they fork;
- ``netns`` (+ ``ipcns``): no network, no abstract unix sockets; path sockets of the host are not
  in its root;
- ``uid`` + ``nproc``: a uid of its own (``UID_BASE`` + the boot's pid), no capabilities;
- ``rlimits``: CPU seconds, address space, file size, open files, no core dumps;
- ``pdeathsig``: the sandbox dies with the process that started it;
- ``audit``: an audit hook refusing and naming sockets, new processes, ctypes, writes outside the
  run folder (a tripwire, not a boundary);
- always: a scrubbed environment, the wall-time kill, the output cap.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from diffrl.rewards.registry import SANDBOX_VIOLATION, TIMEOUT, WRONG

BOOT = Path(__file__).with_name("sandbox_boot.py")
SETUP_FAILED = 121  # sandbox_boot's exit code when it could not set itself up
# Per-run uids are UID_BASE + the boot's pid (candidate) and UID_BASE + 2**22 + that pid (checker;
# pids stay below 2**22): unique among live runs, far from real users.
UID_BASE = 2_000_000_000
CHECKER_UID_OFFSET = 1 << 22
# What must hold for the verdict to be out of the sample's reach; without it the code reward
# refuses to run unless told ``allow_unsafe_code``.
VERDICT_LAYERS = ("verdict",)
# Every layer a run can report, strongest first (docs/rewards.md says what each stops).
ALL_LAYERS = ("verdict", "split", "mntns", "ro_root", "disk_quota", "pidns", "netns", "ipcns", "uid", "nproc", "rlimits", "pdeathsig", "audit")
_REASONS = ("", WRONG, TIMEOUT, SANDBOX_VIOLATION)
_STDERR_KEPT = 4096
_REPORT_MAX = 1 << 20
_POLL_S = 0.1


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the sample): the reward raises, the runner counts an error."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-sample limits. ``wall_seconds`` covers interpreter start-up and imports too;
    ``disk_mb`` and ``max_files`` bound everything the sample writes, all files together."""

    cpu_seconds: int = 10
    wall_seconds: float = 30.0
    memory_mb: int = 2048
    max_processes: int = 16
    file_size_mb: int = 16
    disk_mb: int = 64
    max_files: int = 1024
    output_bytes: int = 1 << 20


@dataclass(frozen=True)
class SandboxResult:
    """Tests passed and run, and for a failed run the reason (timeout / sandbox_violation /
    wrong) with a short human-readable detail."""

    passed: int
    total: int
    reason: str
    detail: str
    layers: tuple[str, ...]
    # The boot process's pid: the run's uids are UID_BASE + run_id (candidate) and
    # UID_BASE + CHECKER_UID_OFFSET + run_id (checker), so a test can look for its own leftovers.
    run_id: int = 0


def _python_dirs() -> list[str]:
    """The folders the interpreter and its packages live in (bound read-only into the sandbox)."""
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))}
    kept = sorted(d for d in dirs if not any(d != o and d.startswith(o + os.sep) for o in dirs))
    return [d for d in kept if d not in ("/", "/usr")]


def _scrubbed_env() -> dict[str, str]:
    """Nothing of the parent's environment: a minimal PATH and locale, single-threaded BLAS."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def processes_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found.append(int(entry.name))
        except (OSError, KeyError, ValueError):
            continue
    return found


def _kill_uid(uid: int, deadline_s: float = 5.0) -> None:
    """SIGKILL every process of a run's uid until none is left (used when the checker did not end
    the run itself; with a pid namespace they are already dying and cannot fork)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    raise SandboxError(f"processes of sandbox uid {uid} survived SIGKILL: {processes_of_uid(uid)}")


def remove_tree(path: str) -> None:
    """Remove a folder whatever the sample did to it: no permissions, trees thousands of levels
    deep (``rm`` walks them without recursion limits)."""
    if not os.path.lexists(path):
        return
    try:
        os.rmdir(path)  # the usual case: the run's files lived in its own tmpfs, gone with it
        return
    except OSError:
        pass
    subprocess.run(["chmod", "-R", "u+rwx", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Streams:
    report: bytes = b""
    stderr: bytes = b""
    output: int = 0
    over_output: bool = False
    timed_out: bool = False


def _collect(proc: subprocess.Popen, report_fd: int, limits: SandboxLimits) -> _Streams:
    """Read the report and (capped) output until every pipe closes or the wall deadline passes."""
    got = _Streams()
    deadline = time.monotonic() + limits.wall_seconds
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")  # type: ignore[arg-type]
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")  # type: ignore[arg-type]
        sel.register(report_fd, selectors.EVENT_READ, "report")
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got.timed_out = True
                return got
            events = sel.select(min(remaining, _POLL_S))
            if not events and _exited(proc):
                return got
            for key, _ in events:
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.data == "report":
                    got.report = (got.report + chunk)[:_REPORT_MAX]
                else:
                    got.output += len(chunk)
                    if key.data == "stderr" and len(got.stderr) < _STDERR_KEPT:
                        got.stderr += chunk[: _STDERR_KEPT - len(got.stderr)]
                    if got.output > limits.output_bytes:
                        got.over_output = True
                        return got
    return got


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the process has exited, without reaping it (its pid stays its group's id)."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _verdict(lines: list[bytes]) -> dict[str, Any] | None:
    """The checker's verdict line, checked for shape (it comes from our own trusted process)."""
    if len(lines) < 3:
        return None
    verdict = json.loads(lines[1])
    ok = (
        isinstance(verdict, dict)
        and type(verdict.get("passed")) is int
        and type(verdict.get("total")) is int
        and 0 <= verdict["passed"] <= verdict["total"]
        and verdict.get("reason") in _REASONS
    )
    if not ok:
        raise SandboxError(f"malformed verdict from the checker: {lines[1][:200]!r}")
    return verdict


def _classify(got: _Streams, proc: subprocess.Popen, limits: SandboxLimits) -> SandboxResult:
    lines = got.report.split(b"\n")
    layers = tuple(json.loads(lines[0])) if len(lines) > 1 else ()

    def fail(reason: str, detail: str) -> SandboxResult:
        return SandboxResult(0, 0, reason, detail, layers, proc.pid)

    if got.over_output:
        return fail(SANDBOX_VIOLATION, f"printed more than {limits.output_bytes} bytes")
    if got.timed_out:
        return fail(TIMEOUT, f"still running after {limits.wall_seconds} s wall time")
    verdict = _verdict(lines)
    if verdict is not None:
        return SandboxResult(verdict["passed"], verdict["total"], verdict["reason"], str(verdict.get("detail", "")), layers, proc.pid)
    stderr = got.stderr.decode(errors="replace")
    if proc.returncode == SETUP_FAILED:
        raise SandboxError(f"the sandbox could not set itself up:\n{stderr}")
    raise SandboxError(f"the checker ended (exit status {proc.returncode}) without a verdict:\n{stderr[-1000:]}")


def run_tests(plan: dict[str, Any], limits: SandboxLimits = SandboxLimits(), *, audit: bool = True) -> SandboxResult:
    """Run a test plan (see :func:`diffrl.rewards.code.plan_for`) in a fresh sandbox.

    ``audit=False`` leaves out the audit hook; tests use it to show which kernel layers hold alone.
    """
    isolate = os.geteuid() == 0
    # As root this folder is only the mount point of the sandbox's private root: nothing is
    # ever written into it on the host side.
    workdir = tempfile.mkdtemp(prefix="diffrl-sandbox-")
    report_r, report_w = os.pipe()
    # The plan goes in as an unlinked file on stdin: only the checker reads it, nothing to clean up.
    plan_file = tempfile.TemporaryFile(dir=workdir)
    try:
        plan_file.write(json.dumps(plan).encode())
        plan_file.seek(0)
        cfg = {
            "result_fd": report_w,
            "parent_pid": os.getpid(),
            "root": workdir,
            "isolate": isolate,
            "python_dirs": _python_dirs(),
            "cpu_seconds": limits.cpu_seconds,
            "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb,
            "disk_mb": limits.disk_mb,
            "max_files": limits.max_files,
            "max_processes": limits.max_processes,
            "uid_base": UID_BASE,
            "checker_uid_base": UID_BASE + CHECKER_UID_OFFSET,
            "audit": audit,
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(BOOT), json.dumps(cfg)],
            cwd=workdir,
            env=_scrubbed_env(),
            stdin=plan_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(report_w,),
            start_new_session=True,
        )
        os.close(report_w)
        report_w = -1
        try:
            got = _collect(proc, report_r, limits)
        finally:
            _end(proc, isolate)
        return _classify(got, proc, limits)
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        plan_file.close()
        remove_tree(workdir)


def _end(proc: subprocess.Popen, isolate: bool) -> None:
    """Kill the checker (the candidate dies with it) and make sure nothing of the run is left."""
    finished = proc.poll() is not None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if isolate and not (finished and proc.returncode == 0):
        # The checker did not end the run itself: the candidate (pid 1 of its namespace) dies of
        # its death signal; wait until it and everything it started are gone.
        _kill_uid(UID_BASE + proc.pid)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@lru_cache(maxsize=1)
def sandbox_layers() -> tuple[str, ...]:
    """The layers that hold on this machine, from one trivial run (cached for the process)."""
    plan = {"solution": "def f():\n    return 1\n", "context": "", "names": ["f"], "candidate": None, "bind_as": None, "setup": "", "steps": [{"code": "assert f() == 1", "test": True}]}
    result = run_tests(plan, SandboxLimits(cpu_seconds=5, wall_seconds=30))
    if (result.passed, result.total) != (1, 1):
        raise SandboxError(f"the sandbox fails a trivial test on this machine: {result.reason} {result.detail}")
    return result.layers


def missing_verdict_layers() -> list[str]:
    """The verdict-isolation layers this machine does not give (empty when the verdict is safe)."""
    return [layer for layer in VERDICT_LAYERS if layer not in sandbox_layers()]
