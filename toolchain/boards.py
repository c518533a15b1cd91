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
from toolchain.paths import BOARDS_DIR

ARCHES = ("aarch64", "x86_64", "armv8.1-m")  # armv8.1-m: bare-metal Cortex-M55/M85 (no OS)
BARE_METAL_ARCHES = ("armv8.1-m",)
_REGION_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")
_ACCESS_RE = re.compile(r"^r?w?x?$")
_NPU_RE = re.compile(r"^ethos-u(55-(32|64|128|256)|65-(256|512)|85-(128|256|512|1024|2048))$")
_VELA_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
QUANTS = ("fp32", "8da8w", "8da4w", "a8w8", "a16w8")  # the last two: Arm backends (ethos-u, tosa)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_GLIBC_RE = re.compile(r"^\d+\.\d+$")
_TARGET_RE = re.compile(r"^[a-z]+(?::[!-~]{1,200})?$")  # printable, no spaces; the registry parses the rest


@dataclass(frozen=True)
class MemoryRegion:
    """One region of a bare-metal board's memory map, as its linker script names it."""

    name: str
    origin: int  # address
    length: int  # bytes
    attrs: str  # the linker's access letters: r, w, x

    @property
    def end(self) -> int:
        return self.origin + self.length


# config.txt lines a profile may ask for: the firmware settings and device-tree switches that bring a
# UART up. Nothing else is written to a card's boot partition.
_BOOT_LINE_RE = re.compile(r"^(enable_uart=[01]|dtparam=[a-z0-9_]{1,32}=(on|off)|dtoverlay=[a-z0-9-]{1,40})$")
_CONSOLE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,15}$")


@dataclass(frozen=True)
class Uart:
    """One serial port a Linux board's runner may serve on, and what makes it appear on the board's OS
    (``[[uarts]]`` in a profile): the ``config.txt`` lines (under ``[all]``) and the ``console=`` names
    that alias it on the kernel command line, which must come off it."""

    device: str  # /dev/ttyAMA0
    where: str  # for people: the pins or header it is on
    config: tuple[str, ...] = ()  # config.txt lines, e.g. ("dtparam=uart0=on",)
    consoles: tuple[str, ...] = ()  # console= names that are this port, e.g. ("serial0", "ttyAMA0")
    note: str | None = None  # one more step a person takes on the board, if any

    def check(self, src: str) -> None:
        if not re.match(r"^/dev/[A-Za-z0-9_./-]{1,64}$", self.device) or ".." in self.device:
            raise InputError(f"{src}: uart device={self.device!r} must be a /dev path")
        if not self.where or "\n" in self.where:
            raise InputError(f"{src}: uart {self.device}: where= must say, in one line, where the port is")
        for line in self.config:
            if not _BOOT_LINE_RE.match(line):
                raise InputError(f"{src}: uart {self.device}: config line {line!r} is not one edgelm writes "
                                 "(enable_uart=0|1, dtparam=NAME=on|off, dtoverlay=NAME)")
        for name in self.consoles:
            if not _CONSOLE_NAME_RE.match(name):
                raise InputError(f"{src}: uart {self.device}: console {name!r} must be a device name such as "
                                 "'serial0' or 'ttyAMA0'")
        if self.note is not None and (not self.note or "\n" in self.note):
            raise InputError(f"{src}: uart {self.device}: note= must be one line")


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
    glibc: str | None  # the board OS's glibc version, "2.36"; None on a bare-metal board
    serial_device: str  # where the firmware talks to the host: a /dev path, or the UART's name on bare metal
    baud: int
    default_quant: str
    qemu_cpu: str | None = None  # QEMU CPU model that emulates this board (Arm boards)
    # Where the board has no twin (validate/twin.py), the host top-two gap (std of the reference logits)
    # under which a flipped token may be rounding: measured from honest runs against the host.
    near_tie: float = 0.05
    default_target: str | None = None  # target spec used without --target (see `edgelm targets`)
    # Arm NPU systems (Cortex-M + Ethos-U): the accelerator as Vela names it, its clock, Vela's
    # system configuration and memory mode, and the memories the program and its arena live in.
    npu: str | None = None  # e.g. "ethos-u55-128"
    npu_clock_mhz: int | None = None
    vela_system_config: str | None = None  # a section of Vela's Arm/vela.ini
    vela_memory_mode: str | None = None
    qemu_machine: str | None = None  # qemu-system-arm machine that runs this board's CPU (no NPU)
    uart_base: int | None = None  # the MMIO base of the UART the firmware talks on (bare metal)
    # A bare-metal board's memory map ([memory] in its profile): the region named SRAM holds the
    # tensor arena, the NPU scratch and the state (KV caches, conv states); program_memory names the
    # region the .pte is placed in; code, data and stack regions say where the firmware goes.
    memory: tuple[MemoryRegion, ...] = ()
    program_memory: str | None = None
    code_region: str | None = None
    data_region: str | None = None
    stack_region: str | None = None
    # A Linux board's serial ports ([[uarts]]): serial_device is one of them when any is given.
    uarts: tuple[Uart, ...] = ()

    def __post_init__(self) -> None:
        src = f"board {self.name!r}"
        if not _NAME_RE.match(self.name):
            raise InputError(f"{src}: name must be lower-case letters, digits, '.' and '-'")
        if self.arch not in ARCHES:
            raise InputError(f"{src}: arch={self.arch!r}; allowed: {', '.join(ARCHES)}")
        if not self.bare_metal and not self.triple.startswith(self.arch + "-"):
            raise InputError(f"{src}: triple={self.triple!r} does not start with arch {self.arch!r}")
        for name in ("cores", "threads", "ram_mb", "baud", "npu_clock_mhz", "uart_base"):
            value = getattr(self, name)
            if value is None and name not in ("cores", "threads", "ram_mb", "baud"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"{src}: {name}={value!r} must be a positive integer")
        if self.threads > self.cores:
            raise InputError(f"{src}: threads={self.threads} exceeds cores={self.cores}")
        if self.default_quant not in QUANTS:
            raise InputError(f"{src}: default_quant={self.default_quant!r}; allowed: {', '.join(QUANTS)}")
        if self.bare_metal:
            self._check_bare_metal(src)
        else:
            if self.glibc is None or not _GLIBC_RE.match(self.glibc):
                raise InputError(f"{src}: glibc={self.glibc!r} must look like '2.36'")
            if not self.serial_device.startswith("/dev/"):
                raise InputError(f"{src}: serial_device={self.serial_device!r} must be a /dev path")
            for uart in self.uarts:
                uart.check(src)
            devices = [u.device for u in self.uarts]
            if len(set(devices)) != len(devices):
                raise InputError(f"{src}: a uart device is listed twice")
            if self.uarts and self.serial_device not in devices:
                raise InputError(f"{src}: serial_device={self.serial_device!r} is none of its uarts "
                                 f"({', '.join(devices)})")
        if self.npu is not None:
            self._check_npu(src)
        if self.default_target is not None and not _TARGET_RE.match(self.default_target):
            raise InputError(f"{src}: default_target={self.default_target!r} must be a target spec such as "
                             "'qemu', 'local' or 'ssh://pi@raspberrypi.local'")
        if self.arch == "aarch64" and not self.qemu_cpu:
            raise InputError(f"{src}: an aarch64 board needs qemu_cpu (the CPU model that emulates it)")
        if not (isinstance(self.near_tie, (int, float)) and 0 <= self.near_tie <= 1):
            raise InputError(f"{src}: near_tie={self.near_tie!r} must be a number of std in [0, 1]")

    def _check_bare_metal(self, src: str) -> None:
        if self.triple != "arm-none-eabi":
            raise InputError(f"{src}: a bare-metal board's triple must be 'arm-none-eabi', not {self.triple!r}")
        if self.glibc is not None:
            raise InputError(f"{src}: a bare-metal board has no glibc (glibc={self.glibc!r})")
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]{0,15}$", self.serial_device):
            raise InputError(f"{src}: serial_device={self.serial_device!r} must name the UART, such as 'UART0'")
        for name in ("program_memory", "code_region", "data_region", "stack_region", "uart_base"):
            if getattr(self, name) is None:
                raise InputError(f"{src}: a bare-metal board needs {name}")
        self._check_memory(src)

    def _check_memory(self, src: str) -> None:
        if not self.memory:
            raise InputError(f"{src}: a bare-metal board needs its memory map ([memory]: NAME = [origin, KiB, access])")
        for r in self.memory:
            if not _REGION_RE.match(r.name):
                raise InputError(f"{src}: memory region {r.name!r} must be upper-case letters, digits and '_'")
            if not (_ACCESS_RE.match(r.attrs) and r.attrs):
                raise InputError(f"{src}: memory region {r.name}: access {r.attrs!r} must be letters of 'rwx', "
                                 "in order")
            if not 0 <= r.origin < 2**32 or r.length <= 0 or r.end > 2**32:
                raise InputError(f"{src}: memory region {r.name} (origin 0x{r.origin:x}, {r.length} bytes) does not "
                                 "fit a 32-bit address space")
        ordered = sorted(self.memory, key=lambda r: r.origin)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.origin < a.end:
                raise InputError(f"{src}: memory regions {a.name} and {b.name} overlap")
        names = {r.name for r in self.memory}
        if len(names) != len(self.memory):
            raise InputError(f"{src}: a memory region is named twice")
        for field_name in ("program_memory", "code_region", "data_region", "stack_region"):
            value = getattr(self, field_name)
            if value not in names:
                raise InputError(f"{src}: {field_name}={value!r} is not a region of its memory map "
                                 f"({', '.join(sorted(names))})")
        if "SRAM" not in names:
            raise InputError(f"{src}: the memory map needs a region named SRAM (the tensor arena's)")

    def _check_npu(self, src: str) -> None:
        if not _NPU_RE.match(self.npu or ""):
            raise InputError(f"{src}: npu={self.npu!r} must be a Vela accelerator config such as 'ethos-u55-128'")
        for name in ("npu_clock_mhz", "vela_system_config", "vela_memory_mode", "program_memory"):
            if getattr(self, name) is None:
                raise InputError(f"{src}: a board with an NPU needs {name}")
        for name in ("vela_system_config", "vela_memory_mode"):
            if not _VELA_NAME_RE.match(getattr(self, name)):
                raise InputError(f"{src}: {name}={getattr(self, name)!r} must be a section name of Vela's ini file")
        if not self.memory:
            raise InputError(f"{src}: a board with an NPU needs its memory map ([memory])")

    @property
    def bare_metal(self) -> bool:
        """A microcontroller board without an OS: firmware is flashed, not deployed to a filesystem."""
        return self.arch in BARE_METAL_ARCHES

    def uart_for(self, device: str) -> Uart | None:
        """The profile's knowledge of serial port ``device`` (None: not a UART of this board's, e.g. a USB
        adapter, which needs nothing on the card)."""
        return next((u for u in self.uarts if u.device == device), None)

    def region(self, name: str) -> MemoryRegion | None:
        return next((r for r in self.memory if r.name == name), None)

    @property
    def sram_bytes(self) -> int | None:
        """The SRAM that holds the tensor arena, the NPU scratch and the state."""
        sram = self.region("SRAM")
        return None if sram is None else sram.length

    @property
    def program_memory_bytes(self) -> int | None:
        """Room for the program (.pte): the region it is placed in (flash, DRAM)."""
        where = self.region(self.program_memory) if self.program_memory else None
        return None if where is None else where.length

    @property
    def glibc_tuple(self) -> tuple[int, int]:
        if self.glibc is None:
            raise UsageError(f"board {self.name!r} is bare metal: it has no glibc")
        major, minor = self.glibc.split(".")
        return int(major), int(minor)

    @property
    def cross_prefix(self) -> str:
        """Compiler prefix: '' when the board's arch is this machine's, else 'aarch64-linux-gnu-'."""
        import platform

        if self.bare_metal:
            return f"{self.triple}-"
        return "" if platform.machine() == self.arch else f"{self.triple}-"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}
        out["memory"] = [{"name": r.name, "origin": r.origin, "bytes": r.length, "access": r.attrs}
                         for r in self.memory]
        out["uarts"] = [{"device": u.device, "where": u.where, "config": list(u.config), "consoles": list(u.consoles),
                         "note": u.note} for u in self.uarts]
        return out


def _from_toml(path: Path) -> Board:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    known = {f.name for f in fields(Board)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{path}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
    raw.setdefault("glibc", None)  # a bare-metal board has none; a Linux board is told it needs one
    required = {f.name for f in fields(Board) if f.default is MISSING}
    missing = sorted(required - set(raw))
    if missing:
        raise InputError(f"{path}: missing field {missing[0]!r}")
    if path.stem != raw["name"]:
        raise InputError(f"{path}: name={raw['name']!r} differs from the file name")
    for f in fields(Board):  # text fields are text, so the checks below read them as such
        if f.type in ("str", "str | None") and f.name in raw and not (
                isinstance(raw[f.name], str) or (raw[f.name] is None and f.type == "str | None")):
            raise InputError(f"{path}: {f.name}={raw[f.name]!r} must be a string")
    if not (isinstance(raw["cpu_flags"], list) and all(isinstance(x, str) for x in raw["cpu_flags"])):
        raise InputError(f"{path}: cpu_flags={raw['cpu_flags']!r} must be a list of strings")
    raw["cpu_flags"] = tuple(raw["cpu_flags"])
    if "memory" in raw:
        raw["memory"] = _memory_from_toml(path, raw["memory"])
    if "uarts" in raw:
        raw["uarts"] = _uarts_from_toml(path, raw["uarts"])
    try:
        return Board(**raw)
    except InputError as exc:  # named by the file it is in
        message = exc.message.removeprefix(f"board {raw['name']!r}: ")
        raise InputError(f"{path}: {message}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: {exc}") from None


def _memory_from_toml(path: Path, table: Any) -> tuple[MemoryRegion, ...]:
    """``[memory]``: ``NAME = [origin, size in KiB, "access"]`` per region, in the order given."""
    if not isinstance(table, dict):
        raise InputError(f"{path}: [memory] must be a table of NAME = [origin, KiB, access]")
    regions = []
    for name, value in table.items():
        ok = (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in value[:2]) and isinstance(value[2], str))
        if not ok:
            raise InputError(f"{path}: memory region {name!r} = {value!r} must be [origin, size in KiB, \"access\"]")
        regions.append(MemoryRegion(str(name), value[0], value[1] * 1024, value[2]))
    return tuple(regions)


def _uarts_from_toml(path: Path, value: Any) -> tuple[Uart, ...]:
    """``[[uarts]]``: device, where, and optionally config, consoles, note."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InputError(f"{path}: uarts must be a list of tables ([[uarts]] with device, where, config, consoles)")
    known = {f.name for f in fields(Uart)}
    out = []
    for table in value:
        unknown = sorted(set(table) - known)
        if unknown:
            raise InputError(f"{path}: [[uarts]]: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        for name in ("device", "where"):
            if not isinstance(table.get(name), str):
                raise InputError(f"{path}: [[uarts]]: {name} must be a string")
        for name in ("config", "consoles"):
            items = table.get(name, [])
            if not (isinstance(items, list) and all(isinstance(x, str) for x in items)):
                raise InputError(f"{path}: [[uarts]] {table['device']}: {name} must be a list of strings")
        if table.get("note") is not None and not isinstance(table["note"], str):
            raise InputError(f"{path}: [[uarts]] {table['device']}: note must be a string")
        out.append(Uart(table["device"], table["where"], tuple(table.get("config", [])),
                        tuple(table.get("consoles", [])), table.get("note")))
    return tuple(out)


class BoardRegistry:
    """Boards by name; duplicate names are refused. A profile that does not load hides only itself:
    asking for it raises its error, and ``problems()`` lists them all."""

    def __init__(self) -> None:
        self._boards: dict[str, Board] = {}
        self._broken: dict[str, tuple[Path, InputError]] = {}  # by file name stem, which is the board's name

    def add(self, board: Board) -> None:
        if board.name in self._boards:
            raise InputError(f"board {board.name!r} is defined twice")
        self._boards[board.name] = board

    def add_broken(self, path: Path, error: InputError) -> None:
        self._broken[path.stem] = (path, error)

    def problems(self) -> list[tuple[Path, InputError]]:
        """The profiles that did not load, each with why."""
        return [self._broken[n] for n in sorted(self._broken)]

    def get(self, name: str) -> Board:
        if name not in self._boards and name in self._broken:
            path, error = self._broken[name]
            raise InputError(error.message, hint=f"fix or remove {path}; the other boards are not affected")
        if name not in self._boards:
            raise UsageError(f"unknown board {name!r}; known boards: {', '.join(sorted(self._boards))}",
                             hint="`edgelm boards` lists them with their CPUs")
        return self._boards[name]

    def all(self) -> list[Board]:
        return [self._boards[n] for n in sorted(self._boards)]


def load_registry(directory: Path | None = None) -> BoardRegistry:
    """The profiles of ``directory`` (default: ``BOARDS_DIR``, read when called). One that does not load
    is set aside with its error (``problems()``), never in the way of the others."""
    registry = BoardRegistry()
    for path in sorted((directory or BOARDS_DIR).glob("*.toml")):
        try:
            board = _from_toml(path)
        except InputError as exc:
            registry.add_broken(path, exc)
            continue
        registry.add(board)
    return registry


def get(name: str) -> Board:
    return load_registry().get(name)
