"""Targets that run the bundle as a process on this machine, wired to the host by a null modem.

``releases/<id>/`` hold deployed bundles; ``current`` points at the running one and is switched
only after the new release's files are all present with the right hashes, so a failed deploy
leaves the previous release in place. The serial link is a pair of pseudo-terminals joined by
``socat`` (a virtual null-modem cable): the runner opens one end as its serial device, the host
opens the other with pyserial, exactly as with a USB-serial adapter.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from toolchain.boards import Board
from toolchain.build.compile import RUNNER, Bundle, read_bundle, verify_bundle
from toolchain.deploy.base import Capability, Release
from toolchain.errors import DeviceError, InputError, UsageError
from toolchain.export.manifest import PROGRAM_FILE

log = logging.getLogger(__name__)

LINK_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RUNNING_FILE = "running.json"
READY_TIMEOUT_S = 120.0  # loading a 350M program under emulation
READY_MARK = "HELLO sent"  # the runner's log line once it is serving


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcessTarget:
    name = "process"
    emulated = False  # an emulator is much slower than the board: deadlines stretch (bringup.timeouts_for)
    capabilities = frozenset({Capability.DEPLOY, Capability.START, Capability.SERIAL, Capability.STOP})

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

    def deploy(self, bundle: Bundle) -> Release:
        self.check_board()
        if bundle.board != self.board.name:
            raise UsageError(f"bundle {bundle.root} was built for {bundle.board}, not {self.board.name}")
        verify_bundle(bundle)
        release_id = f"{bundle.info['firmware_version']}-{bundle.info['model_sha256'][:12]}"
        releases = self.state / "releases"
        final = releases / release_id
        incoming = releases / f".incoming-{release_id}"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(bundle.root, incoming)
            verify_bundle(read_bundle(incoming))  # what arrived is what was sent
        except (OSError, InputError, shutil.Error) as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            raise DeviceError(f"deploy to {self.name}:{self.board.name} failed ({exc}); the previous release "
                              "is still current") from None
        current = self.current()
        if final.exists():
            if current is not None and current.path == final.resolve():
                shutil.rmtree(incoming)  # the same release is current already (and verified above)
                return current
            shutil.rmtree(final)
        incoming.rename(final)
        release = Release(release_id, final, self.board.name)
        self.activate(release)
        log.info("deployed %s to %s (hashes verified)", release_id, final)
        return release

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
        self._socat = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={board_end}", f"pty,raw,echo=0,link={host_end}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
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
        self._board_end, self._host_end = self._start_link()
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
        with self._log_file.open("wb") as logf:
            self._runner = subprocess.Popen(cmd, cwd=release.path, stdin=subprocess.DEVNULL, stdout=logf,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        (self.state / RUNNING_FILE).write_text(json.dumps({
            "runner_pid": self._runner.pid, "socat_pid": self._socat.pid if self._socat else None,
            "port": host_end, "release": release.id, "started": time.time()}))
        return host_end

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> str | None:
        """Wait until the runner has loaded its program and sent HELLO; None, or why it did not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            why = self.alive()
            if why is not None:
                return why
            try:
                if READY_MARK in self._log_file.read_text(errors="replace"):
                    return None
            except OSError:
                pass
            time.sleep(0.05)
        return f"no HELLO within {timeout_s:.0f} s"

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

    def running(self) -> dict | None:
        """The runner started by an earlier edgelm process (flash), if it still runs."""
        path = self.state / RUNNING_FILE
        if not path.exists():
            return None
        info = json.loads(path.read_text())
        return info if _pid_alive(info["runner_pid"]) else None

    def stop(self) -> None:
        procs = [p for p in (self._runner, self._socat) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._runner = self._socat = None
        info_path = self.state / RUNNING_FILE
        if info_path.exists():  # one started by another edgelm process
            info = json.loads(info_path.read_text())
            for key in ("runner_pid", "socat_pid"):
                pid = info.get(key)
                if pid and _pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            info_path.unlink()

