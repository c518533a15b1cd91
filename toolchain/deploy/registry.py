"""Targets by name: how a bundle gets onto a board and how the host talks to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from toolchain.boards import Board
from toolchain.deploy.base import Target
from toolchain.deploy.local import LocalTarget
from toolchain.deploy.qemu import QemuTarget
from toolchain.errors import UsageError

Factory = Callable[[Board, Path], Target]
_TARGETS: dict[str, tuple[Factory, str]] = {}


def register(name: str, factory: Factory, description: str) -> None:
    if name in _TARGETS:
        raise ValueError(f"target {name!r} is already registered")
    _TARGETS[name] = (factory, description)


register("qemu", QemuTarget, "emulated Arm board: qemu-aarch64 with the board's CPU model, serial over a pty")
register("local", LocalTarget, "this machine (host board), serial over a pty")


def names() -> dict[str, str]:
    return {name: desc for name, (_, desc) in sorted(_TARGETS.items())}


def create(name: str, board: Board, state_dir: Path) -> Target:
    if name not in _TARGETS:
        raise UsageError(f"unknown target {name!r}; known: {', '.join(sorted(_TARGETS))}")
    return _TARGETS[name][0](board, state_dir)


def default_for(board: Board) -> str:
    import platform

    return "local" if board.arch == platform.machine() else "qemu"
