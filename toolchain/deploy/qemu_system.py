"""``qemu-system[:IMAGE]``: an Arm board that boots, under full-system emulation.

``qemu-system-aarch64 -M virt`` with the board's CPU, RAM and cores boots the board image
(:mod:`toolchain.image.builder`: Debian's arm64 kernel, an initramfs with BusyBox and dropbear, a
persistent ext4 data disk). The board then looks to edgelm as a Raspberry Pi on the desk does:

    power    QEMU is the board's power: on (boot, wait for its SSH server), off, cycle
    store    releases on the data disk, over SSH (the ssh:// target's store; the guest's port 22 is
             forwarded to a free port on 127.0.0.1)
    service  ``edgelm-service`` in the guest serves the current release on the PL011 UART
             (``/dev/ttyAMA0``) and restarts it when it exits; the host starts and stops it over SSH
    link     the UART, on a TCP socket on 127.0.0.1 (``socket://``: a board's serial port)
    console  the kernel console and every line of the service, on a second serial port, into
             ``console.log`` in the target's state folder: where an out-of-memory kill is read

Without ``:IMAGE`` the image lives in the target's state folder and is built (with no release) the
first time the board is powered on. QEMU outlives the edgelm command that boots it (``flash`` leaves
the board serving); ``run`` powers the board off again if it was off before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolchain import doctor
from toolchain.boards import Board
from toolchain.bundle.package import Bundle
from toolchain.deploy import preflight
from toolchain.deploy.base import Progress, Release, Target, TargetOptions, missing_tools, no_progress
from toolchain.deploy.process import ProcessRecord
from toolchain.deploy.process import record as process_record
from toolchain.deploy.ssh import SshStore
from toolchain.deploy.sshclient import Ssh, SshSpec
from toolchain.deploy.store import TRUST_DIR
from toolchain.errors import DeviceError, UsageError
from toolchain.image import builder
from toolchain.link import ports
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import Transport

log = logging.getLogger(__name__)

NAME = "qemu-system"
QEMU = "qemu-system-aarch64"
MACHINE_FILE = "machine.json"
CONSOLE_LOG = "console.log"
QEMU_LOG = "qemu.log"
SSH_CONFIG = "ssh_config"
KNOWN_HOSTS = builder.KNOWN_HOSTS
SSH_ALIAS = "edgelm-board"
BOOT_TIMEOUT_S = 180.0  # kernel + init + SSH server up, 4 emulated cores on a 2-core host under load
BOOT_POLL_S = 0.1
INIT_UP = b"edgelm-init: up in"  # the init's last line before the SSH server and the service run
POWER_OFF_TIMEOUT_S = 10.0
SERVICE_TIMEOUT_S = 30.0
STARTING_S = 10.0  # "starting" this long at boot: the service has nothing to serve
VERIFY_TIMEOUT_S = 900.0  # sha256sum in the guest runs at about 15 MB/s under TCG: a 1.7 GB program takes 2 min
CMDLINE = "console=ttyS0 quiet panic=1"
# Full-system emulation of every instruction: slower still than qemu-user.
TIMEOUTS = Timeouts(hello_s=300.0, first_token_s=180.0, token_s=45.0)
_EXITED = re.compile(r"edgelm-service: runner of (r-[0-9a-f]{16}) exited with status ([0-9]{1,3})")
_OOM = re.compile(r"(Out of memory: Killed process [0-9]+ \([^)]{0,32}\)[^\n]{0,160}|oom-kill:[^\n]{0,160})")
_SERVICE_STATUS = re.compile(r"(running ([0-9]+) (r-[0-9a-f]{16})|held|verifying r-[0-9a-f]{16}|starting)\Z")


def runner_exit(console: str, board: Board, release: str | None = None) -> str | None:
    """Why the service's runner (of ``release``, or any) ended, from the console's lines; None if it did not.
    An out-of-memory kill is named as such, with the kernel's line."""
    for m in _EXITED.finditer(console):
        if release is None or m.group(1) == release:
            oom = _OOM.search(console)
            if oom:
                return (f"the board ran out of memory: the kernel killed the runner ({_printable(oom.group(1))}); "
                        f"{board.name} has {board.ram_mb} MiB")
            return f"runner exited with status {m.group(2)}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma ends the value unless doubled (else a folder named
    ``x,readonly=off`` would add options to the drive)."""
    return str(path).replace(",", ",,")


def _config_path(path: Path) -> str:
    """``path`` for an ssh_config line (quoted); refused if it holds what that file would read otherwise."""
    text = str(path)
    if any(not c.isprintable() or c in '"%' for c in text):
        raise UsageError(f"the path {text[:120]!r} holds a control character, '\"' or '%': it cannot be named in an "
                         "ssh_config file", hint="use a plainer folder name")
    return f'"{text}"'


def _printable(text: str, limit: int = 200) -> str:
    """What the guest printed, safe to show: printable ASCII, cut."""
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text.strip())[:limit]


class Machine:
    """The board's power: a QEMU process booting the image, recorded in ``machine.json`` (pid and
    start time: a pid alone could name another process by now)."""

    def __init__(self, board: Board, state: Path, image_dir: Path, build_if_missing: bool):
        self.board = board
        self.state = state
        self.image_dir = image_dir
        self.build_if_missing = build_if_missing
        self.console = state / CONSOLE_LOG
        self.ssh_config = state / SSH_CONFIG

    # what runs -----------------------------------------------------------------------------------

    def record(self) -> dict[str, Any] | None:
        """machine.json while its QEMU still runs; None (and the stale file removed) otherwise."""
        path = self.state / MACHINE_FILE
        try:
            rec = json.loads(path.read_text())
            proc = ProcessRecord.from_dict(rec["process"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            log.warning("%s is unreadable; treating the board as off", path)
            proc = None
            rec = None
        if proc is not None:
            _reap(proc.pid)
            if proc.changed() is None:
                return rec
        path.unlink(missing_ok=True)
        return None

    def is_on(self) -> bool:
        return self.record() is not None

    def require_on(self) -> dict[str, Any]:
        rec = self.record()
        if rec is None:
            raise DeviceError(f"the emulated {self.board.name} is powered off",
                              hint=f"`edgelm power on --board {self.board.name} --target {NAME}`, or run/flash "
                                   "(they boot it)")
        return rec

    def why_off(self) -> str:
        """Why QEMU is not running: its last words."""
        try:
            lines = [x for x in (self.state / QEMU_LOG).read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            lines = []
        return "the emulated board is off (QEMU is not running" + (f": {_printable(lines[-1])})" if lines else ")")

    # power -------------------------------------------------------------------------------------

    def image(self, progress: Progress = no_progress) -> builder.Image:
        if not (self.image_dir / builder.IMAGE_FILE).is_file() and self.build_if_missing:
            progress("image", f"building the {self.board.name} board image in {self.image_dir} (no release yet)")
            builder.build(self.board, self.image_dir, progress=progress)
        image = builder.read_image(self.image_dir)
        if image.board != self.board.name:
            raise UsageError(f"image {self.image_dir} is for board {image.board}, not {self.board.name}")
        builder.verify_boot(image)
        return image

    def argv(self, image: builder.Image, ssh_port: int, uart_port: int) -> list[str]:
        b = self.board
        return [QEMU, "-M", "virt", "-cpu", b.qemu_cpu or "max", "-m", str(b.ram_mb), "-smp", str(b.cores),
                "-display", "none", "-monitor", "none", "-no-reboot",
                "-kernel", str(image.kernel), "-initrd", str(image.initramfs), "-append", CMDLINE,
                "-chardev", f"socket,id=uart,host=127.0.0.1,port={uart_port},server=on,wait=off,nodelay=on",
                "-serial", "chardev:uart",
                "-chardev", f"file,id=console,path={_opt(self.console)}", "-device", "pci-serial,chardev=console",
                "-drive", f"file={_opt(image.data)},format=raw,if=none,id=data,cache=writeback",
                "-device", "virtio-blk-pci,drive=data",
                "-netdev", f"user,id=net,hostfwd=tcp:127.0.0.1:{ssh_port}-:22", "-device", "virtio-net-pci,netdev=net"]

    def _write_ssh_config(self, ssh_port: int) -> None:
        key = builder.default_key()
        text = (f"Host {SSH_ALIAS}\n  HostName 127.0.0.1\n  Port {ssh_port}\n  User {builder.SSH_USER}\n"
                f"  IdentityFile {_config_path(key)}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {_config_path(self.image_dir / KNOWN_HOSTS)}\n"
                f"  HostKeyAlias edgelm-{self.board.name}\n  PasswordAuthentication no\n")
        tmp = self.ssh_config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.ssh_config)

    def on(self, progress: Progress = no_progress) -> bool:
        """Boot the board unless it runs; whether it was booted now. Returns once its SSH server answers."""
        if self.is_on():
            return False
        if shutil.which(QEMU) is None:
            raise DeviceError(f"{QEMU} is not installed", hint=doctor.hint(QEMU))
        image = self.image(progress)
        self.state.mkdir(parents=True, exist_ok=True)
        ssh_port, uart_port = _free_port(), _free_port()
        if self.console.exists():
            self.console.replace(self.state / (CONSOLE_LOG + ".1"))  # the last boot's, for a post-mortem
        argv = self.argv(image, ssh_port, uart_port)
        progress("power", f"booting {self.board.name}: {QEMU} -cpu {self.board.qemu_cpu} -m {self.board.ram_mb} "
                          f"-smp {self.board.cores}")
        started = time.monotonic()
        with (self.state / QEMU_LOG).open("wb") as qlog:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog, start_new_session=True)
        self._write_ssh_config(ssh_port)
        record = {"process": process_record(proc), "ssh_port": ssh_port, "uart_port": uart_port,
                  "image": str(self.image_dir), "board": self.board.name, "booted_at": time.time()}
        self._save(record)
        watch = HelloWatch(f"socket://127.0.0.1:{uart_port}", self.board.baud, started, proc)
        try:
            self._wait_ssh(proc, started)
            record["boot_s"] = round(time.monotonic() - started, 2)
            if self._serving():  # the service started the current release at boot: its HELLO is the board up
                progress("power", f"{self.board.name}: SSH up in {record['boot_s']:.1f} s; waiting for the "
                                  "runner's HELLO on the UART")
                record["boot_to_hello_s"] = watch.result(
                    TIMEOUTS.hello_s, lambda: runner_exit(self._console_text(), self.board))
                record["boot_hello_model_sha256"] = watch.model_sha256
                if watch.error:
                    record["boot_error"] = f"the release serving at boot did not say HELLO: {watch.error}"
        except BaseException:
            watch.close()
            self.off()
            raise
        watch.close()
        self._save(record)
        hello = record.get("boot_to_hello_s")
        progress("power", f"{self.board.name} booted: SSH in {record['boot_s']:.1f} s"
                          + (f", HELLO on the UART {hello:.1f} s after power on" if hello is not None else "")
                          + f" (SSH 127.0.0.1:{ssh_port}, UART socket://127.0.0.1:{uart_port})")
        if record.get("boot_error"):
            progress("power", str(record["boot_error"]))
        return True

    def _ssh(self, connect_timeout_s: int) -> Ssh:
        """A connection of its own to the guest, for the power steps (boot, status, sync before off)."""
        return Ssh(SshSpec(SSH_ALIAS), config=self.ssh_config, accept_new_host_key=True,
                   connect_timeout_s=connect_timeout_s, multiplex=False)

    def _save(self, record: dict[str, Any]) -> None:
        tmp = self.state / (MACHINE_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.state / MACHINE_FILE)

    def _console_text(self) -> str:
        try:
            return self.console.read_bytes()[-(1 << 20):].decode(errors="replace")
        except OSError:
            return ""

    def _serving(self) -> bool:
        """Whether the service serves a release at boot: once it has verified it (the once-per-boot hash
        of every file, minutes for a large program under emulation) and started its runner."""
        deadline = time.monotonic() + VERIFY_TIMEOUT_S
        starting_since: float | None = None
        while time.monotonic() < deadline:
            proc = self._ssh(5).run(["edgelm-service", "status"], timeout_s=SERVICE_TIMEOUT_S)
            status = proc.stdout.decode(errors="replace").strip() if proc.returncode == 0 else ""
            if status.startswith("running "):
                return True
            if status == "starting":  # between two steps of the service, or nothing to serve
                starting_since = starting_since or time.monotonic()
                if time.monotonic() - starting_since > STARTING_S:
                    return False
            elif not status.startswith("verifying "):
                return False  # held, or no answer
            else:
                starting_since = None
            time.sleep(0.5)
        return False

    def _wait_ssh(self, proc: subprocess.Popen[bytes], started: float) -> None:
        """Until the guest's SSH server answers. QEMU accepts on the forwarded port long before the guest
        listens (a client then waits for a banner that never comes): try once the init says it is up."""
        ssh = self._ssh(10)
        last = ""
        while time.monotonic() - started < BOOT_TIMEOUT_S:
            if proc.poll() is not None:
                raise DeviceError(f"{QEMU} exited with status {proc.returncode} while booting: "
                                  f"{self.why_off()}", hint=f"see {self.state / QEMU_LOG} and {self.console}")
            try:
                up = INIT_UP in self.console.read_bytes()
            except OSError:
                up = False
            if up:
                try:
                    if ssh.run(["true"], timeout_s=30).returncode == 0:
                        return
                except DeviceError as exc:
                    last = str(exc)
            time.sleep(BOOT_POLL_S)
        raise DeviceError(f"the emulated {self.board.name} did not answer on SSH within {BOOT_TIMEOUT_S:.0f} s"
                          + (f" ({last})" if last else ""), hint=f"see the console log {self.console}")

    def off(self) -> bool:
        """Power off (data written to the disk is synced first when the guest still answers); whether it ran."""
        rec = self.record()
        if rec is None:
            return False
        proc = ProcessRecord.from_dict(rec["process"])
        try:
            self._ssh(3).run(["sync"], timeout_s=POWER_OFF_TIMEOUT_S)
        except DeviceError as exc:
            log.info("no sync before power off: %s", exc)
        if proc is not None:
            proc.send(signal.SIGTERM)
            deadline = time.monotonic() + POWER_OFF_TIMEOUT_S
            while proc.changed() is None and time.monotonic() < deadline:
                _reap(proc.pid)
                time.sleep(0.05)
            if proc.changed() is None:
                proc.send(signal.SIGKILL)
                time.sleep(0.1)
            _reap(proc.pid)
        (self.state / MACHINE_FILE).unlink(missing_ok=True)
        return True

    def cycle(self, progress: Progress = no_progress) -> None:
        self.off()
        self.on(progress)

    def status(self) -> dict[str, Any]:
        rec = self.record()
        if rec is None:
            return {"on": False, "image": str(self.image_dir), "console_log": str(self.console)}
        return {"on": True, "pid": rec["process"]["pid"], "ssh": f"127.0.0.1:{rec['ssh_port']}",
                "uart": f"socket://127.0.0.1:{rec['uart_port']}", "boot_s": rec.get("boot_s"),
                "boot_to_hello_s": rec.get("boot_to_hello_s"), "booted_at": rec.get("booted_at"),
                "boot_hello_model_sha256": rec.get("boot_hello_model_sha256"), "boot_error": rec.get("boot_error"),
                "image": rec.get("image"), "console_log": str(self.console)}


class HelloWatch:
    """Listens on the UART from power on, for the HELLO of the runner the service starts at boot:
    the board's boot-to-HELLO time. QEMU drops what its UART sends while no one is connected."""

    def __init__(self, port: str, baud: int, started: float, proc: subprocess.Popen[bytes]):
        self.started = started
        self.transport: Transport | None = None
        self.hello_s: float | None = None
        self.model_sha256: str | None = None
        self.error: str | None = None
        deadline = time.monotonic() + 5.0
        while self.transport is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                self.transport = ports.open_port(port, baud)
            except DeviceError:
                time.sleep(0.01)
        self.thread = threading.Thread(target=self._run, name="edgelm-hello-watch", daemon=True)
        if self.transport is not None:
            self.thread.start()

    def _run(self) -> None:
        assert self.transport is not None
        try:
            hello = BoardSession(self.transport, Timeouts(hello_s=TIMEOUTS.hello_s)).wait_hello()
            self.hello_s = round(time.monotonic() - self.started, 2)
            self.model_sha256 = hello.model_sha256
        except Exception as exc:  # noqa: BLE001 - the socket closed under it (close()), or the board failed: say why
            self.error = str(exc) or type(exc).__name__

    def result(self, timeout_s: float, ended: Callable[[], str | None]) -> float | None:
        """Seconds from power on to HELLO; None (``error`` says why) when the runner ended first
        (``ended``: why, from the console) or nothing came within ``timeout_s``."""
        if self.transport is None:
            self.error = "the UART socket did not open"
            return None
        deadline = time.monotonic() + timeout_s
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.thread.join(0.25)
            why = ended() if self.thread.is_alive() else None
            if why is not None:
                self.error = why
                break
        if self.hello_s is None:
            self.error = self.error or f"no HELLO within {timeout_s:.0f} s"
            log.warning("no HELLO on the UART after boot: %s", self.error)
        return self.hello_s

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.thread.join(5.0)
            self.transport = None


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (else it stays a zombie and looks alive)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


class GuestSsh(Ssh):
    """SSH into the guest; refused in one line while the board is off."""

    def __init__(self, machine: Machine):
        super().__init__(SshSpec(SSH_ALIAS), config=machine.ssh_config, accept_new_host_key=True)
        self.machine = machine

    def argv(self, remote: Any) -> list[str]:
        self.machine.require_on()
        return super().argv(remote)


class GuestService:
    """Runner control and link: ``edgelm-service`` in the guest serves the current release on the
    board's UART; the host's end is QEMU's socket for that UART."""

    keeps_serving = True
    board_device = builder.UART

    def __init__(self, machine: Machine, ssh: Ssh, board: Board):
        self.machine = machine
        self.ssh = ssh
        self.board = board
        self._console_from = 0
        self._release: str | None = None

    def connect(self) -> str:
        return f"socket://127.0.0.1:{self.machine.require_on()['uart_port']}"

    def open(self, port: str) -> Transport:
        return ports.open_port(port, self.board.baud)

    def _service(self, verb: str, *args: str) -> str:
        proc = self.ssh.run(["edgelm-service", verb, *args], timeout_s=SERVICE_TIMEOUT_S)
        out = _printable(proc.stdout.decode(errors="replace"))
        if proc.returncode != 0:
            raise DeviceError(f"edgelm-service {verb} on the emulated {self.board.name} failed: "
                              f"{_printable(proc.stderr.decode(errors='replace')) or 'exit ' + str(proc.returncode)}")
        return out

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        if device != builder.UART:
            raise UsageError(f"the board image's service serves on {builder.UART}, not {device}")
        try:
            self._console_from = self.machine.console.stat().st_size
        except OSError:
            self._console_from = 0
        self._release = release.id
        out = self._service("start", release.id)  # verified by the store just before: not hashed again
        if out != "started":
            raise DeviceError(f"edgelm-service start answered {out!r}")

    def console_since_start(self) -> str:
        try:
            with self.machine.console.open("rb") as f:
                f.seek(self._console_from)
                return f.read(1 << 20).decode(errors="replace")
        except OSError:
            return ""

    def alive(self) -> str | None:
        if not self.machine.is_on():
            return self.machine.why_off()
        why = runner_exit(self.console_since_start(), self.board, self._release)
        return f"{why} (see {self.machine.console})" if why else None

    def stop(self, *, lease_s: float | None = None) -> str | None:
        """The service holds until ``start``, or (``lease_s``) for that long at most, then serves its
        current release again by itself."""
        if not self.machine.is_on():
            return f"the emulated {self.board.name} is off: nothing serves"
        self._service("stop", *([str(max(1, int(lease_s)))] if lease_s is not None else []))
        return None

    def running(self) -> dict[str, Any] | None:
        if not self.machine.is_on():
            return None
        m = _SERVICE_STATUS.match(self._service("status"))
        if m is None or not m.group(2):
            return None
        return {"pid": m.group(2), "release": m.group(3), "port": self.connect(), "board_device": builder.UART,
                "service": "edgelm-service"}


def _state_name(board: Board, image_dir: Path | None) -> str:
    if image_dir is None:
        return f"{NAME}-{board.name}"
    return f"{NAME}-{board.name}-{hashlib.sha256(str(image_dir).encode()).hexdigest()[:12]}"


def create(spec: str, board: Board, state_dir: Path, options: TargetOptions) -> Target:
    if spec != NAME and not spec.startswith(NAME + ":"):
        raise UsageError(f"unknown target {spec[:80]!r}", hint=f"{NAME} or {NAME}:IMAGE_DIR")
    if board.arch != "aarch64":
        raise UsageError(f"the {NAME} target boots Arm board images; {board.name} is {board.arch}",
                         hint="use --target local for the host board")
    if options.port or options.board_port or options.ssh_config or options.boot or options.service:
        raise UsageError(f"the {NAME} target wires its own UART, SSH and service: --port, --board-port, "
                         "--ssh-config, --boot and --service do not apply")
    doctor.require_linux(f"--target {NAME} (a board image made of Debian packages, booted by qemu-system)")
    given = spec[len(NAME) + 1:] or None
    image_dir = Path(given).expanduser().resolve() if given else None
    state = state_dir / _state_name(board, image_dir)
    for path in (image_dir, state):  # both go into QEMU's options and an ssh_config file
        if path is not None:
            _config_path(path)
    machine = Machine(board, state, image_dir or state / "image", build_if_missing=image_dir is None)
    ssh = GuestSsh(machine)
    where = f"{NAME}:{board.name}"
    store = SshStore(ssh, board, where, verify_timeout_s=VERIFY_TIMEOUT_S, legacy_trust=state / TRUST_DIR)
    service = GuestService(machine, ssh, board)
    target = Target(kind=NAME, spec=spec if given else NAME, board=board, state=state, emulated=True, store=store,
                    runner=service, link=service, power=machine, timeouts=TIMEOUTS,
                    missing=lambda: missing_tools((QEMU, "Debian's qemu-system-arm"),
                                                  ("ssh", "Debian's openssh-client")))

    def probe(bundle: Bundle) -> list[Any]:
        out = ssh.script(preflight.PROBE_SCRIPT, [store.data, builder.UART], what="reading the board's facts").stdout
        facts = preflight.parse_facts(out.decode(errors="replace"))
        needs = preflight.needs_for(bundle)
        return [*preflight.judge(facts, needs, board), preflight.fit(board, needs)]

    target.preflight = probe
    return target


__all__ = ["GuestService", "Machine", "create"]
