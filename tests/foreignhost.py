"""Run ``edgelm`` as on a host that is not Linux: ``python tests/foreignhost.py ARGS...``.

What edgelm's own code finds there (its imports and file reads are checked; a library such as pyserial
or psutil keeps the backend it picked for this machine, as it would pick the host's own elsewhere):

- no ``signal.SIGHUP`` (Windows);
- no ``fcntl``, ``termios``, ``pty``, ``pwd``, ``grp`` modules (Windows): importing one raises ImportError;
- no ``os.getuid``/``geteuid``/``getgid``/``killpg``/``openpty`` (Windows);
- no ``/proc`` (macOS, Windows): opening, listing or stat-ing a path under it raises FileNotFoundError.

Only calls made from a ``toolchain`` module are refused, so the interpreter and third-party libraries
still work: the test is of edgelm's code.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
import sys

BLOCKED_MODULES = {"fcntl", "termios", "pty", "pwd", "grp", "tty", "resource"}
BLOCKED_OS = ("getuid", "geteuid", "getgid", "killpg", "openpty")
_PASS_THROUGH = {"pathlib", "io", "os", "genericpath", "posixpath", "shutil", "codecs", "_bootlocale", __name__}


def _edgelm_caller() -> bool:
    """Whether the nearest caller outside the standard library's file plumbing is edgelm's code."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name not in _PASS_THROUGH:
            return name == "toolchain" or name.startswith("toolchain.")
        frame = frame.f_back
    return False


def _is_proc(path: object) -> bool:
    try:
        text = os.fsdecode(path) if not isinstance(path, int) else ""
    except TypeError:
        return False
    return text == "/proc" or text.startswith("/proc/")


def _no_proc(fn):
    def wrapper(path, *args, **kwargs):
        if _is_proc(path) and _edgelm_caller():
            raise FileNotFoundError(2, "No such file or directory (no /proc on this host)", os.fsdecode(path))
        return fn(path, *args, **kwargs)

    return wrapper


_real_import = builtins.__import__


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    caller = (globals or {}).get("__name__", "") or ""
    if level == 0 and name.split(".")[0] in BLOCKED_MODULES and (caller == "toolchain"
                                                                  or caller.startswith("toolchain.")):
        raise ImportError(f"No module named {name!r} (not on this host)", name=name)
    return _real_import(name, globals, locals, fromlist, level)


def simulate() -> None:
    os.environ.setdefault("USERNAME", "edgelm")  # as on Windows: getpass.getuser() reads it, not os.getuid()
    del signal.SIGHUP
    for name in BLOCKED_OS:
        if hasattr(os, name):
            delattr(os, name)
    builtins.__import__ = _import
    builtins.open = _no_proc(builtins.open)
    io.open = _no_proc(io.open)
    for name in ("open", "stat", "lstat", "listdir", "scandir", "readlink"):
        setattr(os, name, _no_proc(getattr(os, name)))


if __name__ == "__main__":
    simulate()
    from toolchain.cli import main

    sys.argv = ["edgelm", *sys.argv[1:]]
    main()
