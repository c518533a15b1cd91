"""Process identity on this machine: a pid and its start time name one process, even after the
kernel hands the pid to a process that starts later.

Where there is a ``/proc`` (Linux) it is read directly: the start time is field 22 of
``/proc/PID/stat``, clock ticks after boot, which a change of the system clock never moves. Elsewhere
(macOS, Windows) psutil says it: the creation time in hundredths of a second since the epoch. Both are
compared only with what the same machine said earlier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = "/proc"
PSUTIL_TICKS = 100  # psutil's creation time (seconds, a float) -> a whole number


@dataclass(frozen=True)
class Seen:
    state: str  # "Z": a zombie (it has ended; its parent has not reaped it)
    start: int
    cmdline: tuple[str, ...]


def stat_start_time(stat: bytes) -> tuple[str, int]:
    """(state, start time) from the text of /proc/PID/stat: fields 3 and 22.

    Field 2 is the command name in parentheses, and it may itself hold spaces and ')': the fields
    after it are counted from the last ')'.
    """
    rest = stat[stat.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[22 - 3])


def has_proc() -> bool:
    return os.path.isdir(f"{PROC}/self")


def look(pid: int) -> Seen | None:
    """What process ``pid`` is now (its state, start time, command line), or None when none runs."""
    if pid <= 0:
        return None
    if has_proc():
        try:
            state, start = stat_start_time(Path(f"{PROC}/{int(pid)}/stat").read_bytes())
            raw = Path(f"{PROC}/{int(pid)}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return Seen(state, start, tuple(x.decode(errors="replace") for x in raw.split(b"\0")[:-1]))
    import psutil

    try:
        proc = psutil.Process(int(pid))
        with proc.oneshot():
            status = proc.status()
            start = round(proc.create_time() * PSUTIL_TICKS)
            try:
                cmdline = tuple(proc.cmdline())
            except psutil.AccessDenied:  # another user's process (macOS): known by its start time alone
                cmdline = ()
    except psutil.ZombieProcess:
        return Seen("Z", 0, ())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, OSError):
        return None
    return Seen("Z" if status == psutil.STATUS_ZOMBIE else "R", start, cmdline)
