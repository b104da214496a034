"""The data-only protocol between the trusted checker and the sandboxed candidate.

Standard library only: the sandbox processes import it by path, where ``diffrl`` is not importable.
One message is one line of JSON. Values are *plain data*, encoded so that nothing but these types
can come back: None, bool, int, float, str as JSON scalars; containers as a two-element list
``[tag, payload]`` (``l`` list, ``t`` tuple, ``s`` set, ``f`` frozenset, ``d`` dict as a list of
``[key, value]`` pairs, ``b`` bytes as latin-1 text, ``c`` complex as ``[real, imag]``).

:func:`decode` is the trust boundary: it runs in the checker on whatever the candidate wrote and
builds only those types, with a depth and size cap, so an object whose ``__eq__`` always says True
(or any other object of the candidate's) can never reach a comparison in the checker.
"""

import json
import os

MAX_LINE = 8 << 20  # bytes in one message
MAX_DEPTH = 64
MAX_ITEMS = 1 << 20


class NotPlainData(ValueError):
    """A value that is not plain data, or a message that is not one well-formed line of JSON."""


def encode(value, depth=0):
    """``value`` as JSON-able data (raises :class:`NotPlainData` for anything else)."""
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested more than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return bool(value) if isinstance(value, bool) else (None if value is None else str(value))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, complex):
        return ["c", [value.real, value.imag]]
    if isinstance(value, (bytes, bytearray)):
        return ["b", bytes(value).decode("latin-1")]
    if isinstance(value, dict):
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    for kind, tag in ((list, "l"), (tuple, "t"), (frozenset, "f"), (set, "s")):
        if isinstance(value, kind):
            return [tag, [encode(v, depth + 1) for v in value]]
    raise NotPlainData(f"a {type(value).__name__} is not plain data")


def _scalar(value):
    kind = type(value)
    if value is None or kind in (bool, str, int, float):
        return value
    raise NotPlainData(f"unexpected {kind.__name__} in the message")


def decode(data, depth=0, budget=None):
    """The value ``data`` (parsed JSON) encodes, built from plain types only."""
    budget = budget if budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if budget[0] < 0:
        raise NotPlainData(f"more than {MAX_ITEMS} values in one message")
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested more than {MAX_DEPTH} levels")
    if type(data) is not list:
        return _scalar(data)
    if len(data) != 2 or type(data[0]) is not str:
        raise NotPlainData("a container must be [tag, payload]")
    tag, payload = data
    if tag == "b" and type(payload) is str:
        return payload.encode("latin-1")
    if tag == "c" and type(payload) is list and len(payload) == 2:
        return complex(*(float(_scalar(x)) for x in payload))
    if type(payload) is not list:
        raise NotPlainData(f"bad payload for tag {tag!r}")
    if tag == "d":
        out = {}
        for pair in payload:
            if type(pair) is not list or len(pair) != 2:
                raise NotPlainData("a dict item must be [key, value]")
            key = decode(pair[0], depth + 1, budget)
            try:
                out[key] = decode(pair[1], depth + 1, budget)
            except TypeError:
                raise NotPlainData("unhashable dict key") from None
        return out
    items = [decode(v, depth + 1, budget) for v in payload]
    try:
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "f":
            return frozenset(items)
    except TypeError:
        raise NotPlainData("unhashable set element") from None
    raise NotPlainData(f"unknown tag {tag!r}")


def dumps(message):
    """One message as a line of bytes (its values already encoded)."""
    return json.dumps(message, allow_nan=True, separators=(",", ":")).encode() + b"\n"


def loads(line):
    """Parse one message line; anything malformed raises :class:`NotPlainData`."""
    if len(line) > MAX_LINE:
        raise NotPlainData(f"a message over {MAX_LINE} bytes")
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as err:
        raise NotPlainData(f"not a line of JSON: {str(err)[:200]}") from None
    if type(message) is not dict:
        raise NotPlainData("a message must be a JSON object")
    return message


class LineReader:
    """Reads newline-terminated messages from a pipe, at most :data:`MAX_LINE` bytes each."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""

    def read(self):
        """The next line, or None at end of file (the writer is gone)."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise NotPlainData(f"a message over {MAX_LINE} bytes")
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def write_all(fd, data):
    """Write every byte (pipes take large messages in pieces)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
