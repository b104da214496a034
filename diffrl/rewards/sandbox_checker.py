"""The trusted checker: runs a row's tests and counts what passes, outside the candidate's process.

Standard library only (imported by path inside the sandbox, where ``diffrl`` is not importable).
The tests (the row's ground truth and the prompt's own helpers: trusted data) run here; the
candidate's functions are :class:`Remote` stand-ins that send their arguments to the sandboxed
candidate process and get back plain data (:mod:`sandbox_wire`). So the harness's counters, the
comparisons of ``assert candidate(x) == y`` and the verdict are all in memory the candidate cannot
reach, and what comes back can only be None, bool, int, float, str, bytes, complex, list, tuple,
dict, set or frozenset.
"""

import builtins
import traceback

import sandbox_wire as wire

MAX_RECORDED = 8


class ProtocolViolation(BaseException):
    """The candidate wrote something that is not a well-formed message of plain data: the whole
    sample fails (a BaseException, so no test's ``except Exception`` can swallow it)."""


class CandidateError(Exception):
    """An exception the candidate raised whose type is not a builtin one."""


class CandidateGone(Exception):
    """The candidate process has exited: every later call fails."""


def _rebuild(raised):
    """The candidate's exception as a builtin exception of the same name (so tests expecting
    ``ValueError`` still work), else :class:`CandidateError`. Only the name and text cross."""
    name, message = str(raised[0])[:100], str(raised[1])[:1000]
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins":
        try:
            return kind(message)
        except Exception:  # noqa: BLE001  (an exception type with an unusual constructor)
            pass
    return CandidateError(f"{name}: {message}")


class Channel:
    """The checker's end of the protocol: one request line out, one reply line back."""

    def __init__(self, request_fd, reply_fd):
        self.request_fd = request_fd
        self.reader = wire.LineReader(reply_fd)
        self.gone = False
        self.violations = []
        self.limit = None

    def ask(self, message):
        """Send a request and return the candidate's reply (a dict of still-encoded data)."""
        if self.gone:
            raise CandidateGone("the candidate has exited")
        try:
            wire.write_all(self.request_fd, wire.dumps(message))
            line = self.reader.read()
        except BrokenPipeError:
            line = None
        except wire.NotPlainData as err:
            raise ProtocolViolation(str(err)) from None
        if line is None:
            self.gone = True
            raise CandidateGone("the candidate has exited")
        try:
            reply = wire.loads(line)
        except (wire.NotPlainData, MemoryError) as err:
            raise ProtocolViolation(str(err)) from None
        self._note(reply)
        return reply

    def _note(self, reply):
        """The candidate's own account of refused operations and limits hit. It can hide them
        (the kernel layers held anyway), never forge a pass: only its answers are taken."""
        violations = reply.get("violations") or []
        if type(violations) is not list:
            raise ProtocolViolation("'violations' must be a list")
        for v in violations[:MAX_RECORDED]:
            if len(self.violations) < MAX_RECORDED:
                self.violations.append(str(v)[:300])
        if reply.get("limit") in ("memory", "file_size", "disk"):
            self.limit = self.limit or reply["limit"]

    def value(self, data):
        try:
            return wire.decode(data)
        except (wire.NotPlainData, RecursionError, MemoryError, ValueError, OverflowError) as err:
            raise ProtocolViolation(f"not plain data: {str(err)[:200]}") from None


class Remote:
    """A function of the candidate's, called through the channel. Arguments go out as plain data;
    the result comes back as plain data; an argument list or dict the function changed in place is
    updated here too (tests that check in-place sorts)."""

    __slots__ = ("_channel", "_name")

    def __init__(self, channel, name):
        self._channel = channel
        self._name = name

    def __repr__(self):
        return f"<candidate function {self._name}>"

    def __call__(self, *args, **kwargs):
        try:
            request = {"op": "call", "name": self._name, "args": wire.encode(list(args)), "kwargs": wire.encode(kwargs)}
        except wire.NotPlainData as err:
            raise TypeError(f"the test passes {err} to the candidate; only plain data crosses into the sandbox") from None
        reply = self._channel.ask(request)
        if "raised" in reply:
            raised = reply["raised"]
            if type(raised) is not list or len(raised) != 2:
                raise ProtocolViolation("'raised' must be [type name, message]")
            raise _rebuild(raised)
        if "ok" not in reply:
            raise ProtocolViolation("a call's reply has neither 'ok' nor 'raised'")
        result = self._channel.value(reply["ok"])
        after = self._channel.value(reply.get("after"))
        if type(after) is list and len(after) == len(args):
            for before, now in zip(args, after):
                if type(before) is list and type(now) is list:
                    before[:] = now
                elif type(before) is dict and type(now) is dict:
                    before.clear()
                    before.update(now)
        return result


class Outcome:
    """Tests passed and run, and the first errors (for debugging)."""

    def __init__(self):
        self.passed = 0
        self.total = 0
        self.errors = []

    def record(self, err):
        if len(self.errors) < MAX_RECORDED:
            self.errors.append("".join(traceback.format_exception_only(type(err), err)).strip()[-500:])

    def run(self, source, namespace, name="<test>"):
        """Execute one piece of source; a failure (any exception, exit included) is recorded, not raised."""
        try:
            exec(compile(source, name, "exec") if isinstance(source, str) else source, namespace)
            return True
        except ProtocolViolation:
            raise
        except BaseException as err:  # noqa: BLE001  (SystemExit and KeyboardInterrupt are failures too)
            self.record(err)
            return False

    def test(self, source, namespace):
        self.total += 1
        self.passed += self.run(source, namespace)

    def loop(self, loop, namespace):
        """``for TARGET in ITER: BODY`` with each iteration a test of its own (HumanEval+ input
        lists); a loop whose inputs cannot be produced counts one failed test."""
        try:
            iterator = iter(eval(loop["iter"], namespace))
            assign = compile(f"{loop['target']} = __diffrl_item__", "<test>", "exec")
            body = compile(loop["body"], "<test>", "exec")
            while True:
                try:
                    namespace["__diffrl_item__"] = next(iterator)
                except StopIteration:
                    return
                self.total += 1
                self.passed += self.run(assign, namespace) and self.run(body, namespace)
        except ProtocolViolation:
            raise
        except BaseException as err:  # noqa: BLE001
            self.total += 1
            self.record(err)


def _bind(channel, names):
    """What the tests may use of the candidate's names: its functions as :class:`Remote`, its
    plain-data values, the standard-library modules it imported under that name."""
    import sys

    reply = channel.ask({"op": "lookup", "names": list(names)})
    found = reply.get("names")
    if type(found) is not dict:
        raise ProtocolViolation("a lookup's reply must map names")
    bound = {}
    for name in names:
        kind = found.get(name)
        if type(kind) is not list or not kind or type(kind[0]) is not str:
            continue
        if kind[0] == "function":
            bound[name] = Remote(channel, name)
        elif kind[0] == "value" and len(kind) == 2:
            bound[name] = channel.value(kind[1])
        elif kind[0] == "module" and len(kind) == 2 and kind[1] in sys.stdlib_module_names:
            bound[name] = __import__(kind[1])
    return bound


def run_checks(plan, channel):
    """Run the plan's tests against the candidate and return what passed."""
    out = Outcome()
    tests = {"__name__": "__checker__", "__builtins__": builtins}
    # The prompt's imports and helpers (HumanEval's checks call poly, encode_cyclic): trusted text.
    out.run(plan["context"], tests, "<prompt>")
    try:
        ran = channel.ask({"op": "solution", "source": plan["solution"]})
        if ran.get("error"):
            out.errors.append(str(ran["error"])[:500])
        bound = _bind(channel, plan["names"])
    except CandidateGone as err:
        out.record(err)
        bound = {}
    tests.update(bound)
    if plan["candidate"]:
        if plan["candidate"] in bound:
            tests[plan["bind_as"]] = bound[plan["candidate"]]
        else:
            tests.pop(plan["bind_as"], None)
            out.errors.append(f"the solution does not define {plan['candidate']}()")
    out.run(plan["setup"], tests, "<setup>")
    for step in plan["steps"]:
        if "loop" in step:
            out.loop(step["loop"], tests)
        elif step["test"]:
            out.test(step["code"], tests)
        else:
            out.run(step["code"], tests)
    if not channel.gone:
        try:
            channel.ask({"op": "done"})
        except CandidateGone:
            pass
    return out
