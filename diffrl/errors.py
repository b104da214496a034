"""User mistakes, and how the command-line entry points show them.

Every mistake a user can fix (a config value, a path, a data file, the launch command, a full
disk) raises :class:`DiffrlConfigError` with a message that names the field and the fix. The entry
points (``python -m diffrl.train``, ``python -m diffrl.eval``) print that message as ``error: ...``
and exit with status 2, without a traceback and without Hydra's ``Error executing job`` wrapper.
``HYDRA_FULL_ERROR=1``, ``DIFFRL_DEBUG=1`` or a ``--debug`` argument restore the full traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

EXIT_CODE = 2
DEBUG_FLAG = "--debug"
_DEBUG_ENV = ("HYDRA_FULL_ERROR", "DIFFRL_DEBUG")

F = TypeVar("F", bound=Callable[..., Any])


class DiffrlConfigError(ValueError):
    """A mistake the user can fix; the message names the field (or file) and the fix."""


def debug_requested() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1`` or ``DIFFRL_DEBUG=1``)."""
    return any(os.environ.get(name, "") not in ("", "0") for name in _DEBUG_ENV)


def take_debug_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--debug``; its presence sets ``DIFFRL_DEBUG=1`` (Hydra would reject it)."""
    if DEBUG_FLAG not in argv:
        return argv
    os.environ["DIFFRL_DEBUG"] = "1"
    return [arg for arg in argv if arg != DEBUG_FLAG]


def format_error(err: DiffrlConfigError) -> str:
    """The one- or two-line message an entry point prints (ranks named under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    where = f"[rank {os.environ.get('RANK', '?')}] " if world > 1 else ""
    return f"{where}error: {err}"


def reports_config_errors(fn: F) -> F:
    """Wrap an entry point's Hydra task function: a :class:`DiffrlConfigError` becomes one
    message on stderr and exit status 2 (a full traceback when :func:`debug_requested`).

    It must sit inside ``@hydra.main``: Hydra prints its own wrapper for any exception that
    leaves the task function, while ``SystemExit`` passes through it untouched.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiffrlConfigError as err:
            if debug_requested():
                raise
            print(format_error(err), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_CODE) from None

    return wrapper  # type: ignore[return-value]
