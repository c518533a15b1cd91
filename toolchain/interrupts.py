"""Signals that end edgelm become exceptions, so every cleanup (``finally``) runs.

The runner, qemu and socat run in sessions of their own (a Ctrl-C in the terminal must not kill
a runner that ``flash`` leaves in the background), so a signal to edgelm never reaches them:
edgelm has to stop them itself. Python does that for SIGINT (KeyboardInterrupt unwinds through
every ``finally``); SIGTERM (timeout, CI cancellation, systemd) and SIGHUP (a closed terminal)
kill it on the spot by default. Inside ``handled()`` they raise ``Terminated``, a
KeyboardInterrupt, so the same ``finally`` and ``except BaseException`` blocks stop the children,
and the CLI exits 128 + the signal number, as a shell reports a process killed by it.

A short critical section (start a child and record its pid, stop the children) runs under
``deferred()``: a signal that arrives inside it is raised when it ends, so a child is never
started without being recorded, nor left half stopped.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

# SIGHUP is POSIX: a host without it (Windows) handles the other two.
HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_DEFAULTS = (signal.SIG_DFL, signal.default_int_handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program was, like KeyboardInterrupt for SIGINT."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


_installed = False
_depth = 0  # nesting of deferred() blocks
_pending: int | None = None  # the first signal that arrived inside one


def _raise(signum: int) -> NoReturn:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        if _pending is None:
            _pending = signum
        return
    _raise(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Within: SIGINT, SIGTERM and SIGHUP raise (KeyboardInterrupt, Terminated); after: as before.

    Only a signal left at its default action is taken over: one the process was started with
    ignored (``nohup``, ``cmd &`` in a script) stays ignored, and another handler stays in place.
    Nested use, and use outside the main thread (where Python cannot set handlers), change nothing.
    """
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in HANDLED:
        current = signal.getsignal(sig)
        if current in _DEFAULTS:
            previous[sig] = current
            signal.signal(sig, _handler)
    _installed = True
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _installed = False


class _Deferred:
    def __enter__(self) -> None:
        global _depth
        _depth += 1

    def __exit__(self, *exc: object) -> None:
        global _depth, _pending
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            _raise(signum)


def deferred() -> _Deferred:
    """``with deferred():`` the block runs to its end; a signal that arrives inside is raised after it.

    Only inside ``handled()``: elsewhere SIGTERM and SIGHUP keep their default action (the process
    ends at once) and Ctrl-C raises where it lands.
    """
    return _Deferred()
