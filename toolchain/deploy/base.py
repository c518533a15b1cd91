"""What a target (a way of putting a bundle on a board and talking to it) is made of.

A target is a board plus the capabilities it has, each a small interface (labgrid's protocols):

- a **release store** keeps verified releases on the board (deploy, current, previous, activate,
  verify) and the board's trust beside them (trusted keys, the security counter): trust is the
  board's, so every host and ``--workdir`` that reaches it sees the same;
- a **runner control** starts, stops and watches the runner of a release;
- a **link provider** gives the host its end of the framed link (a serial port, a pseudo-terminal
  pair, an SSH channel);
- a **power control** switches the board on and off (an emulated board that boots).

A target has the ones it can: an SD card mounted on the host stores releases but runs nothing.
Callers check up front and refuse an action a target cannot do, with the reason, instead of
failing halfway. The order in which they are used lives in one place: :mod:`toolchain.deploy.bringup`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from toolchain.boards import Board
from toolchain.bundle.package import Bundle
from toolchain.deploy import lock as lock_mod
from toolchain.errors import UsageError
from toolchain.link.session import Timeouts
from toolchain.link.transport import Transport

Progress = Callable[[str, str], None]


def nothing_missing() -> list[str]:
    return []


def missing_tools(*tools: tuple[str, str]) -> list[str]:
    """``(program, where it comes from)`` pairs not on PATH, each as one phrase."""
    import shutil

    return [f"{name} ({origin})" for name, origin in tools if shutil.which(name) is None]


def no_progress(step: str, detail: str) -> None:
    pass


class Capability(str, Enum):
    DEPLOY = "deploy"  # keep releases on the board: deploy (verified), activate, roll back
    TRUST = "trust"  # accept only bundles signed by a trusted key
    START = "start"  # start and stop the runner of the current release
    LINK = "link"  # give the host its end of the framed link
    PREFLIGHT = "preflight"  # read the board's facts (arch, glibc, RAM, disk, serial device) before a switch
    POWER = "power"  # switch the board on (boot), off, and cycle it


@dataclass(frozen=True)
class Release:
    """A verified bundle on the board."""

    id: str  # r- + 16 hex of the sha256 over the bundle's file -> sha256 map (package.release_id)
    path: str  # where it lives, in the board's filesystem (for a local store, a path on this machine)
    board: str
    model_sha256: str  # the program's sha256, which the runner's HELLO must report


class ReleaseStore(Protocol):
    where: str  # for messages: "ssh://pi@raspberrypi.local:rpi5"

    def deploy(self, bundle: Bundle, *, activate: bool = True, progress: Progress = no_progress) -> Release:
        """Copy ``bundle`` to the board into a folder of its own, verify the copy's hashes there and
        (``activate``) make it current. A refusal or a failure changes nothing current."""
        ...

    def current(self) -> Release | None: ...

    def previous(self) -> Release | None:
        """The release that was current before the current one (``flash --rollback``)."""
        ...

    def activate(self, release: Release, *, verify: bool = True) -> None:
        """Verify ``release``'s files on the board, then make it current in one atomic step (the one
        it replaces becomes ``previous``). Refuses, changing nothing, when a file does not verify.
        Every file of the release and its folder are on stable storage before the switch, and the
        switch itself after it (fsync). ``verify=False``: the caller verified it just before (the
        bring-up, which switches only between stopping the old runner and starting the new one)."""
        ...

    def restore(self, current: Release | None, previous: Release | None) -> None:
        """Put ``current`` and ``previous`` back as they were before a switch that failed (None: no
        such link), so that ``previous`` never names the release that failed. ``current`` is
        verified first (a refusal changes nothing); synced like ``activate``."""
        ...

    def clean(self) -> None:
        """Remove what an upload that failed or was cut left (``.incoming-*``, ``.old-*``): its space
        is free again before the preflight counts it."""
        ...

    def verify(self, release: Release) -> None:
        """Every file of ``release`` on the board has the sha256 its bundle.json lists, or InputError;
        on a board that trusts keys, its signature holds and its security counter is not below the
        board's (making it current is a rollback the board refuses otherwise)."""
        ...

    def trust(self, public_key_pem: bytes) -> str:
        """Accept only bundles signed by this key (or another trusted one) from now on; its fingerprint.
        The key is kept on the board (its data folder, the card, the state folder of a local board)."""
        ...

    def trusted(self) -> list[dict[str, str]]:
        """The keys the board trusts: ``{"fingerprint", "file"}`` each ([]: it takes unsigned bundles)."""
        ...

    def untrust(self, fingerprint: str) -> None:
        """Stop trusting the key with this (full) fingerprint."""
        ...

    def security_counter(self) -> int:
        """The highest security counter of a signed release the board confirmed (0: none)."""
        ...

    def confirm(self, release: Release) -> int:
        """``release`` serves (its HELLO came; on a card: it was made current): a board that trusts
        keys records its security counter if it is higher (MCUboot's counter moves up only for a
        confirmed image). The board's counter now."""
        ...


class RunnerControl(Protocol):
    keeps_serving: bool  # whether the runner goes on serving after we disconnect (flash leaves it so)

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        """Start ``release``'s runner serving on the board's ``device`` (``-``: stdin/stdout)."""
        ...

    def alive(self) -> str | None:
        """None while the runner runs, else why it stopped."""
        ...

    def stop(self, *, lease_s: float | None = None) -> str | None:
        """Stop the runner (and what serves its link); None, or a note on stale records.

        ``lease_s``: stopped only for a switch. A service on the board that restarts the runner by
        itself (the image's ``edgelm-service``, the systemd unit) holds off for at most that long
        and then serves its current release again on its own: a controller that dies in between
        (SIGKILL) never leaves it held. None: stopped until started again (``edgelm stop``, the
        end of a ``run``)."""
        ...

    def running(self) -> dict[str, Any] | None:
        """What a runner left serving (``flash``) recorded: port, release; None if none runs."""
        ...


class LinkProvider(Protocol):
    board_device: str  # what the runner opens on the board: a tty, or "-" for stdin/stdout

    def connect(self) -> str:
        """Make the link ready; the host-side port (a path, a pyserial URL, ``usb:VID:PID``)."""
        ...

    def open(self, port: str) -> Transport:
        """The host's end of the link, opened before the runner starts (it drops earlier input)."""
        ...


class PowerControl(Protocol):
    def on(self, progress: Progress = no_progress) -> bool:
        """Boot the board unless it is on, returning once it can be reached; whether it was booted now."""
        ...

    def off(self) -> bool:
        """Power the board off (what it wrote to its storage is kept); whether it was on."""
        ...

    def cycle(self, progress: Progress = no_progress) -> None: ...

    def status(self) -> dict[str, Any]:
        """``{"on": bool, ...}``: what a user needs to reach it (ports, console log)."""
        ...


@dataclass(frozen=True)
class TargetOptions:
    """What a user says about how a board is wired, beyond the spec string."""

    port: str | None = None  # the host's serial port wired to the board's UART (path, URL or usb:VID:PID)
    board_port: str | None = None  # the board's serial device (default: the profile's serial_device)
    ssh_config: Path | None = None  # an ssh_config file instead of ~/.ssh/config
    accept_new_host_key: bool = False  # trust a host key seen for the first time (else refuse it)
    boot: Path | None = None  # dir: the card's boot partition, when mounted apart from the root filesystem
    service: bool = False  # serve from boot: a systemd unit (ssh://; a dir: card always gets one)



Preflight = Callable[[Bundle], list[Any]]  # bundle -> preflight.Check list (the board's facts vs its needs)


@dataclass
class Target:
    """A board reached one way: its capabilities, its host-side state folder (the lock, logs) and
    the deadlines that suit it. Built from a spec string by :mod:`toolchain.deploy.registry`."""

    kind: str  # qemu | qemu-system | local | ssh | dir
    spec: str  # as given, canonical: "qemu", "ssh://pi@raspberrypi.local:22", "dir:/media/card/rootfs"
    board: Board
    state: Path
    emulated: bool = False  # an emulator is much slower than the board it stands for: deadlines stretch
    rss_of_emulator: bool = False  # the runner's peak RSS is the emulator's (qemu-user), not the board's
    store: ReleaseStore | None = None
    runner: RunnerControl | None = None
    link: LinkProvider | None = None
    preflight: Preflight | None = None
    power: PowerControl | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    notes: list[str] = field(default_factory=list)  # what the target did that the user should know
    # What this machine lacks to reach the board (a tool, a host that answers), one phrase each;
    # [] when nothing is. Asked before any work by whoever may skip instead (the pytest plugin).
    missing: Callable[[], list[str]] = nothing_missing
    # A board shared through a farm is reserved (a labgrid place acquired) for as long as a job holds
    # the lock, and released when it ends, however it ends; None: nothing to reserve.
    reserve: Callable[[str], AbstractContextManager[Any]] | None = None
    # A lock on the board itself (ssh://: a lock folder in its data folder), taken inside this
    # machine's: jobs from other hosts and other --workdirs are refused too; None: none.
    board_lock: Callable[[str], AbstractContextManager[Any]] | None = None

    @property
    def name(self) -> str:
        return self.kind

    @property
    def where(self) -> str:
        return f"{self.spec}:{self.board.name}"

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = set()
        if self.store is not None:
            caps |= {Capability.DEPLOY, Capability.TRUST}
        if self.runner is not None:
            caps.add(Capability.START)
        if self.link is not None:
            caps.add(Capability.LINK)
        if self.preflight is not None:
            caps.add(Capability.PREFLIGHT)
        if self.power is not None:
            caps.add(Capability.POWER)
        return frozenset(caps)

    def lock(self, what: str) -> AbstractContextManager[None]:
        """``with target.lock("flash"):`` one job at a time on this target: another edgelm that holds
        it makes this raise DeviceError at once, naming the holder. The lock is this machine's (the
        state folder) and, where the board has one, the board's own (:attr:`board_lock`: another host
        or --workdir). A farm's board is reserved inside the lock (:attr:`reserve`; its board's own
        lock is taken inside that)."""
        return _locked(self, what)

    def alive(self) -> str | None:
        return self.runner.alive() if self.runner is not None else "this target runs nothing"


@contextlib.contextmanager
def _locked(target: Target, what: str) -> Iterator[None]:
    with lock_mod.hold(target.state, what, target.where), contextlib.ExitStack() as stack:
        if target.board_lock is not None:
            stack.enter_context(target.board_lock(what))
        if target.reserve is not None:
            stack.enter_context(target.reserve(what))
        yield


def need_store(target: Target) -> ReleaseStore:
    if target.store is None:
        raise UsageError(f"target {target.spec!r} cannot deploy (it has no way to receive a bundle)")
    return target.store


def need_runner(target: Target) -> RunnerControl:
    if target.runner is None:
        raise UsageError(f"target {target.spec!r} cannot start a runner",
                         hint="a card is flashed with `edgelm flash --no-start`; the board starts it at boot")
    return target.runner


def need_power(target: Target) -> PowerControl:
    if target.power is None:
        raise UsageError(f"target {target.spec!r} has no power control (a real board is switched by hand, or by "
                         "a farm's power switch)")
    return target.power


def need_link(target: Target) -> LinkProvider:
    if target.link is None:
        raise UsageError(f"target {target.spec!r} has no link to the board")
    return target.link
