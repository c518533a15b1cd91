"""One content-addressed cache of exports and builds, shared by every folder, the CLI, the pytest plugin and the
benchmarks: ``$EDGELM_CACHE``, else ``$XDG_CACHE_HOME/edgelm``, else ``~/.cache/edgelm`` (``paths.cache_dir``).

An entry is a folder ``ROOT/KIND/KEY`` (``exports/<key>``, ``builds/<board>-<key>``), keyed by what it was made
from. It appears whole or not at all: it is made in a temporary sibling and renamed into place. Two processes
that want the same missing entry do not both make it: the first takes the entry's build lock, the second waits
for it and then uses what the first made. Every process that uses an entry holds a shared lock on it until it
ends, and ``prune`` removes only entries nobody holds, least recently used first.

Locks are ``flock`` locks on files in ``ROOT/KIND/.locks``: the kernel drops them when their holder ends,
however it ends, so a lock file left by a dead process blocks nothing. Where ``fcntl`` is missing, a build lock
is an exclusively created file (a stale one, older than ``STALE_BUILD_S``, is taken over) and no use lock is
held (``prune`` then removes what it is asked to).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not a POSIX host
    fcntl = None  # type: ignore[assignment]

KINDS = ("exports", "builds")
LOCKS = ".locks"
STALE_BUILD_S = 6 * 3600.0  # without flock: a build lock file this old was left by a process that died
POLL_S = 0.2

_in_use: dict[Path, int] = {}  # entry folder -> the fd of its use lock, held (shared) until this process ends


def root() -> Path:
    from toolchain.paths import cache_dir

    return cache_dir()


def _lock_path(entry: Path, what: str) -> Path:
    return entry.parent / LOCKS / f"{entry.name}.{what}"


def _check_name(kind: str, key: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}")
    if not key or "/" in key or key.startswith(".") or key != os.path.basename(key):
        raise ValueError(f"bad cache key {key!r}")


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)


@contextlib.contextmanager
def _build_lock(entry: Path, waiting: Callable[[str], None]) -> Iterator[None]:
    """Hold ``entry``'s build lock for the block, waiting for another process that holds it (``waiting`` is
    told once, with who holds it)."""
    path = _lock_path(entry, "build")
    if fcntl is None:
        yield from _exclusive_file(path, waiting)
        return
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            waiting(f"waiting for {holder} to finish {entry.parent.name}/{entry.name}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _exclusive_file(path: Path, waiting: Callable[[str], None]) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                if time.time() - path.stat().st_mtime > STALE_BUILD_S:
                    path.unlink()
                    continue
            except OSError:
                continue
            if not told:
                waiting(f"waiting for another process to finish {path.parent.parent.name}/{path.name}")
                told = True
            time.sleep(POLL_S)
    try:
        os.write(fd, f"pid {os.getpid()}".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _hold_use(entry: Path) -> None:
    """A shared lock on ``entry`` until this process ends: ``prune`` leaves it alone."""
    if fcntl is None or entry in _in_use:
        return
    fd = _open(_lock_path(entry, "use"))
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune holds it
    _in_use[entry] = fd


def release() -> None:
    """Let go of the entries this process used (``prune`` may then remove them): for long-lived processes."""
    while _in_use:
        os.close(_in_use.popitem()[1])


def _touch(entry: Path) -> None:
    """Record a use (the entry folder's mtime is its last use)."""
    with contextlib.suppress(OSError):
        os.utime(entry)


def _discard(path: Path) -> None:
    """Remove a folder so that nobody sees half of it: renamed aside first, then deleted."""
    aside = path.parent / f".{path.name}.gone-{uuid.uuid4().hex[:8]}"
    try:
        path.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def entry(kind: str, key: str, make: Callable[[Path], Any], *, ready: Callable[[Path], bool] = lambda p: True,
          waiting: Callable[[str], None] = lambda s: None) -> tuple[Path, bool]:
    """The folder of the entry ``kind``/``key``, made by ``make(folder)`` if it is missing or not ``ready``.
    Returns (folder, reused).

    ``make`` writes into an empty temporary folder beside the entry, which is renamed into place when it
    returns (if it raises, the temporary folder is removed and nothing else changes). A second process asking
    meanwhile waits (``waiting`` says for whom) and then reuses the entry."""
    _check_name(kind, key)
    folder = root() / kind / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    _hold_use(folder)
    if folder.is_dir() and ready(folder):
        _touch(folder)
        return folder, True
    with _build_lock(folder, waiting):
        if folder.is_dir() and ready(folder):  # made by the process we waited for
            _touch(folder)
            return folder, True
        tmp = folder.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            make(tmp)
            if folder.exists() or folder.is_symlink():
                _discard(folder)  # damaged or stale: a reader that holds its files keeps them
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    _touch(folder)
    return folder, False


@contextlib.contextmanager
def changing(kind: str, key: str, waiting: Callable[[str], None] = lambda s: None) -> Iterator[Path]:
    """Hold the build lock of an entry while changing it in place (re-signing a bundle)."""
    _check_name(kind, key)
    folder = root() / kind / key
    with _build_lock(folder, waiting):
        yield folder


@dataclass
class Entry:
    kind: str
    key: str
    path: Path
    size_bytes: int
    last_used: float  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "path": str(self.path), "size_bytes": self.size_bytes,
                "last_used": self.last_used,
                "last_used_iso": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.last_used))}


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def entries(base: Path | None = None) -> list[Entry]:
    """Every entry of the cache, most recently used first."""
    base = base or root()
    found = []
    for kind in KINDS:
        folder = base / kind
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") or not path.is_dir() or path.is_symlink():
                continue
            with contextlib.suppress(OSError):
                found.append(Entry(kind, path.name, path, _size(path), path.stat().st_mtime))
    return sorted(found, key=lambda e: -e.last_used)


def _try_exclusive(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path``, or None if someone holds it."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def prune(keep_bytes: int = 0, base: Path | None = None) -> dict[str, Any]:
    """Remove entries, least recently used first, until the cache holds at most ``keep_bytes``; an entry a
    process uses (or makes) is kept. Also removes what interrupted makes and removals left behind."""
    base = base or root()
    for kind in KINDS:  # leftovers of a make or a removal that was killed (only those nobody is making)
        folder = base / kind
        if folder.is_dir():
            for path in folder.glob(".*.tmp-*"):
                pid = path.name.rsplit(".tmp-", 1)[1].split("-")[0]
                if not pid.isdigit() or not _alive(int(pid)):
                    shutil.rmtree(path, ignore_errors=True)
            for path in folder.glob(".*.gone-*"):
                shutil.rmtree(path, ignore_errors=True)
    current = entries(base)
    total = sum(e.size_bytes for e in current)
    removed, kept_busy = [], []
    for e in reversed(current):  # least recently used first
        if total <= keep_bytes:
            break
        held: list[int] = []
        if fcntl is not None:
            e_own = e.path in _in_use  # this process uses it
            fds = [] if e_own else [_try_exclusive(_lock_path(e.path, "use")),
                                    _try_exclusive(_lock_path(e.path, "build"))]
            held = [fd for fd in fds if fd is not None]
            if e_own or len(held) < len(fds):
                for fd in held:
                    os.close(fd)
                kept_busy.append(e)
                continue
        try:
            _discard(e.path)
        finally:
            for fd in held:
                os.close(fd)
        total -= e.size_bytes
        removed.append(e)
    return {"removed": [e.to_dict() for e in removed], "in_use": [e.to_dict() for e in kept_busy],
            "freed_bytes": sum(e.size_bytes for e in removed), "remaining_bytes": total, "root": str(base)}


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) there is a Ctrl-C: count it alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
