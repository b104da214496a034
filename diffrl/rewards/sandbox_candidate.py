"""The candidate's side of the sandbox: run the solution it is sent, then answer the checker's calls.

Standard library only (imported by path inside the sandbox). Everything here runs in the
untrusted process and may be patched by the sample: nothing it says is believed except as the
sample's answer. Its only way out is a pair of pipes to the checker (:mod:`sandbox_wire`).

The audit hook (:class:`Guard`) is a tripwire, not the boundary: it refuses and names operations
the kernel layers would stop anyway (and is the only guard where the machine grants none).
"""

import builtins
import errno
import os
import sys
import traceback

import sandbox_wire as wire

MAX_RECORDED = 8

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
    processes, native calls, limit changes and writes outside the run directory."""

    def __init__(self):
        self.root = os.path.realpath(os.getcwd())
        self.pid = os.getpid()
        self.violations = []

    def refuse(self, event, why):
        if len(self.violations) < MAX_RECORDED:
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
            if path is None or isinstance(path, int):
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


def _limit(err):
    """Which limit an exception shows was hit (Python ignores SIGXFSZ: an oversized file is EFBIG)."""
    if isinstance(err, MemoryError):
        return "memory"
    if isinstance(err, OSError) and err.errno == errno.EFBIG:
        return "file_size"
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk"
    return None


class Candidate:
    """The solution's namespace and the loop answering the checker."""

    def __init__(self, request_fd, reply_fd, guard):
        self.request = wire.LineReader(request_fd)
        self.reply_fd = reply_fd
        self.guard = guard
        self.namespace = {"__name__": "__sandbox__", "__builtins__": builtins}
        self.error = None
        self.limit = None

    def _failed(self, err):
        self.limit = self.limit or _limit(err)
        return "".join(traceback.format_exception_only(type(err), err)).strip()[-500:]

    def run_solution(self, source):
        try:
            exec(compile(source, "<solution>", "exec"), self.namespace)
        except BaseException as err:  # noqa: BLE001  (exit included: the tests still run against what was defined)
            self.error = self._failed(err)

    def _describe(self, name):
        if name not in self.namespace:
            return ["missing"]
        value = self.namespace[name]
        if type(value).__name__ == "module":
            return ["module", str(getattr(value, "__name__", ""))]
        if callable(value):
            return ["function"]
        try:
            return ["value", wire.encode(value)]
        except wire.NotPlainData:
            return ["missing"]

    def _call(self, message):
        args, kwargs = wire.decode(message["args"]), wire.decode(message["kwargs"])
        try:
            result = self.namespace[message["name"]](*args, **kwargs)
            return {"ok": wire.encode(result), "after": wire.encode(args)}
        except BaseException as err:  # noqa: BLE001  (a test of a function that exits fails; the loop goes on)
            return {"raised": [type(err).__name__, self._failed(err)]}

    def answer(self, message):
        op = message.get("op")
        if op == "solution":
            self.run_solution(message["source"])
            reply = {"error": self.error}
        elif op == "call":
            reply = self._call(message)
        elif op == "lookup":
            reply = {"names": {name: self._describe(name) for name in message["names"]}}
        else:
            reply = {}
        reply["violations"] = self.guard.violations if self.guard else []
        reply["limit"] = self.limit
        return reply

    def serve(self):
        """Answer requests until the checker closes its end (or says it is done)."""
        while True:
            line = self.request.read()
            if line is None:
                return
            message = wire.loads(line)
            reply = self.answer(message)
            try:
                data = wire.dumps(reply)
            except (ValueError, RecursionError, MemoryError) as err:
                data = wire.dumps({"raised": [type(err).__name__, str(err)[:200]], "violations": [], "limit": self.limit})
            wire.write_all(self.reply_fd, data)
            if message.get("op") == "done":
                return


def main(request_fd, reply_fd, audit):
    """Run inside the sandboxed process, after isolation and limits: never returns. The solution
    arrives as the checker's first request; the tests never enter this process."""
    guard = Guard() if audit else None
    if guard:
        sys.addaudithook(guard)
    candidate = Candidate(request_fd, reply_fd, guard)
    try:
        candidate.serve()
    except BaseException:  # noqa: BLE001  (the checker sees the pipe close)
        pass
    os._exit(0)
