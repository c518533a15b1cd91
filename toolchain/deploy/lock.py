"""One edgelm job at a time per target: a lock on a file in the target's state folder.

``fcntl.flock`` belongs to the open file, so the kernel releases it when the holder ends, however
it ends (even SIGKILL); a lock file left behind by a dead holder blocks nothing. Where there is no
``fcntl`` (Windows) ``msvcrt.locking`` locks the file's first byte, also released with the handle. The holder writes
its pid and command line into the file, so a refused caller can say who holds the target. The
file is opened close-on-exec: a runner started while the lock is held does not inherit it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolchain import procinfo
from toolchain.errors import DeviceError

LOCK_FILE = "lock"
HOLDER_READ_S = 0.5  # how long a refused caller waits for the holder's note to be written
COMMAND_CHARS = 160  # of the holder's command line, in the refusal

_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth


def _read_at_start(fd: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, 4096, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # Windows: no pread
    return os.read(fd, 4096)


def _write_at_start(fd: int, data: bytes) -> None:
    if hasattr(os, "pwrite"):
        os.pwrite(fd, data, 0)
        return
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)


def _holder(fd: int) -> dict | None:
    deadline = time.monotonic() + HOLDER_READ_S
    while True:
        try:
            return json.loads(_read_at_start(fd).decode(errors="replace"))
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
    """The start time of process ``pid`` on this machine (:func:`toolchain.procinfo.look`), None if none
    runs: a pid and its start time name one process, even after the pid is reused."""
    try:
        seen = procinfo.look(int(pid))
    except (TypeError, ValueError):
        return None
    return str(seen.start) if seen is not None else None


def _try_lock(fd: int) -> bool:
    """Take the lock on ``fd`` without waiting; whether it was free."""
    try:
        import fcntl
    except ImportError:  # Windows
        try:
            import msvcrt
        except ImportError:
            raise DeviceError("this host can lock files neither with fcntl nor with msvcrt") from None
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise DeviceError(f"cannot keep the target's state in {state_dir}: {exc.strerror or exc}",
                          hint="give a --workdir this user can write") from None
    try:
        if not _try_lock(fd):
            raise DeviceError(f"{name or state_dir} is busy: held by {_describe(_holder(fd))}",
                              hint="wait for it to finish, or end that process") from None
        os.ftruncate(fd, 0)
        _write_at_start(fd, json.dumps(note(what)).encode())
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            os.ftruncate(fd, 0)  # the next holder writes its own note; nobody reads a stale one
    finally:
        os.close(fd)  # releases the lock
