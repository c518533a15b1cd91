"""Targets from spec strings: how a bundle gets onto a board and how the host talks to it.

    qemu                         an emulated Arm board (qemu-user with the board's CPU), link over a pty pair
    qemu-system[:IMAGE]          an emulated Arm board that boots (qemu-system: kernel, UART, SSH, data disk)
    local                        this machine, for the host board
    ssh://[user@]host[:port]     a board on the network (OpenSSH: ~/.ssh/config, keys, the agent, known_hosts)
    dir:PATH                     a board's root filesystem mounted here (an SD card), for the next boot
    labgrid://[HOST:PORT/]PLACE  a board in a labgrid farm: the place acquired for the job (SSH, ser2net, power)

Each kind is registered once with a factory (labgrid's target_factory); `edgelm targets` lists them.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolchain.boards import Board
from toolchain.deploy.base import Target, TargetOptions
from toolchain.errors import UsageError

Factory = Callable[[str, Board, Path, TargetOptions], Target]


@dataclass(frozen=True)
class Kind:
    name: str
    prefix: str  # "" for a bare name (qemu), "ssh://" or "dir:" for a spec with an argument
    factory: Factory
    description: str
    example: str


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> None:
    if kind.name in _KINDS:
        raise ValueError(f"target kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def kinds() -> list[Kind]:
    return [_KINDS[n] for n in sorted(_KINDS)]


def kind_of(spec: str) -> Kind:
    for kind in _KINDS.values():
        if (kind.prefix and spec.startswith(kind.prefix)) or (not kind.prefix and spec == kind.name):
            return kind
    raise UsageError(f"unknown target {spec[:80]!r}; known: " + ", ".join(k.example for k in kinds()),
                     hint="`edgelm targets` lists them")


def create(spec: str, board: Board, state_dir: Path, options: TargetOptions | None = None) -> Target:
    return kind_of(spec).factory(spec, board, state_dir, options or TargetOptions())


def default_for(board: Board) -> str:
    """The board profile's ``default_target``, else ``local`` for this machine's architecture and
    ``qemu`` for another."""
    if board.default_target:
        return board.default_target
    return "local" if board.arch == platform.machine() else "qemu"


def _register_builtin() -> None:
    from toolchain.deploy import farm, local, qemu, qemu_system, sdcard, ssh

    register(Kind("qemu", "", qemu.create, "emulated Arm board: qemu-user with the board's CPU model, "
                  "serial link over a pty pair", "qemu"))
    register(Kind("qemu-system", "qemu-system", qemu_system.create, "emulated Arm board that boots the board "
                  "image (qemu-system-aarch64 with the board's CPU, RAM, cores): link on its UART, releases over SSH, "
                  "power on/off", "qemu-system[:IMAGE_DIR]"))
    register(Kind("local", "", local.create, "this machine (the host board), serial link over a pty pair", "local"))
    register(Kind("ssh", "ssh://", ssh.create, "a board on the network (OpenSSH); link: the SSH channel, or --port "
                  "wired to its UART", "ssh://[user@]host[:port]"))
    register(Kind("dir", "dir:", sdcard.create, "a board's root filesystem mounted here (an SD card): the release, "
                  "the service and the UART settings, for its next boot", "dir:PATH"))
    register(Kind("labgrid", "labgrid://", farm.create, "a board in a labgrid farm: the place is acquired through "
                  "the coordinator for the job, releases go over its NetworkService (SSH), the link is its "
                  "NetworkSerialPort (ser2net), its NetworkPowerPort cycles a board that does not answer",
                  "labgrid://[HOST:PORT/]PLACE"))


_register_builtin()

__all__ = ["Kind", "TargetOptions", "create", "default_for", "kind_of", "kinds", "register"]
