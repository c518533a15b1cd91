"""A runner that is a process on this machine (the host board natively, an Arm board under
qemu-user), wired to the host by a null modem: a pair of pseudo-terminals joined by ``socat``.
The runner opens one end as its serial device, the host opens the other with pyserial, exactly as
with a USB-serial adapter. Releases are kept by :class:`toolchain.deploy.store.LocalStore`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import doctor, interrupts, procinfo
from toolchain.boards import Board
from toolchain.bundle.package import RUNNER
from toolchain.deploy.base import Release
from toolchain.errors import DeviceError
from toolchain.export.manifest import PROGRAM_FILE
from toolchain.link import ports
from toolchain.link.transport import Transport
from toolchain.procinfo import stat_start_time  # noqa: F401  (where it used to live)

log = logging.getLogger(__name__)

LINK_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RECORD_TIMEOUT_S = 1.0  # for a child's command line to appear in /proc after its exec
RUNNING_FILE = "running.json"
LEASE_FILE = "lease.json"  # a stop for a switch: the guard's token (ProcessRunner.stop)


@dataclass(frozen=True)
class ProcessRecord:
    """A process edgelm started, as this machine showed it then (:mod:`toolchain.procinfo`). A pid alone
    is not an identity: once the process ends, the kernel gives the number to the next process that starts."""

    pid: int
    start_time: int  # Linux: clock ticks after boot (field 22 of /proc/PID/stat); elsewhere psutil's (procinfo)
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessRecord | None:
        """The process ``pid`` names now; None when there is none (or only a zombie)."""
        seen = procinfo.look(pid)
        if seen is None or seen.state == "Z":
            return None
        return cls(pid, seen.start, seen.cmdline)

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


def record(proc: subprocess.Popen) -> dict[str, Any]:
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


class ProcessRunner:
    """Runner control and link provider for a runner that is a process on this machine, natively or
    under an emulator (``prefix``), wired to the host by a socat pseudo-terminal pair. What it
    starts is recorded in ``state/running.json`` (pid, start time, command line), so a later edgelm
    (``edgelm stop``, the next ``flash``) can stop exactly those processes and nothing else."""

    keeps_serving = True

    def __init__(self, state: Path, board: Board, prefix: Callable[[], list[str]] = list):
        self.state = state
        self.board = board
        self.prefix = prefix
        self.board_device = ""
        self._runner: subprocess.Popen | None = None
        self._socat: subprocess.Popen | None = None
        self._host_end = ""
        self._log_file = self.state / "runner.log"

    def _write_running(self, info: dict[str, Any]) -> None:
        path = self.state / RUNNING_FILE
        tmp = path.with_name(f".{RUNNING_FILE}.tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)  # a reader never sees half a file

    def _start_link(self) -> tuple[str, str]:
        if shutil.which("socat") is None:
            raise DeviceError("socat is not installed (it joins the board's and the host's pseudo-terminals)",
                              hint=doctor.hint("socat"))
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
                                 "processes": {"socat": record(self._socat)}})
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

    def connect(self) -> str:
        """Start the pseudo-terminal pair (a runner that still serves must have been stopped first:
        the bring-up does that, and says so); return the host's end."""
        if self._socat is not None and self._socat.poll() is None:
            return self._host_end
        try:
            self.board_device, self._host_end = self._start_link()
        except BaseException:
            self.stop()  # no socat left behind by a link that failed or was interrupted
            raise
        return self._host_end

    def open(self, port: str) -> Transport:
        return ports.open_port(port, self.board.baud)

    @property
    def _lease_path(self) -> Path:
        return self.state / LEASE_FILE

    def _arm_lease(self, lease_s: float) -> None:
        import secrets

        token = secrets.token_hex(8)
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self._lease_path.with_name(f".{LEASE_FILE}.tmp")
        tmp.write_text(json.dumps({"token": token, "board": self.board.name, "prefix": list(self.prefix())}))
        tmp.replace(self._lease_path)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
        subprocess.Popen([sys.executable, "-m", "toolchain.deploy.process", "guard", str(self.state),
                          str(max(1, int(lease_s))), token], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, env=env, cwd="/")

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        """Start ``release``'s runner on ``device``, the board's end of the link (``connect`` first)."""
        if self._socat is None or self._socat.poll() is not None:
            raise DeviceError("the serial link is not up: connect it before starting the runner")
        path = Path(release.path)
        cmd = [*self.prefix(), str(path / RUNNER), "--model", str(path / PROGRAM_FILE), "--serial", device]
        if threads:
            cmd += ["--threads", str(threads)]
        log.info("starting %s", " ".join(cmd))
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        with self._log_file.open("wb") as logf, interrupts.deferred():
            self._runner = subprocess.Popen(cmd, cwd=path, stdin=subprocess.DEVNULL, stdout=logf,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            processes = {"runner": record(self._runner), "socat": record(self._socat)}
            self._write_running({
                "runner_pid": self._runner.pid, "socat_pid": self._socat.pid,
                "port": self._host_end, "release": release.id, "started": time.time(), "processes": processes})
        # Started and recorded: a guard a stop left has nothing to do. Not before: an edgelm killed
        # (SIGKILL) between taking the lease back and starting the runner would leave nothing serving.
        self._lease_path.unlink(missing_ok=True)

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

    def stop(self, *, lease_s: float | None = None) -> str | None:
        """Stop the runner and the link: the ones this object started, and the ones running.json names
        if they are still those processes (same start time and command line; a pid alone may have
        been handed on to an unrelated process). Returns None, or what running.json named that no
        longer runs: that file was stale, and nothing was killed for it.

        ``lease_s`` (a stop for a switch): when a runner served, a guard process is left behind that
        starts the current release again once the lease runs out, unless a start takes the lease
        back first (see :func:`guard`): an edgelm killed between its stop and its start (SIGKILL)
        leaves a release serving all the same. Without it, a lease left earlier is taken back."""
        self._lease_path.unlink(missing_ok=True)
        if lease_s is not None and self.running() is not None:
            self._arm_lease(lease_s)
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


def guard(state: Path, lease_s: float, token: str) -> str:
    """The guard a stop for a switch leaves (``python -m toolchain.deploy.process guard STATE SECONDS
    TOKEN``, in a session of its own): after ``lease_s``, if the lease is still the one with
    ``token`` (no start took it back), nothing serves and no edgelm holds the target, it starts
    the current release's runner and its link as ``flash`` would have, and leaves them serving.
    Returns what it did (for its log)."""
    from toolchain import boards
    from toolchain.deploy import lock as lock_mod
    from toolchain.errors import EdgelmError

    time.sleep(lease_s)
    path = state / LEASE_FILE
    try:
        lease = json.loads(path.read_text())
    except (OSError, ValueError):
        return "the lease was taken back"
    if not isinstance(lease, dict) or lease.get("token") != token:
        return "another lease replaced it"
    try:
        with lock_mod.hold(state, "guard"):
            path.unlink(missing_ok=True)
            runner = ProcessRunner(state, boards.get(str(lease["board"])), lambda: [str(x) for x in lease["prefix"]])
            if runner.running() is not None:
                return "a runner serves already"
            link = state / "current"
            if not link.is_symlink():
                return "nothing is current"
            folder = link.resolve()
            release = Release(folder.name, str(folder), str(lease["board"]), "")
            runner.stop()  # what a killed edgelm started of its link (socat) and recorded, before a new one
            try:
                runner.connect()
                runner.start(release, device=runner.board_device)
            except BaseException:
                runner.stop()
                raise
            return f"started the runner of {release.id} again"
    except EdgelmError as exc:  # the target is busy (an edgelm works on it), or the start failed
        return f"nothing started: {exc}"


if __name__ == "__main__":  # the guard, started by ProcessRunner.stop(lease_s=...)
    if len(sys.argv) == 5 and sys.argv[1] == "guard":
        logging.basicConfig(level=logging.INFO)
        log.info("%s", guard(Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
