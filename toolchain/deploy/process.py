"""Targets that run the bundle as a process on this machine, wired to the host by a null modem.

``releases/<id>/`` hold deployed bundles, ``<id>`` computed from the bundle's file hashes
(:func:`toolchain.bundle.package.release_id`); ``current`` points at the running one and is switched
only after the new release's files are all present with the right hashes, so a failed deploy
leaves the previous release in place. Public keys in ``trusted_keys/`` make the target accept
only bundles signed by one of them. The serial link is a pair of pseudo-terminals joined by
``socat`` (a virtual null-modem cable): the runner opens one end as its serial device, the host
opens the other with pyserial, exactly as with a USB-serial adapter.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import interrupts
from toolchain.boards import Board
from toolchain.bundle import signing
from toolchain.bundle.package import (
    BUNDLE_FILE,
    RUNNER,
    SIGNATURE_FILE,
    Bundle,
    parse_info,
    read_info_bytes,
    verify_bundle,
    verify_signature,
)
from toolchain.deploy import lock
from toolchain.deploy.base import Capability, Release
from toolchain.errors import DeviceError, InputError, UsageError
from toolchain.export.manifest import PROGRAM_FILE

log = logging.getLogger(__name__)

LINK_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RECORD_TIMEOUT_S = 1.0  # for a child's command line to appear in /proc after its exec
RUNNING_FILE = "running.json"
TRUST_DIR = "trusted_keys"


def stat_start_time(stat: bytes) -> tuple[str, int]:
    """(state, start time) from the text of /proc/PID/stat: fields 3 and 22.

    Field 2 is the command name in parentheses, and it may itself hold spaces and ')': the fields
    after it are counted from the last ')'.
    """
    rest = stat[stat.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[22 - 3])


@dataclass(frozen=True)
class ProcessRecord:
    """A process edgelm started, as /proc showed it then. A pid alone is not an identity: once the
    process ends, the kernel gives the number to the next process that starts."""

    pid: int
    start_time: int  # clock ticks after boot (field 22 of /proc/PID/stat)
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessRecord | None:
        """The process ``pid`` names now; None when there is none (or only a zombie)."""
        try:
            state, start = stat_start_time(Path(f"/proc/{pid}/stat").read_bytes())
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        if state == "Z":
            return None
        return cls(pid, start, tuple(x.decode(errors="replace") for x in raw.split(b"\0")[:-1]))

    @classmethod
    def from_dict(cls, d: Any) -> ProcessRecord | None:
        try:
            return cls(int(d["pid"]), int(d["start_time"]), tuple(str(x) for x in d["cmdline"]))
        except (TypeError, KeyError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_time": self.start_time, "cmdline": list(self.cmdline)}

    def changed(self) -> str | None:
        """None while ``pid`` is still this process, else what became of it."""
        now = ProcessRecord.of(self.pid)
        if now is None:
            return "has exited"
        if now == self:
            return None
        what = shlex.join(now.cmdline)[:80] if now.cmdline else "a kernel thread"
        return f"is now another process ({what})"

    def send(self, sig: int) -> bool:
        """Send ``sig`` if ``pid`` is still this process; whether it was sent."""
        try:  # a pidfd pins the process: it cannot end and hand its pid on between the check and the kill
            fd: int | None = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return False
        except (AttributeError, OSError):  # no pidfd_open here: check and kill microseconds apart
            fd = None
        try:
            if self.changed() is not None:
                return False
            if fd is None:
                os.kill(self.pid, sig)
            else:
                signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            raise DeviceError(f"cannot stop pid {self.pid} ({shlex.join(self.cmdline)[:80]}): it belongs to "
                              "another user", hint="stop it as that user") from None
        finally:
            if fd is not None:
                os.close(fd)


def _record(proc: subprocess.Popen) -> dict[str, Any]:
    """What running.json keeps of a child just started.

    Popen returns once the exec has begun, and for a moment after that the new command line is not
    in place yet (/proc shows it empty): wait for it.
    """
    deadline = time.monotonic() + RECORD_TIMEOUT_S
    while True:
        rec = ProcessRecord.of(proc.pid)
        if rec is None:
            return ProcessRecord(proc.pid, -1, ()).to_dict()  # ended already: matches nothing
        if rec.cmdline or time.monotonic() > deadline:
            return rec.to_dict()
        time.sleep(0.001)


def _stop_children(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_recorded(records: list[ProcessRecord]) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S, to the processes that are still the recorded ones."""
    live = [r for r in records if r.send(signal.SIGTERM)]
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while live and time.monotonic() < deadline:
        time.sleep(0.02)
        live = [r for r in live if r.changed() is None]
    for rec in live:
        rec.send(signal.SIGKILL)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    return shutil.disk_usage(_existing(path)).free


def _fs_of(path: Path) -> str:
    return f"the filesystem of {_existing(path)}"


class ProcessTarget:
    name = "process"
    emulated = False  # an emulator is much slower than the board: deadlines stretch (bringup.timeouts_for)
    capabilities = frozenset({Capability.DEPLOY, Capability.START, Capability.SERIAL, Capability.STOP,
                              Capability.TRUST})

    def __init__(self, board: Board, state_dir: Path):
        self.board = board
        self.state = state_dir / f"{self.name}-{board.name}"
        self._runner: subprocess.Popen | None = None
        self._socat: subprocess.Popen | None = None
        self._board_end = self._host_end = ""
        self._log_file = self.state / "runner.log"

    # To be specialised ---------------------------------------------------------------------------

    def check_board(self) -> None:
        """Refuse a board this target cannot run."""

    def command_prefix(self) -> list[str]:
        return []

    # Deploy --------------------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.name}:{self.board.name}"

    def deploy(self, bundle: Bundle) -> Release:
        """Verify ``bundle`` (signature when keys are trusted, file list, hashes), copy it into
        ``releases/<id>``, verify the copy, make it current. Nothing changes here on a refusal."""
        self.check_board()
        if bundle.board != self.board.name:
            raise UsageError(f"bundle {bundle.root} was built for {bundle.board}, not {self.board.name}")
        trusted = self.trusted_keys()
        source, source_bytes = self._checked(bundle.root, trusted)  # refusals happen here, before any write
        if source.files != bundle.files or source.board != bundle.board:
            raise InputError(f"bundle {bundle.root} changed after it was read", hint="flash it again")
        release_id = source.release_id
        releases = self.state / "releases"
        final = releases / release_id
        current = self.current()
        now = f"release {current.id} is still current" if current is not None else "nothing is deployed"
        if current is not None and current.path == final.resolve() and self._same(final, source_bytes, trusted):
            return current  # the same release is current already, and its deployed copy verifies
        names = [*source.files, BUNDLE_FILE, *([SIGNATURE_FILE] if (source.root / SIGNATURE_FILE).exists() else [])]
        need = sum((source.root / n).lstat().st_size for n in names)
        free = _free_bytes(releases)
        if need > free:
            raise DeviceError(f"deploy to {self.where} needs {need:,} bytes but {_fs_of(releases)} has {free:,} "
                              f"free; {now}", hint="free some space there, or use another --workdir")
        incoming = releases / f".incoming-{release_id}"
        _remove(incoming)
        try:
            incoming.mkdir(parents=True)
            for name in names:  # the listed files only; a link is copied as a link and refused below
                shutil.copy2(source.root / name, incoming / name, follow_symlinks=False)
            arrived, _ = self._checked(incoming, trusted)  # what arrived is what was sent
            if arrived.files != source.files:
                raise InputError(f"the copy lists other files than {source.root}")
        except OSError as exc:
            _remove(incoming)
            if exc.errno == errno.ENOSPC:
                raise DeviceError(f"deploy to {self.where} ran out of space: it needs {need:,} bytes and "
                                  f"{_fs_of(releases)} has {_free_bytes(releases):,} free; {now}",
                                  hint="free some space there, or use another --workdir") from None
            raise DeviceError(f"deploy to {self.where} failed: {exc.strerror or exc} "
                              f"({exc.filename or incoming}); {now}") from None
        except InputError as exc:
            _remove(incoming)
            raise DeviceError(f"deploy to {self.where} failed: the copy does not verify ({exc}); {now}") from None
        if final.exists() or final.is_symlink():  # an earlier copy of this release: replaced by the verified one
            old = releases / f".old-{release_id}"
            _remove(old)
            final.rename(old)
            incoming.rename(final)
            _remove(old)
        else:
            incoming.rename(final)
        release = Release(release_id, final, self.board.name)
        self.activate(release)
        log.info("deployed %s to %s (hashes verified)", release_id, final)
        return release

    def _checked(self, root: Path, trusted: list[signing.Ed25519PublicKey]) -> tuple[Bundle, bytes]:
        """The bundle at ``root`` from one read of bundle.json: signature, file list, every hash."""
        data = read_info_bytes(root)
        if trusted:
            verify_signature(root, data, trusted, f"{self.where} (it trusts {len(trusted)} key(s))")
        bundle = Bundle(root, parse_info(data, str(root / BUNDLE_FILE)))
        verify_bundle(bundle)
        return bundle, data

    def _same(self, deployed: Path, source_bytes: bytes, trusted: list[signing.Ed25519PublicKey]) -> bool:
        """The deployed copy at ``deployed`` has the same bundle.json and still verifies."""
        try:
            _, data = self._checked(deployed, trusted)
        except (InputError, OSError) as exc:
            log.warning("deployed copy %s does not verify (%s); replacing it", deployed, exc)
            return False
        return data == source_bytes

    # Trust ---------------------------------------------------------------------------------------

    def trust(self, public_key_pem: bytes) -> str:
        """From now on accept only bundles signed by this key (or another trusted one); its fingerprint."""
        self.check_board()
        key = signing.parse_public_key(public_key_pem, "the public key")
        fp = signing.fingerprint(key)
        folder = self.state / TRUST_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{fp[:16]}{signing.PUBLIC_SUFFIX}"
        tmp = folder / f".{path.name}.tmp"
        tmp.write_bytes(signing.public_pem(key))
        tmp.replace(path)
        return fp

    def trusted_keys(self) -> list[signing.Ed25519PublicKey]:
        folder = self.state / TRUST_DIR
        if not folder.is_dir():
            return []
        return [signing.parse_public_key(p.read_bytes(), f"trusted key {p}")
                for p in sorted(folder.glob(f"*{signing.PUBLIC_SUFFIX}"))]

    def activate(self, release: Release) -> None:
        """Make ``release`` the current one (an atomic symlink switch)."""
        link = self.state / "current"
        tmp = self.state / ".current.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(release.path.relative_to(self.state))
        tmp.replace(link)

    def current(self) -> Release | None:
        link = self.state / "current"
        if not link.exists():
            return None
        path = link.resolve()
        return Release(path.name, path, self.board.name)

    # Run -----------------------------------------------------------------------------------------

    def lock(self, what: str) -> AbstractContextManager[None]:
        """``with target.lock("flash"):`` one job at a time on this target; another edgelm that holds
        it makes this raise DeviceError at once, naming the holder's pid and command."""
        return lock.hold(self.state, what, f"{self.name}:{self.board.name}")

    def _write_running(self, info: dict[str, Any]) -> None:
        path = self.state / RUNNING_FILE
        tmp = path.with_name(f".{RUNNING_FILE}.tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)  # a reader never sees half a file

    def _start_link(self) -> tuple[str, str]:
        if shutil.which("socat") is None:
            raise DeviceError("socat is not installed (it joins the board's and the host's pseudo-terminals)",
                              hint="`make setup` installs it")
        link_dir = self.state / "link"
        link_dir.mkdir(parents=True, exist_ok=True)
        board_end, host_end = link_dir / "board", link_dir / "host"
        for p in (board_end, host_end):
            if p.is_symlink() or p.exists():
                p.unlink()
        with interrupts.deferred():  # started means recorded, for a later `edgelm stop` too
            self._socat = subprocess.Popen(
                ["socat", f"pty,raw,echo=0,link={board_end}", f"pty,raw,echo=0,link={host_end}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            self._write_running({"runner_pid": None, "socat_pid": self._socat.pid, "port": str(host_end),
                                 "release": None, "started": time.time(),
                                 "processes": {"socat": _record(self._socat)}})
        deadline = time.monotonic() + LINK_TIMEOUT_S
        while not (board_end.exists() and host_end.exists()):
            if self._socat.poll() is not None:
                why = self._socat.stderr.read().decode(errors="replace").strip() if self._socat.stderr else ""
                why = why or f"exit {self._socat.returncode}"
                raise DeviceError(f"socat could not create the serial link: {why}")
            if time.monotonic() > deadline:
                raise DeviceError("socat did not create the serial link in time")
            time.sleep(0.02)
        return str(board_end), str(host_end)

    def link(self) -> str:
        """Start the serial link (stopping a runner left from before); return the host's port."""
        self.check_board()
        self.stop()
        try:
            self._board_end, self._host_end = self._start_link()
        except BaseException:
            self.stop()  # no socat left behind by a link that failed or was interrupted
            raise
        return self._host_end

    def start(self, threads: int | None = None) -> str:
        """Start the current release's runner on the link (started here if ``link`` was not called)."""
        self.check_board()
        release = self.current()
        if release is None:
            raise UsageError(f"nothing is deployed on {self.name}:{self.board.name}", hint="run `edgelm flash` first")
        if self._socat is None or self._socat.poll() is not None:
            self.link()
        board_end, host_end = self._board_end, self._host_end
        cmd = [*self.command_prefix(), str(release.path / RUNNER), "--model", str(release.path / PROGRAM_FILE),
               "--serial", board_end]
        if threads:
            cmd += ["--threads", str(threads)]
        log.info("starting %s", " ".join(cmd))
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        with self._log_file.open("wb") as logf, interrupts.deferred():
            self._runner = subprocess.Popen(cmd, cwd=release.path, stdin=subprocess.DEVNULL, stdout=logf,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            processes = {"runner": _record(self._runner)}
            if self._socat is not None:
                processes["socat"] = _record(self._socat)
            self._write_running({
                "runner_pid": self._runner.pid, "socat_pid": self._socat.pid if self._socat else None,
                "port": host_end, "release": release.id, "started": time.time(), "processes": processes})
        return host_end

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self._log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def alive(self) -> str | None:
        if self._runner is None:
            return "not started"
        code = self._runner.poll()
        if code is None:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        tail = self.log_tail()
        return f"runner {how}" + (f": {tail}" if tail else "")

    def _recorded(self) -> dict[str, ProcessRecord] | None:
        """running.json's processes by role; None when there is no file, {} when it names none usable."""
        try:
            info = json.loads((self.state / RUNNING_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        processes = info.get("processes") if isinstance(info, dict) else None
        if not isinstance(processes, dict):
            return {}  # written by an older edgelm, or damaged
        records = {role: ProcessRecord.from_dict(d) for role, d in processes.items()}
        return {role: rec for role, rec in records.items() if rec is not None}

    def running(self) -> dict | None:
        """The runner started by an earlier edgelm process (flash), if that process still runs."""
        path = self.state / RUNNING_FILE
        recorded = self._recorded()
        runner = (recorded or {}).get("runner")
        if runner is None or runner.changed() is not None:
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> str | None:
        """Stop the runner and the link: the ones this object started, and the ones running.json names
        if they are still those processes (same start time and command line; a pid alone may have
        been handed on to an unrelated process). Returns None, or what running.json named that no
        longer runs: that file was stale, and nothing was killed for it."""
        with interrupts.deferred():  # a signal now would leave a child running
            ours = [p for p in (self._runner, self._socat) if p is not None]
            _stop_children(ours)
            self._runner = self._socat = None
            recorded = self._recorded()
            if recorded is None:
                return None
            path = self.state / RUNNING_FILE
            mine = {p.pid for p in ours}
            live, stale = [], []
            for role, rec in recorded.items():
                if rec.pid in mine:
                    continue
                why = rec.changed()
                if why is None:
                    live.append(rec)
                else:
                    stale.append(f"{role} pid {rec.pid} {why}")
            _stop_recorded(live)
            path.unlink(missing_ok=True)
            if not recorded:
                stale.append("it records no process identity (start time, command line)")
            if not stale:
                return None
            note = f"found a stale PID file {path}: {'; '.join(stale)}; removed it, and killed none of those"
            log.info("%s", note)
            return note
