"""Targets that run the bundle as a process on this machine, wired to the host by a null modem.

``releases/<id>/`` hold deployed bundles, ``<id>`` computed from the bundle's file hashes
(:func:`toolchain.build.compile.release_id`); ``current`` points at the running one and is switched
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
import shutil
import signal
import subprocess
import time
from pathlib import Path

from toolchain.boards import Board
from toolchain.build import signing
from toolchain.build.compile import (
    BUNDLE_FILE,
    RUNNER,
    SIGNATURE_FILE,
    Bundle,
    parse_info,
    read_info_bytes,
    verify_bundle,
    verify_signature,
)
from toolchain.deploy.base import Capability, Release
from toolchain.errors import DeviceError, InputError, UsageError
from toolchain.export.manifest import PROGRAM_FILE

log = logging.getLogger(__name__)

LINK_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
RUNNING_FILE = "running.json"
READY_TIMEOUT_S = 120.0  # loading a 350M program under emulation
READY_MARK = "HELLO sent"  # the runner's log line once it is serving
TRUST_DIR = "trusted_keys"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

