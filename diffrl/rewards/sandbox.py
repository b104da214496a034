"""Running untrusted test programs: one process per sample, in a fresh directory, under limits.

:func:`run_tests` starts ``sandbox_boot.py`` (which isolates, limits and guards itself before it
runs the program), reads at most ``output_bytes`` of its output, kills its whole process group at
the wall-time deadline, and turns what happened into a :class:`SandboxResult`.

Layers, strongest first (``SandboxResult.layers`` says which held for a run):

- ``netns``: a new network namespace with no interfaces (as root, or via a user namespace);
- ``uid`` + ``nproc``: as root, the sample runs as a uid of its own (``UID_BASE`` + its pid), so
  it cannot write outside its directory (file permissions), signal other processes, or exceed
  ``max_processes``; leftovers of that uid are killed afterwards;
- ``rlimits``: CPU seconds, address space, file size, open files, no core dumps;
- ``pdeathsig``: the sample dies with the process that started it;
- ``audit``: an audit hook refusing sockets, new processes, signals to others, ctypes, writes
  outside the directory and other processes' /proc entries (a tripwire that also names the
  violation; not a boundary on its own);
- always: a scrubbed environment, the wall-time kill of the process group, the output cap.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import stat
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
# Per-run uids are UID_BASE + the sandbox's pid: unique among live runs, far from real users.
UID_BASE = 2_000_000_000
_STDERR_KEPT = 4096
_REPORT_MAX = 1 << 20
_POLL_S = 0.1


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the sample): the reward raises, the runner counts an error."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-sample limits. ``wall_seconds`` covers interpreter start-up and imports too."""

    cpu_seconds: int = 10
    wall_seconds: float = 30.0
    memory_mb: int = 2048
    max_processes: int = 16
    file_size_mb: int = 16
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


def _world_traversable(path: str) -> bool:
    """Whether every directory from ``path`` up to / lets others in (o+x)."""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in [p, *p.parents] if d.is_dir())


@lru_cache(maxsize=1)
def _needs_read_capability() -> bool:
    """Whether an unprivileged uid would be locked out of the interpreter, its libraries or the
    boot script (e.g. a Python installed under /root, mode 700)."""
    places = {os.path.dirname(os.path.realpath(sys.executable)), sys.prefix, sys.base_prefix, str(BOOT.parent)}
    return not all(_world_traversable(p) for p in places)


def _scrubbed_env(workdir: str) -> dict[str, str]:
    """Nothing of the parent's environment: a minimal PATH and locale, single-threaded BLAS."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
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


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of this run's uid (children that left the process group), sweeping
    again until none is left: one may have forked between the scan and the kill."""
    for _ in range(100):
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _remove_tree(path: str) -> None:
    """Remove the run directory even if the sample took its own permissions away."""
    def unlock(func: Any, target: str, _exc: object) -> None:
        os.chmod(os.path.dirname(target), 0o700)
        func(target)

    shutil.rmtree(path, onerror=unlock)


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
                # Forked children may hold the pipes open; the sample itself is done.
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


def _classify(got: _Streams, returncode: int, limits: SandboxLimits) -> SandboxResult:
    def fail(reason: str, detail: str) -> SandboxResult:
        return SandboxResult(0, 0, reason, detail, layers)

    lines = got.report.split(b"\n")
    layers = tuple(json.loads(lines[0])) if len(lines) > 1 else ()
    report = json.loads(lines[1]) if len(lines) > 2 else None

    if got.over_output:
        return fail(SANDBOX_VIOLATION, f"printed more than {limits.output_bytes} bytes")
    if got.timed_out:
        return fail(TIMEOUT, f"still running after {limits.wall_seconds} s wall time")
    if report is not None:
        if report["violations"]:
            return SandboxResult(0, report["total"], SANDBOX_VIOLATION, "; ".join(report["violations"]), layers)
        if report["limit"] == "memory":
            return SandboxResult(0, report["total"], SANDBOX_VIOLATION, f"ran out of its {limits.memory_mb} MB of memory", layers)
        if report["limit"] == "file_size":
            return SandboxResult(0, report["total"], SANDBOX_VIOLATION, f"wrote a file over {limits.file_size_mb} MB", layers)
        detail = "; ".join(report["errors"][:3])
        return SandboxResult(report["passed"], report["total"], "" if report["passed"] else WRONG, detail, layers)
    if returncode == SETUP_FAILED:
        raise SandboxError(f"the sandbox could not set itself up:\n{got.stderr.decode(errors='replace')}")
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return fail(TIMEOUT, f"used its {limits.cpu_seconds} s of CPU time")
    how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
    return fail(WRONG, f"exited ({how}) before the tests reported: {got.stderr.decode(errors='replace')[-500:]}")


def run_tests(plan: dict[str, Any], limits: SandboxLimits = SandboxLimits(), *, audit: bool = True) -> SandboxResult:
    """Run a test plan (see :func:`diffrl.rewards.code.plan_for`) in a fresh sandbox process.

    ``audit=False`` leaves out the audit hook; tests use it to show which kernel layers hold alone.
    """
    workdir = tempfile.mkdtemp(prefix="diffrl-sandbox-")
    privileged = os.geteuid() == 0
    report_r, report_w = os.pipe()
    try:
        plan_file = os.path.join(workdir, ".plan.json")
        with open(plan_file, "w", encoding="utf-8") as f:
            json.dump(plan, f)
        cfg = {
            "plan_file": plan_file,
            "result_fd": report_w,
            "parent_pid": os.getpid(),
            "cpu_seconds": limits.cpu_seconds,
            "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb,
            "max_processes": limits.max_processes,
            "drop_privileges": privileged,
            "uid_base": UID_BASE,
            "keep_read_capability": privileged and _needs_read_capability(),
            "audit": audit,
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(BOOT), json.dumps(cfg)],
            cwd=workdir,
            env=_scrubbed_env(workdir),
            stdin=subprocess.DEVNULL,
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
            _kill_group(proc, privileged)
        return _classify(got, proc.returncode, limits)
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        _remove_tree(workdir)


def _kill_group(proc: subprocess.Popen, privileged: bool) -> None:
    """Kill the sample's process group (and, as root, anything left running under its uid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if privileged:
        _kill_uid(UID_BASE + proc.pid)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
