"""One edgelm job at a time per target: a lock on a file in the target's state folder.

``fcntl.flock`` belongs to the open file, so the kernel releases it when the holder ends, however
it ends (even SIGKILL); a lock file left behind by a dead holder blocks nothing. The holder writes
its pid and command line into the file, so a refused caller can say who holds the target. The
file is opened close-on-exec: a runner started while the lock is held does not inherit it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolchain.errors import DeviceError

LOCK_FILE = "lock"
HOLDER_READ_S = 0.5  # how long a refused caller waits for the holder's note to be written
COMMAND_CHARS = 160  # of the holder's command line, in the refusal

_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth


def _holder(fd: int) -> dict | None:
    deadline = time.monotonic() + HOLDER_READ_S
    while True:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode(errors="replace"))
        except ValueError:  # not written yet (the holder has only just taken the lock)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)


def _describe(holder: dict | None) -> str:
    """``pid N [on HOST] (WHAT since HH:MM:SS: COMMAND)``: a holder's note (from a file anyone may
    have written: every field is cut to one short line)."""
    if not holder:
        return "another process (it has not said which yet)"
    command = " ".join(str(holder.get("command", "?")).split())  # one line, whatever the command held
    if len(command) > COMMAND_CHARS:
        command = command[:COMMAND_CHARS - 3] + "..."
    try:
        since = time.strftime("%H:%M:%S", time.localtime(float(holder.get("since", 0))))
    except (TypeError, ValueError, OverflowError, OSError):
        since = "?"
    host = " ".join(str(holder["host"]).split())[:64] if holder.get("host") else ""
    pid = " ".join(str(holder.get("pid", "?")).split())[:20]
    what = " ".join(str(holder.get("what", "?")).split())[:40]
    return f"pid {pid}{' on ' + host if host else ''} ({what} since {since}: {command})"


describe = _describe


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` on this machine (field 22 of /proc/PID/stat), None if none
    runs: a pid and its start time name one process, even after the pid is reused."""
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def note(what: str) -> dict:
    """What a holder says of itself: pid, its start time, what it does, its command line, since when."""
    return {"pid": os.getpid(), "start": process_start(os.getpid()), "what": what,
            "command": shlex.join(sys.orig_argv)[:COMMAND_CHARS * 4], "since": time.time()}


@contextmanager
def hold(state_dir: Path, what: str, name: str | None = None) -> Iterator[None]:
    """Hold ``state_dir``'s lock for the block, or raise DeviceError naming the holder at once.

    ``what`` says what the holder does (``flash``, ``run``), ``name`` names the target in the
    refusal. A process that holds the lock already may take it again (nested jobs).
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeviceError(f"cannot keep the target's state in {state_dir}: {exc.strerror or exc}",
                          hint="give a --workdir this user can write") from None
    path = (state_dir / LOCK_FILE).resolve()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DeviceError(f"cannot keep the target's state in {state_dir}: {exc.strerror or exc}",
                          hint="give a --workdir this user can write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeviceError(f"{name or state_dir} is busy: held by {_describe(_holder(fd))}",
                              hint="wait for it to finish, or end that process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note(what)).encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            os.ftruncate(fd, 0)  # the next holder writes its own note; nobody reads a stale one
    finally:
        os.close(fd)  # releases the lock
