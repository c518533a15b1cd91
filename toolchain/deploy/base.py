"""What a target (a way of putting a bundle on a board and talking to it) can do.

Targets declare their capabilities as data; callers check them up front and refuse an action a
target cannot do, with the reason, instead of failing halfway (labgrid's protocols).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from toolchain.boards import Board
from toolchain.bundle.package import Bundle
from toolchain.errors import UsageError


class Capability(str, Enum):
    DEPLOY = "deploy"  # put a bundle on the board, keeping the previous release until it is verified
    START = "start"  # start the runner of the current release
    SERIAL = "serial"  # a serial link the host can open
    STOP = "stop"  # stop the runner
    TRUST = "trust"  # hold public keys and accept only bundles signed by one of them


@dataclass(frozen=True)
class Release:
    """A verified bundle on the board."""

    id: str  # r- + 16 hex of the sha256 over the bundle's file -> sha256 map (compile.release_id)
    path: Path
    board: str


class Target(Protocol):
    name: str
    emulated: bool  # an emulator: deadlines stretch
    capabilities: frozenset[Capability]
    board: Board

    def deploy(self, bundle: Bundle) -> Release: ...

    def trust(self, public_key_pem: bytes) -> str:
        """Accept only bundles signed by this key (or another trusted one) from now on; its fingerprint."""
        ...

    def current(self) -> Release | None: ...

    def activate(self, release: Release) -> None:
        """Make an earlier release current again (rollback)."""
        ...

    def link(self) -> str:
        """Make the serial link ready; return the host-side port to open before ``start``."""
        ...

    def start(self, threads: int | None = None) -> str:
        """Start the current release's runner; return the host-side serial port path."""
        ...

    def alive(self) -> str | None:
        """None while the runner runs, else why it stopped."""
        ...

    def stop(self) -> str | None:
        """Stop the runner; None, or a note on a stale PID file (removed; nothing was killed for it)."""
        ...

    def lock(self, what: str) -> AbstractContextManager[None]:
        """Hold the target for one job (``flash``, ``run``, ``stop``); DeviceError naming the holder if
        another process holds it."""
        ...


def require(target: Target, capability: Capability, why: str) -> None:
    if capability not in target.capabilities:
        raise UsageError(f"target {target.name!r} cannot {capability.value} ({why})")
