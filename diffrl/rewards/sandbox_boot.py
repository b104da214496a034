"""Runs inside the sandbox process: isolate, limit, drop privileges, guard, then run the tests.

Started by :mod:`diffrl.rewards.sandbox` as ``python -I -B sandbox_boot.py CONFIG_JSON`` in a
fresh temporary directory with a scrubbed environment, so it uses the standard library only
(``diffrl`` is not importable here). The order matters: the network namespace and the privilege
drop need root, the limits must be set before untrusted code runs, and the audit hook goes last
so the harness's own setup is not refused.

The layers that hold, then the report (tests passed, tests run, refused operations), go to a pipe
the parent reads, one JSON line each; the
sample's stdout and stderr go to pipes the parent reads at most a capped number of bytes from.
Audit hooks are a tripwire, not a security boundary (C code can bypass them): the kernel layers
(network namespace, per-run uid, rlimits) are what hold where the machine allows them.
"""

import builtins
import ctypes
import errno
import json
import os
import resource
import signal
import sys
import traceback

SETUP_FAILED = 121
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_RECORDED_VIOLATIONS = 8

_libc = ctypes.CDLL(None, use_errno=True)
# Bound before the sample runs, so patching json or os does not change what is reported.
_dumps = json.dumps
_write = os.write


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def isolate_network(layers):
    """A new, empty network namespace (no interfaces up: nothing to connect to, not even loopback).
    Root can make one directly; others only through a new user namespace, where the kernel allows."""
    if _libc.unshare(CLONE_NEWNET) == 0:
        layers.append("netns")
    elif _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        layers += ["userns", "netns"]


def set_limits(cfg, layers):
    cpu = int(cfg["cpu_seconds"])
    memory = int(cfg["memory_mb"]) << 20
    file_size = int(cfg["file_size_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    layers.append("rlimits")


def drop_privileges(cfg, layers):
    """Become a uid of this run's own: no write access to anything but the run directory, no
    signals to other users' processes, and RLIMIT_NPROC counted against this run alone (root is
    exempt from it). Where the interpreter lives under a directory others cannot read, the
    capability to read and search any file is kept (and only that one)."""
    uid = os.getpid() + int(cfg["uid_base"])
    os.chown(".", uid, uid)
    n = int(cfg["max_processes"])
    resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    keep = cfg["keep_read_capability"]
    if keep:
        _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if keep:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
        _check(_libc.capset(ctypes.byref(header), data), "capset")
        layers.append("cap_dac_read_search")
    layers += ["uid", "nproc"]


def harden(cfg, layers):
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    # Die with the process that started us (set after the uid change, which clears it).
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != int(cfg["parent_pid"]):
        os._exit(SETUP_FAILED)
    layers.append("pdeathsig")


_SPAWN_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "os.startfile", "pty.spawn"}
_WRITE_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (0, 1),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
}
_REFUSED_IMPORTS = {"_posixsubprocess"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class Guard:
    """The audit hook: refuses (and records) network use, new processes, signals to other
    processes, native calls, limit changes, writes outside the run directory and reads of other
    processes' /proc entries."""

    def __init__(self, result_fd):
        self.root = os.path.realpath(os.getcwd())
        self.pid = os.getpid()
        self.result_fd = result_fd
        self.violations = []
        self.count = 0

    def refuse(self, event, why):
        self.count += 1
        if len(self.violations) < MAX_RECORDED_VIOLATIONS:
            self.violations.append(f"{event}: {why}")
        raise PermissionError(f"sandbox refused {event}: {why}")

    def _inside(self, path):
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep) or real == os.devnull

    def _other_process(self, path):
        parts = os.path.realpath(path).split(os.sep)
        return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != self.pid

    def __call__(self, event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                if path == self.result_fd:
                    self.refuse(event, "the harness's report pipe")
                return
            if path is None:
                return
            path = os.fsdecode(path)
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            if writing and not self._inside(path):
                self.refuse(event, f"write outside the run directory: {path}")
            if self._other_process(path):
                self.refuse(event, f"another process's /proc entry: {path}")
        elif event in _WRITE_EVENTS:
            for i in _WRITE_EVENTS[event]:
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) and not self._inside(os.fsdecode(args[i])):
                    self.refuse(event, f"outside the run directory: {os.fsdecode(args[i])}")
        elif event in ("os.kill", "os.killpg"):
            if args[0] not in (self.pid, 0):
                self.refuse(event, f"signal to process {args[0]}")
        elif event in _SPAWN_EVENTS:
            self.refuse(event, "starting processes is not allowed")
        elif event.startswith(("socket.", "ctypes.")):
            self.refuse(event, "network and native calls are not allowed")
        elif event in ("resource.setrlimit", "resource.prlimit"):
            self.refuse(event, "changing limits is not allowed")
        elif event == "import" and args[0] in _REFUSED_IMPORTS:
            self.refuse(event, f"module {args[0]} is not allowed")


class Outcome:
    """What the tests did: counts, the first errors (for debugging), and which limit was hit
    (Python ignores SIGXFSZ, so an oversized file shows up as an EFBIG error, not a signal)."""

    def __init__(self):
        self.passed = 0
        self.total = 0
        self.errors = []
        self.limit = None

    def record(self, err):
        if isinstance(err, MemoryError):
            self.limit = "memory"
        elif isinstance(err, OSError) and err.errno == errno.EFBIG:
            self.limit = "file_size"
        if len(self.errors) < MAX_RECORDED_VIOLATIONS:
            self.errors.append("".join(traceback.format_exception_only(type(err), err)).strip()[-500:])

    def run(self, source, namespace, name="<test>"):
        """Execute one piece of source; a failure (any exception, exit included) is recorded, not raised."""
        try:
            exec(compile(source, name, "exec") if isinstance(source, str) else source, namespace)
            return True
        except BaseException as err:  # noqa: BLE001  (SystemExit and KeyboardInterrupt are failures too)
            self.record(err)
            return False

    def test(self, source, namespace):
        self.total += 1
        self.passed += self.run(source, namespace)

    def loop(self, loop, namespace):
        """``for TARGET in ITER: BODY`` with each iteration a test of its own (HumanEval+ input lists)."""
        try:
            iterator = iter(eval(loop["iter"], namespace))
            assign = compile(f"{loop['target']} = __diffrl_item__", "<test>", "exec")
            body = compile(loop["body"], "<test>", "exec")
        except BaseException as err:  # noqa: BLE001
            self.total += 1
            self.record(err)
            return
        while True:
            try:
                namespace["__diffrl_item__"] = next(iterator)
            except StopIteration:
                return
            except BaseException as err:  # noqa: BLE001
                self.total += 1
                self.record(err)
                return
            self.total += 1
            self.passed += self.run(assign, namespace) and self.run(body, namespace)


def run_tests(plan, guard):
    """The solution in its own namespace, then the test steps in order."""
    out = Outcome()
    solution = {"__name__": "__sandbox__", "__builtins__": builtins}
    out.run(plan["solution"], solution, "<solution>")
    # A copy: the tests' own definitions must not replace names the solution's functions use.
    # HumanEval's checks also call the prompt's helpers (poly, encode_cyclic), so they see them all.
    tests = dict(solution)
    if plan["candidate"]:
        tests[plan["bind_as"]] = solution.get(plan["candidate"])
        if plan["candidate"] not in solution:
            out.errors.append(f"the solution does not define {plan['candidate']}()")
    out.run(plan["setup"], tests, "<setup>")
    for step in plan["steps"]:
        if "loop" in step:
            out.loop(step["loop"], tests)
        elif step["test"]:
            out.test(step["code"], tests)
        else:
            out.run(step["code"], tests)
    return {
        "passed": out.passed,
        "total": out.total,
        "limit": out.limit,
        "errors": out.errors,
        "violations": guard.violations if guard else [],
        "refused": guard.count if guard else 0,
    }


def main():
    cfg = json.loads(sys.argv[1])
    layers = []
    try:
        with open(cfg["plan_file"], encoding="utf-8") as f:
            plan = json.load(f)
        os.remove(cfg["plan_file"])
        isolate_network(layers)
        set_limits(cfg, layers)
        if cfg["drop_privileges"]:
            try:
                drop_privileges(cfg, layers)
            except OSError as err:
                # e.g. a container whose user namespace maps no uid beyond its own: run on as is.
                print(f"sandbox: could not switch to a uid of its own: {err}", file=sys.stderr)
        harden(cfg, layers)
        guard = Guard(cfg["result_fd"]) if cfg["audit"] else None
        if guard:
            sys.addaudithook(guard)
            layers.append("audit")
    except Exception:
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    # Two lines: the layers that hold (sent now, so a run that never reports still names them), then the report.
    _write(cfg["result_fd"], _dumps(layers).encode() + b"\n")
    _write(cfg["result_fd"], _dumps(run_tests(plan, guard)).encode() + b"\n")
    # Skip interpreter shutdown: the sample's atexit handlers and finalizers do not run.
    os._exit(0)


if __name__ == "__main__":
    main()
