"""Board profiles: the data in ``boards/*.toml``, loaded into frozen, validated dataclasses.

Board knowledge lives in the TOML files, not in code. Every field is checked on load; an error
names the file, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from toolchain.errors import InputError, UsageError

BOARDS_DIR = Path(__file__).resolve().parent.parent / "boards"
ARCHES = ("aarch64", "x86_64")
QUANTS = ("fp32", "8da8w", "8da4w")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_GLIBC_RE = re.compile(r"^\d+\.\d+$")
_TARGET_RE = re.compile(r"^[a-z]+(?::[!-~]{1,200})?$")  # printable, no spaces; the registry parses the rest


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str  # aarch64 | x86_64
    triple: str  # compiler triple, e.g. aarch64-linux-gnu
    cpu_flags: tuple[str, ...]  # -mcpu=... / -march=...
    cores: int
    threads: int  # default runner threads
    ram_mb: int
    glibc: str  # the board OS's glibc version, "2.36"
    serial_device: str  # where the firmware talks to the host on the real board
    baud: int
    default_quant: str
    qemu_cpu: str | None = None  # QEMU CPU model that emulates this board (Arm boards)
    default_target: str | None = None  # target spec used without --target (see `edgelm targets`)

    def __post_init__(self) -> None:
        src = f"board {self.name!r}"
        if not _NAME_RE.match(self.name):
            raise InputError(f"{src}: name must be lower-case letters, digits, '.' and '-'")
        if self.arch not in ARCHES:
            raise InputError(f"{src}: arch={self.arch!r}; allowed: {', '.join(ARCHES)}")
        if not self.triple.startswith(self.arch + "-"):
            raise InputError(f"{src}: triple={self.triple!r} does not start with arch {self.arch!r}")
        for name in ("cores", "threads", "ram_mb", "baud"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"{src}: {name}={value!r} must be a positive integer")
        if self.threads > self.cores:
            raise InputError(f"{src}: threads={self.threads} exceeds cores={self.cores}")
        if not _GLIBC_RE.match(self.glibc):
            raise InputError(f"{src}: glibc={self.glibc!r} must look like '2.36'")
        if self.default_quant not in QUANTS:
            raise InputError(f"{src}: default_quant={self.default_quant!r}; allowed: {', '.join(QUANTS)}")
        if not self.serial_device.startswith("/dev/"):
            raise InputError(f"{src}: serial_device={self.serial_device!r} must be a /dev path")
        if self.default_target is not None and not _TARGET_RE.match(self.default_target):
            raise InputError(f"{src}: default_target={self.default_target!r} must be a target spec such as "
                             "'qemu', 'local' or 'ssh://pi@raspberrypi.local'")
        if self.arch == "aarch64" and not self.qemu_cpu:
            raise InputError(f"{src}: an aarch64 board needs qemu_cpu (the CPU model that emulates it)")

    @property
    def glibc_tuple(self) -> tuple[int, int]:
        major, minor = self.glibc.split(".")
        return int(major), int(minor)

    @property
    def cross_prefix(self) -> str:
        """Compiler prefix: '' when the board's arch is this machine's, else 'aarch64-linux-gnu-'."""
        import platform

        return "" if platform.machine() == self.arch else f"{self.triple}-"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def _from_toml(path: Path) -> Board:
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML ({exc})") from None
    known = {f.name for f in fields(Board)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{path}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    required = {f.name for f in fields(Board) if f.default is MISSING}
    missing = sorted(required - set(raw))
    if missing:
        raise InputError(f"{path}: missing field {missing[0]!r}")
    if path.stem != raw["name"]:
        raise InputError(f"{path}: name={raw['name']!r} differs from the file name")
    raw["cpu_flags"] = tuple(raw["cpu_flags"])
    try:
        return Board(**raw)
    except TypeError as exc:
        raise InputError(f"{path}: {exc}") from None


class BoardRegistry:
    """Boards by name; duplicate names are refused."""

    def __init__(self) -> None:
        self._boards: dict[str, Board] = {}

    def add(self, board: Board) -> None:
        if board.name in self._boards:
            raise InputError(f"board {board.name!r} is defined twice")
        self._boards[board.name] = board

    def get(self, name: str) -> Board:
        if name not in self._boards:
            raise UsageError(f"unknown board {name!r}; known boards: {', '.join(sorted(self._boards))}",
                             hint="`edgelm boards` lists them with their CPUs")
        return self._boards[name]

    def all(self) -> list[Board]:
        return [self._boards[n] for n in sorted(self._boards)]


def load_registry(directory: Path = BOARDS_DIR) -> BoardRegistry:
    registry = BoardRegistry()
    for path in sorted(directory.glob("*.toml")):
        registry.add(_from_toml(path))
    return registry


def get(name: str) -> Board:
    return load_registry().get(name)
