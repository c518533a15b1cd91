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
    if not holder:
        return "another process (it has not said which yet)"
    command = " ".join(str(holder.get("command", "?")).split())  # one line, whatever the command held
    if len(command) > COMMAND_CHARS:
        command = command[:COMMAND_CHARS - 3] + "..."
    since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid', '?')} ({holder.get('what', '?')} since {since}: {command})"


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
        note = {"pid": os.getpid(), "what": what, "command": shlex.join(sys.orig_argv), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            os.ftruncate(fd, 0)  # the next holder writes its own note; nobody reads a stale one
    finally:
        os.close(fd)  # releases the lock
