"""Runs as the sandbox: isolate, split into a trusted checker and a sandboxed candidate, judge.

Started by :mod:`diffrl.rewards.sandbox` as ``python -I -B sandbox_boot.py CONFIG_JSON`` with a
scrubbed environment and the plan (an unlinked file) as stdin, read by the checker alone; standard library only (``diffrl`` is not importable here: the checker and
candidate halves are imported from this file's folder before it is hidden).

As root (the ``isolate`` path) the order is:

1. new mount, pid, network, IPC and UTS namespaces (``unshare``); the host's mounts made private;
2. a new root: a small read-only tmpfs holding read-only binds of /usr (and /lib, /bin links),
   the interpreter's own folders and /dev/null, /dev/zero, /dev/urandom, plus a tmpfs of
   ``disk_mb`` and ``max_files`` inodes at ``/sandbox`` that is the only writable place; ``chroot`` into it. The
   project checkout, the shared data, /root, /tmp and /dev/shm of the host, and every unix socket
   on the host are simply not there, and nothing needs a read capability;
3. ``fork``: the child is pid 1 of the new pid namespace (the *candidate*): rlimits, a uid of its
   own with no capabilities, ``NO_NEW_PRIVS``, death with its parent, the audit hook, then the
   solution. The parent (the *checker*) takes another uid of its own keeping only ``CAP_KILL``,
   becomes non-dumpable (no ptrace, no /proc/pid/mem), runs the tests and calls the candidate
   through the data-only protocol;
4. the checker kills pid 1, which takes every process of the namespace with it (a fork storm
   cannot outrun it), waits for it (so none is left), and writes the verdict to a pipe only it
   holds. When the last process leaves, the namespaces and the run's tmpfs vanish with them:
   there is nothing to clean up on the host.

Without root the checker/candidate split, rlimits, the audit hook and (where unprivileged user
namespaces exist) the network namespace still hold; the run says which layers held.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_candidate  # noqa: E402
import sandbox_checker  # noqa: E402
import sandbox_wire as wire  # noqa: E402

del sys.path[0]

SETUP_FAILED = 121
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
CAP_KILL = 5
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# The candidate's working folder inside its root: the one writable place.
RUN_DIR = "/sandbox"
_DEVICES = ("null", "zero", "urandom", "random")

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(source, target, fstype, flags, data=None):
    enc = [None if x is None else os.fsencode(x) for x in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def _bind(source, target, read_only=True):
    _mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_REC)


def build_root(root, cfg, candidate_uid):
    """The new root (see the module docstring); returns once we are chrooted into it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=512,mode=755")
    for path in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", *cfg["python_dirs"]):
        inside = root + path
        if os.path.islink(path) and os.path.dirname(path) == "/":
            os.symlink(os.readlink(path), inside)  # merged /usr: /bin -> usr/bin
        elif os.path.isdir(path) and not os.path.lexists(inside):
            os.makedirs(inside)
            _bind(path, inside)
    os.makedirs(root + "/dev")
    for name in _DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _bind(f"/dev/{name}", f"{root}/dev/{name}", read_only=False)
    os.makedirs(root + RUN_DIR)
    quota = f"size={int(cfg['disk_mb'])}m,nr_inodes={int(cfg['max_files'])},mode=700,uid={candidate_uid},gid={candidate_uid}"
    _mount("tmpfs", root + RUN_DIR, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, quota)
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir("/")


def isolate(cfg, layers, candidate_uid):
    """Namespaces and the new root (as root); returns the candidate's working directory."""
    if cfg["isolate"]:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
        layers += ["mntns", "pidns", "netns", "ipcns"]
        build_root(cfg["root"], cfg, candidate_uid)
        layers += ["ro_root", "disk_quota"]
        return RUN_DIR
    if _libc.unshare(CLONE_NEWNET) == 0:
        layers.append("netns")
    elif _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        layers += ["userns", "netns"]
    return cfg["root"]


def _set_limits(cfg, cpu, memory_mb):
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    file_size = int(cfg["file_size_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _become(uid, keep_caps=0):
    """Switch every uid and gid to ``uid``, no groups; keep only the capabilities in ``keep_caps``."""
    if keep_caps:
        _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if keep_caps:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        data[0].effective = data[0].permitted = keep_caps
        _check(_libc.capset(ctypes.byref(header), data), "capset")


def _harden():
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    # Die with the parent (set after the uid change, which clears it).
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def candidate(cfg, workdir, candidate_uid, request_fd, reply_fd):
    """The sandboxed child: limits, its own uid, then the serve loop (which is sent the solution)."""
    try:
        # The plan (the tests and their expected values) stays with the checker: fd 0 is its file.
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, request_fd)
        os.closerange(request_fd + 1, reply_fd)
        os.closerange(reply_fd + 1, 1 << 16)
        os.chdir(workdir)
        if cfg["isolate"]:
            os.setsid()  # a process group of its own: kill(0) reaches only the candidate's processes
        _set_limits(cfg, int(cfg["cpu_seconds"]), int(cfg["memory_mb"]))
        if cfg["isolate"]:
            n = int(cfg["max_processes"])
            resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
            _become(candidate_uid)
        _harden()
        os.environ.update({"HOME": workdir, "TMPDIR": workdir})
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    sandbox_candidate.main(request_fd, reply_fd, cfg["audit"])


def _candidate_end(pid, cpu_limit):
    """Kill the candidate (pid 1 of its namespace: every process in it goes too), wait for it,
    and say how it ended: ``(wait status, CPU seconds, whether that is its CPU limit)``."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status, usage = os.wait4(pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    return status, cpu, cpu >= cpu_limit


def checker(cfg, layers, pid, request_fd, reply_fd):
    """The trusted parent: read the plan, run the tests, end the candidate, report the verdict."""
    result_fd = int(cfg["result_fd"])
    try:
        plan = json.load(sys.stdin)
        # The checker must be able to kill pid 1 of the namespace: CAP_KILL, and nothing else.
        if cfg["isolate"]:
            _become(int(cfg["checker_uid_base"]) + int(cfg["boot_pid"]), 1 << CAP_KILL)
            layers += ["uid", "nproc", "verdict"]
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
        _harden()
        _set_limits(cfg, int(cfg["cpu_seconds"]) + 30, max(int(cfg["memory_mb"]), 4096))
        layers += ["split", "rlimits", "pdeathsig"] + (["audit"] if cfg["audit"] else [])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    wire.write_all(result_fd, json.dumps(layers).encode() + b"\n")
    channel = sandbox_checker.Channel(request_fd, reply_fd)
    violation = None
    try:
        outcome = sandbox_checker.run_checks(plan, channel)
    except sandbox_checker.ProtocolViolation as err:
        outcome, violation = sandbox_checker.Outcome(), f"broke the checker protocol: {err}"
    os.close(request_fd)
    status, cpu, out_of_cpu = _candidate_end(pid, int(cfg["cpu_seconds"]))
    verdict = _verdict(outcome, channel, violation, status, cpu, out_of_cpu, cfg)
    wire.write_all(result_fd, json.dumps(verdict).encode() + b"\n")
    os._exit(0)


def _verdict(outcome, channel, violation, status, cpu, out_of_cpu, cfg):
    """Passed, total, reason and detail, decided here from what the checker saw."""
    def fail(reason, detail):
        return {"passed": 0, "total": outcome.total, "reason": reason, "detail": detail[:2000]}

    if violation:
        return fail("sandbox_violation", violation)
    if channel.violations:
        return fail("sandbox_violation", "; ".join(channel.violations))
    limits = {"memory": f"ran out of its {cfg['memory_mb']} MB of memory", "file_size": f"wrote a file over {cfg['file_size_mb']} MB",
              "disk": f"filled its {cfg['disk_mb']} MB / {cfg['max_files']} files of disk"}
    if channel.limit:
        return fail("sandbox_violation", limits[channel.limit])
    if channel.gone:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        if out_of_cpu or sig == signal.SIGXCPU:
            return fail("timeout", f"used its {cfg['cpu_seconds']} s of CPU time")
        if sig == signal.SIGXFSZ:
            return fail("sandbox_violation", limits["file_size"])
        how = f"signal {signal.Signals(sig).name}" if sig else f"exit code {os.WEXITSTATUS(status)}"
        outcome.errors.insert(0, f"the candidate exited ({how}, {cpu:.1f} s CPU) before the tests finished")
    reason = "" if outcome.passed else "wrong"
    return {"passed": outcome.passed, "total": outcome.total, "reason": reason, "detail": "; ".join(outcome.errors[:3])[:2000]}


def main():
    cfg = json.loads(sys.argv[1])
    cfg["boot_pid"] = os.getpid()  # outside the new pid namespace: the parent's view of us
    layers = []
    candidate_uid = int(cfg["uid_base"]) + int(cfg["boot_pid"])
    try:
        if os.getppid() != int(cfg["parent_pid"]):
            os._exit(SETUP_FAILED)
        workdir = isolate(cfg, layers, candidate_uid)
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        os.close(request_w)
        os.close(reply_r)
        candidate(cfg, workdir, candidate_uid, request_r, reply_w)
    os.close(request_r)
    os.close(reply_w)
    checker(cfg, layers, pid, request_w, reply_r)


if __name__ == "__main__":
    main()
