"""Preflight: what a board must offer before a release is switched on it, checked one line each.

The target runs :data:`PROBE_SCRIPT` on the board (``sh -s -- DATA_DIR DEVICE`` with the script on
stdin, or ``sh -c SCRIPT sh DATA_DIR DEVICE``); it prints ``key=value`` lines that
:func:`parse_facts` reads into :class:`Facts`. :func:`judge` holds the facts against what the
bundle needs (:class:`Needs`, from ``bundle.json`` and the program's manifest) and returns one
:class:`Check` per concern: architecture, glibc, RAM, disk and, when a serial device is used, the
device itself, its holders, a login console on it and the user's access to it. :func:`fit` is the
RAM check against a board *profile* (no board needed: the emulated targets use it).
:func:`require` raises :class:`PreflightFailed` (or :class:`DoesNotFit`) on the first failing line.

Pure: text and values in, values out. Nothing the board prints reaches a path or a shell command:
the probe cuts every value to a small character set, the parser refuses anything else, and the
hints quote what they quote.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from toolchain.boards import ARCHES, Board
from toolchain.bundle.cross import RUNNER
from toolchain.errors import CapacityError, DeviceError, InputError

# --------------------------------------------------------------------------------------------------
# The RAM a model needs
# --------------------------------------------------------------------------------------------------

MIB = 1 << 20
# What the program, its state and the libraries leave out: ExecuTorch's planned activation
# buffers (sized for the longest chunk, max_seq_len tokens, so they grow with the model),
# XNNPACK's workspace, the thread stacks, libc and the kernel's per-process share. A fixed part
# for the process and a share of the model for its activations. Measured peak RSS (short prompts,
# benchmarks/results/board_decode.json): lfm2-350m 8da4w 336 MiB natively, 358 MiB under qemu,
# against about 400 MiB counted here (for its ~296 MB program); tiny 13 MiB against 76 MiB.
MARGIN_FIXED_BYTES = 64 * MIB
MARGIN_PERCENT = 10  # of program + state
# What a board's OS keeps for itself, for the profile-level fit: on a 512 MB Raspberry Pi the GPU
# split and CMA, the kernel and a Lite image's services leave about 350 MiB available after boot.
# Larger boards run more (a desktop): an eighth of the RAM, at least this floor.
OS_RESERVE_MIN_BYTES = 160 * MIB
OS_RESERVE_DIVISOR = 8
# bundle.json, bundle.sig and file-system block rounding, on top of the bundle's files.
DISK_MARGIN_BYTES = 4 * MIB


@dataclass(frozen=True)
class Needs:
    """What a bundle needs from a board; every size in bytes."""

    model: str
    arch: str
    glibc_required: str  # "2.34": the highest GLIBC symbol version its binaries use
    program_bytes: int  # model.pte: mmap'd and touched whole (XNNPACK packs every weight)
    state_bytes: int  # KV caches and conv states (the manifest's program.state_bytes)
    runtime_bytes: int  # runner, runtime libraries and manifest: the bundle less the program
    disk_bytes: int  # the release on disk

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise InputError(f"needs: arch={self.arch!r}; allowed: {', '.join(ARCHES)}")
        if _version(self.glibc_required) is None:
            raise InputError(f"needs: glibc_required={self.glibc_required!r} must look like '2.34'")
        for name in ("program_bytes", "state_bytes", "runtime_bytes", "disk_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"needs: {name}={value!r} must be a non-negative integer")

    @property
    def margin_bytes(self) -> int:
        return MARGIN_FIXED_BYTES + (self.program_bytes + self.state_bytes) * MARGIN_PERCENT // 100

    @property
    def ram_bytes(self) -> int:
        return self.program_bytes + self.state_bytes + self.runtime_bytes + self.margin_bytes

    def ram_text(self) -> str:
        return (f"{self.model} needs {self.ram_bytes:,} bytes of RAM (program {self.program_bytes:,} + state "
                f"{self.state_bytes:,} + runtime {self.runtime_bytes:,} + margin {self.margin_bytes:,})")

    @classmethod
    def of(cls, info: Mapping[str, Any], manifest: Mapping[str, Any]) -> Needs:
        """From a bundle's ``bundle.json`` content and its program's (verified) manifest."""
        program = manifest.get("program")
        model = manifest.get("model")
        if not isinstance(program, Mapping) or not isinstance(model, Mapping):
            raise InputError("the manifest has no 'program' or 'model' object", hint="rebuild the bundle")
        size = _field(info, "size_bytes", int, "bundle.json")
        program_bytes = _field(program, "size_bytes", int, "manifest program")
        if program.get("sha256") != info.get("model_sha256", program.get("sha256")):
            raise InputError("bundle.json's model_sha256 is not the manifest's program sha256",
                             hint="rebuild the bundle with `edgelm build`")
        if size < program_bytes:
            raise InputError(f"bundle.json: size_bytes={size:,} is less than its program's {program_bytes:,}",
                             hint="rebuild the bundle with `edgelm build`")
        return cls(model=_field(model, "name", str, "manifest model")[:80],
                   arch=_field(info, "arch", str, "bundle.json"),
                   glibc_required=_field(info, "glibc_required", str, "bundle.json"),
                   program_bytes=program_bytes,
                   state_bytes=_field(program, "state_bytes", int, "manifest program"),
                   runtime_bytes=size - program_bytes,
                   disk_bytes=size + DISK_MARGIN_BYTES)


def needs_for(bundle: Any) -> Needs:
    """A bundle's needs (``package.Bundle``): its bundle.json and the manifest it carries."""
    import json

    from toolchain.export.manifest import MANIFEST_FILE

    path = bundle.root / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", hint="rebuild the bundle with `edgelm build`") from None
    return Needs.of(bundle.info, manifest if isinstance(manifest, dict) else {})


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    good = isinstance(value, int) and not isinstance(value, bool) and value >= 0 if kind is int \
        else isinstance(value, kind)
    if not good:
        what = "a non-negative integer" if kind is int else "a string"
        raise InputError(f"{where} field {key!r} is {repr(value)[:40]}, not {what}",
                         hint="rebuild the bundle with `edgelm build`")
    return value


def os_reserve_bytes(ram_mb: int) -> int:
    return max(OS_RESERVE_MIN_BYTES, ram_mb * MIB // OS_RESERVE_DIVISOR)


# --------------------------------------------------------------------------------------------------
# The probe: what runs on the board
# --------------------------------------------------------------------------------------------------

PROBE_FORMAT = "edgelm-preflight/1"
# Every value the probe prints is cut to these characters (tr -c ... _) and 400 bytes.
VALUE_CHARS = "A-Za-z0-9._,:/@+ -"
PROBE_SCRIPT = r"""# edgelm preflight probe: $1 = data folder, $2 = serial device (or empty). Prints key=value lines;
# every value is cut to [A-Za-z0-9._,:/@+ -] and 400 bytes, so no value can start another line.
kv() {
  printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr -c 'A-Za-z0-9._,:/@+ -' '_' | cut -c1-400)"
}
yesno() {
  if "$@"; then echo yes; else echo no; fi
}
probe() {
  data=$1 dev=$2
  LC_ALL=C; export LC_ALL
  set -f
  kv probe edgelm-preflight/1
  kv arch "$(uname -m 2>/dev/null)"
  v=$(getconf GNU_LIBC_VERSION 2>/dev/null)
  case $v in
    "glibc "*) v=${v#glibc } ;;
    *) v=$(ldd --version 2>/dev/null | sed -n '1s/.* \([0-9][0-9]*\.[0-9][0-9]*\)[^ ]*$/\1/p') ;;
  esac
  if [ -z "$v" ]; then  # no getconf or ldd (BusyBox images): glibc's libc.so.6 says its version when run
    set +f
    for f in /lib/*-linux-gnu*/libc.so.6 /lib64/libc.so.6 /lib/libc.so.6 /usr/lib/libc.so.6; do
      set -f
      [ -x "$f" ] || continue
      v=$("$f" 2>/dev/null | sed -n '1s/.* version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
      [ -n "$v" ] && break
    done
    set -f
  fi
  kv glibc "$v"
  kv mem_total_kb "$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo 2>/dev/null)"
  kv mem_available_kb "$(awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo 2>/dev/null)"
  d=${data:-.}
  case $d in -*) d=./$d ;; esac
  while [ ! -e "$d" ]; do
    p=$(dirname "$d")
    [ "$p" = "$d" ] && break
    d=$p
  done
  kv disk_path "$d"
  kv disk_free_kb "$(df -Pk "$d" 2>/dev/null | awk 'NR == 2 { print $4 }')"
  kv systemd "$(yesno test -d /run/systemd/system)"
  kv user "$(id -un 2>/dev/null)"
  kv groups "$(id -Gn 2>/dev/null)"
  cons=
  for w in $(cat /proc/cmdline 2>/dev/null); do
    case $w in console=*) c=${w#console=}; cons="$cons${cons:+ }${c%%,*}" ;; esac
  done
  kv kernel_consoles "$cons"
  s0=
  if [ -e /dev/serial0 ]; then s0=$(readlink -f /dev/serial0 2>/dev/null); fi
  kv serial0_target "$s0"
  kv serial_device "$dev"
  if [ -n "$dev" ]; then
    res=$(readlink -f "$dev" 2>/dev/null)
    kv serial_resolved "$res"
    kv serial_exists "$(yesno test -e "$dev")"
    kv serial_char "$(yesno test -c "$dev")"
    kv serial_group "$(stat -L -c %G "$dev" 2>/dev/null)"
    kv serial_mode "$(stat -L -c %a "$dev" 2>/dev/null)"
    kv serial_readable "$(yesno test -r "$dev")"
    kv serial_writable "$(yesno test -w "$dev")"
    target=${res:-$dev}
    case $target in /dev/*) name=${target#/dev/} ;; *) name=${target##*/} ;; esac
    case $dev in /dev/*) asked=${dev#/dev/} ;; *) asked=${dev##*/} ;; esac
    if command -v fuser >/dev/null 2>&1; then
      pids=$(fuser "$target" 2>/dev/null)
    else
      set +f
      pids=$(ls -l /proc/[0-9]*/fd 2>/dev/null | T=$target awk '
        /^\/proc\/[0-9]+\/fd:$/ { split($0, a, "/"); pid = a[3]; next }
        NF > 2 && $(NF - 1) == "->" && $NF == ENVIRON["T"] { print pid }')
      set -f
    fi
    holders=
    for p in $pids; do
      case $p in *[!0-9]*) continue ;; esac
      c=$(cat "/proc/$p/comm" 2>/dev/null)
      c=$(printf '%s' "$c" | tr -c 'A-Za-z0-9._+@-' '_' | cut -c1-32)
      case " $holders " in *" $p:"*) ;; *) holders="$holders${holders:+ }$p:${c:-?}" ;; esac
    done
    kv serial_holders "$holders"
    # A getty: a process whose command is *getty* with the device as its controlling terminal
    # (systemd's agetty gets it on stdin: "agetty ... - vt220") or named in its arguments.
    kv serial_getty "$(ps -eo pid,tty,args 2>/dev/null | N=$name M=$asked awk '
      function dev(x) {
        return x == ENVIRON["N"] || x == "/dev/" ENVIRON["N"] ||
          x == ENVIRON["M"] || x == "/dev/" ENVIRON["M"]
      }
      NR > 1 {
        c = $3; sub(/.*\//, "", c)
        if (c !~ /getty/) next
        hit = dev($2)
        for (i = 4; i <= NF && !hit; i++) hit = dev($i)
        if (hit) { out = out sep $1 ":" c; sep = " " }
      }
      END { print out }')"
    unit=
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      unit=$(systemctl is-active "serial-getty@$name.service" 2>/dev/null)
    fi
    kv serial_getty_unit "$unit"
  fi
  kv end ok
}
probe "${1-}" "${2-}" </dev/null
"""

# --------------------------------------------------------------------------------------------------
# What the board said
# --------------------------------------------------------------------------------------------------

MAX_PROBE_BYTES = 64 * 1024
MAX_VALUE_CHARS = 400  # longer values are cut (the probe cuts them too)
MAX_DIGITS = 20
_LINE = re.compile(r"([a-z][a-z0-9_]{0,31})=([A-Za-z0-9._,:/@+ -]*)")
_GLIBC = re.compile(r"(\d{1,4})\.(\d{1,4})(?:\.\d{1,4})?")
_HOLDER = re.compile(r"(\d{1,10}):([A-Za-z0-9._+@?-]{1,64})")
BASE_KEYS = ("probe", "arch", "glibc", "mem_total_kb", "mem_available_kb", "disk_path", "disk_free_kb", "systemd",
             "user", "groups", "kernel_consoles", "serial0_target", "serial_device")
SERIAL_KEYS = ("serial_resolved", "serial_exists", "serial_char", "serial_group", "serial_mode", "serial_readable",
               "serial_writable", "serial_holders", "serial_getty", "serial_getty_unit")
END_KEY = "end"
_PROBE_HINT = "run the probe by hand on the board (toolchain/deploy/preflight.py PROBE_SCRIPT) and look at its output"


@dataclass(frozen=True)
class Process:
    pid: int
    command: str  # /proc/PID/comm, cut to the probe's characters

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


@dataclass(frozen=True)
class SerialFacts:
    device: str  # as asked (e.g. /dev/serial0)
    resolved: str | None  # what it links to (/dev/ttyS0); None when it does not resolve
    exists: bool
    char_device: bool
    group: str | None
    mode: str | None  # octal permission bits, "660"
    readable: bool  # by the probing user
    writable: bool
    holders: tuple[Process, ...]  # processes with it open, of those the probing user can see
    gettys: tuple[Process, ...]  # getty processes serving it
    getty_unit: str | None  # `systemctl is-active serial-getty@NAME.service`; None without systemd

    @property
    def names(self) -> frozenset[str]:
        """The device's names under /dev: as asked and as resolved (serial0, ttyS0)."""
        return frozenset(p.rsplit("/", 1)[-1] for p in (self.device, self.resolved) if p)

    @property
    def shown(self) -> str:
        if self.resolved and self.resolved != self.device:
            return f"{self.device} (-> {self.resolved})"
        return self.device


@dataclass(frozen=True)
class Facts:
    arch: str
    glibc: str | None  # "2.36"; None when the board has none (musl) or the probe found none
    mem_total_bytes: int | None
    mem_available_bytes: int | None
    disk_path: str  # the data folder's nearest existing ancestor
    disk_free_bytes: int | None
    systemd: bool
    user: str
    groups: tuple[str, ...]
    kernel_consoles: tuple[str, ...]  # console= names on /proc/cmdline, without options (ttyS0, tty1)
    serial0_target: str | None  # where /dev/serial0 points (a Raspberry Pi's primary UART)
    serial: SerialFacts | None  # None when no serial device was asked about

    def __post_init__(self) -> None:
        for name in ("mem_total_bytes", "mem_available_bytes", "disk_free_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise InputError(f"facts: {name}={value!r} must be a non-negative integer or None")
        if self.glibc is not None and _version(self.glibc) is None:
            raise InputError(f"facts: glibc={self.glibc!r} must look like '2.36'")


def parse_facts(text: str) -> Facts:
    """The probe's output, strictly: known keys once each, in a known shape, from ``probe=`` to ``end=ok``."""
    if len(text) > MAX_PROBE_BYTES:
        raise InputError(f"the preflight probe printed {len(text):,} characters; at most {MAX_PROBE_BYTES:,} expected",
                         hint=_PROBE_HINT)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    values: dict[str, str] = {}
    allowed = {*BASE_KEYS, *SERIAL_KEYS, END_KEY}
    for number, line in enumerate(lines, 1):
        where = f"preflight probe line {number} {line[:60]!r}"
        if END_KEY in values:
            raise InputError(f"{where} comes after the end line", hint=_PROBE_HINT)
        m = _LINE.fullmatch(line)
        if m is None:
            raise InputError(f"{where} is not key=value in the probe's characters", hint=_PROBE_HINT)
        key, value = m.group(1), m.group(2)[:MAX_VALUE_CHARS]
        if key not in allowed:
            raise InputError(f"{where}: unknown key {key!r}", hint=_PROBE_HINT)
        if key in values:
            raise InputError(f"{where}: {key!r} given twice", hint=_PROBE_HINT)
        if number == 1 and (key != "probe" or value != PROBE_FORMAT):
            raise InputError(f"{where} is not the probe's first line (probe={PROBE_FORMAT})", hint=_PROBE_HINT)
        values[key] = value
    if values.get(END_KEY) != "ok":
        raise InputError(f"the preflight probe's output ended early, after {len(lines)} line(s) (no end=ok)",
                         hint=_PROBE_HINT)
    required = list(BASE_KEYS) + (list(SERIAL_KEYS) if values.get("serial_device") else [])
    missing = [k for k in required if k not in values]
    if missing:
        raise InputError(f"the preflight probe's output lacks {missing[0]!r}", hint=_PROBE_HINT)
    extra = [k for k in SERIAL_KEYS if k in values and not values["serial_device"]]
    if extra:
        raise InputError(f"the preflight probe's output has {extra[0]!r} but no serial device", hint=_PROBE_HINT)

    glibc = values["glibc"]
    if glibc and _version(glibc) is None:
        raise InputError(f"the preflight probe's glibc={glibc[:40]!r} is not a version", hint=_PROBE_HINT)
    serial = None
    if values["serial_device"]:
        serial = SerialFacts(
            device=values["serial_device"], resolved=values["serial_resolved"] or None,
            exists=_bool(values, "serial_exists"), char_device=_bool(values, "serial_char"),
            group=values["serial_group"] or None, mode=values["serial_mode"] or None,
            readable=_bool(values, "serial_readable"), writable=_bool(values, "serial_writable"),
            holders=_processes(values, "serial_holders"), gettys=_processes(values, "serial_getty"),
            getty_unit=values["serial_getty_unit"] or None)
    return Facts(
        arch=values["arch"], glibc=_normal_version(glibc) if glibc else None,
        mem_total_bytes=_kib(values, "mem_total_kb"), mem_available_bytes=_kib(values, "mem_available_kb"),
        disk_path=values["disk_path"], disk_free_bytes=_kib(values, "disk_free_kb"),
        systemd=_bool(values, "systemd"), user=values["user"], groups=tuple(values["groups"].split()),
        kernel_consoles=tuple(values["kernel_consoles"].split()), serial0_target=values["serial0_target"] or None,
        serial=serial)


def _kib(values: dict[str, str], key: str) -> int | None:
    value = values[key]
    if not value:
        return None
    if not value.isdigit() or not value.isascii() or len(value) > MAX_DIGITS:
        raise InputError(f"the preflight probe's {key}={value[:40]!r} is not a number", hint=_PROBE_HINT)
    return int(value) * 1024


def _bool(values: dict[str, str], key: str) -> bool:
    value = values[key]
    if value not in ("yes", "no"):
        raise InputError(f"the preflight probe's {key}={value[:40]!r} is not yes or no", hint=_PROBE_HINT)
    return value == "yes"


def _processes(values: dict[str, str], key: str) -> tuple[Process, ...]:
    out = []
    for item in values[key].split():
        m = _HOLDER.fullmatch(item)
        if m is None:
            raise InputError(f"the preflight probe's {key} has {item[:40]!r}, not PID:COMMAND", hint=_PROBE_HINT)
        out.append(Process(int(m.group(1)), m.group(2)))
    return tuple(out)


def _version(text: str) -> tuple[int, int] | None:
    m = _GLIBC.fullmatch(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _normal_version(text: str) -> str:
    major, minor = _version(text) or (0, 0)
    return f"{major}.{minor}"


# --------------------------------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------------------------------

KIND_DEVICE = "device"  # the board is not ready (exit 6)
KIND_CAPACITY = "capacity"  # the release does not fit (exit 4)
# Raspberry Pi UARTs: serial0/serial1 are the firmware's aliases; ttyAMA10 is the Pi 5's debug UART.
PI_UARTS = frozenset({"serial0", "serial1", "ttyS0", "ttyAMA0", "ttyAMA10"})
_FREE_UART_HINT = ("on Raspberry Pi OS: `sudo raspi-config nonint do_serial_cons 1`, or `sudo systemctl disable --now "
                   "{unit}` and remove console=serial0,115200 from /boot/firmware/cmdline.txt; then reboot")


@dataclass(frozen=True)
class Check:
    name: str  # arch, glibc, ram, disk, serial, serial-getty, serial-console, serial-holders, serial-access
    ok: bool
    line: str  # one line, byte counts included
    hint: str | None = None
    kind: str = KIND_DEVICE

    def __post_init__(self) -> None:
        if not self.line or "\n" in self.line:
            raise ValueError(f"check {self.name!r}: the line must be one non-empty line")
        if self.kind not in (KIND_DEVICE, KIND_CAPACITY):
            raise ValueError(f"check {self.name!r}: kind={self.kind!r}")


class PreflightFailed(DeviceError):
    """The board is not ready: the first failing check's line, with every check in ``checks``."""

    def __init__(self, message: str, hint: str | None, checks: tuple[Check, ...]):
        super().__init__(message, hint)
        self.checks = checks


class DoesNotFit(PreflightFailed, CapacityError):
    """The first failing check is one of capacity (RAM, disk, glibc): exit code 4."""

    exit_code = CapacityError.exit_code


def judge(facts: Facts, needs: Needs, board: Board) -> list[Check]:
    """One check per concern, in order: arch, glibc, RAM, disk, then the serial device (when asked)."""
    checks = [_arch(facts, needs, board), _glibc(facts, needs, board), _ram(facts, needs), _disk(facts, needs)]
    if facts.serial is not None:
        checks += _serial(facts, facts.serial, board)
    return checks


def fit(board: Board, needs: Needs) -> Check:
    """The profile-level RAM check: ``board.ram_mb`` less the OS's share against the model's need."""
    total = board.ram_mb * MIB
    reserve = os_reserve_bytes(board.ram_mb)
    left = max(0, total - reserve)
    where = f"{board.name}'s {board.ram_mb} MB leave {left:,} bytes for it ({total:,} less {reserve:,} for the OS)"
    if needs.ram_bytes > left:
        return Check("fit", False, f"RAM: {needs.ram_text()}; {where}", kind=KIND_CAPACITY,
                     hint="use a smaller model (e.g. --model tiny) or --max-seq-len, or a board with more RAM")
    return Check("fit", True, f"RAM: {needs.ram_text()}; {where}", kind=KIND_CAPACITY)


def require(checks: Iterable[Check]) -> None:
    """Raise on the first failing check (its line and hint), saying how many failed; else return."""
    checks = tuple(checks)
    failed = [c for c in checks if not c.ok]
    if not failed:
        return
    first = failed[0]
    more = f" (and {len(failed) - 1} more failed check(s): {', '.join(c.name for c in failed[1:])})" \
        if len(failed) > 1 else ""
    cls = DoesNotFit if first.kind == KIND_CAPACITY else PreflightFailed
    raise cls(f"preflight: {first.line}{more}", first.hint, checks)


def _arch(facts: Facts, needs: Needs, board: Board) -> Check:
    if facts.arch == needs.arch:
        return Check("arch", True, f"architecture: {facts.arch} (uname -m), as the {board.name} bundle needs")
    hint = (f"install a 64-bit OS on the board (a {facts.arch or 'unknown'} userland cannot run {needs.arch} binaries)"
            if needs.arch == "aarch64" and facts.arch.startswith("arm") else
            f"use a board profile whose arch is {facts.arch or 'what uname -m says'}")
    return Check("arch", False, f"architecture: the board is {facts.arch or 'unknown'} (uname -m); "
                 f"the {board.name} bundle needs {needs.arch}", hint=hint)


def _glibc(facts: Facts, needs: Needs, board: Board) -> Check:
    need = needs.glibc_required
    profile = f" (the {board.name} profile says {board.glibc})" if facts.glibc != board.glibc else ""
    if facts.glibc is None:
        return Check("glibc", False, f"glibc: the board has none that getconf, ldd or libc.so.6 report; the runner "
                     f"needs glibc {need} or newer", hint="use a glibc-based OS (Raspberry Pi OS, Debian, Ubuntu)",
                     kind=KIND_CAPACITY)
    have = _version(facts.glibc) or (0, 0)
    if have < (_version(need) or (0, 0)):
        return Check("glibc", False, f"glibc: the board has {facts.glibc}{profile}; the bundle's binaries need "
                     f"{need} or newer", kind=KIND_CAPACITY,
                     hint=f"update the board's OS, or build for glibc {facts.glibc} (the glibc field of "
                          f"boards/{board.name}.toml) with a toolchain no newer than that")
    return Check("glibc", True, f"glibc: {facts.glibc} on the board{profile}; the bundle needs {need}",
                 kind=KIND_CAPACITY)


def _ram(facts: Facts, needs: Needs) -> Check:
    total = f" of {facts.mem_total_bytes:,}" if facts.mem_total_bytes is not None else ""
    if facts.mem_available_bytes is None:
        return Check("ram", False, f"RAM: {needs.ram_text()}; the board's /proc/meminfo has no MemAvailable",
                     hint="use a kernel newer than 3.14", kind=KIND_CAPACITY)
    line = f"RAM: {needs.ram_text()}; the board has {facts.mem_available_bytes:,} available{total}"
    if needs.ram_bytes > facts.mem_available_bytes:
        return Check("ram", False, line, kind=KIND_CAPACITY,
                     hint="stop what else runs on the board, or use a smaller model (--model tiny), "
                          "quantization (--quant 8da4w) or --max-seq-len")
    return Check("ram", True, line, kind=KIND_CAPACITY)


def _disk(facts: Facts, needs: Needs) -> Check:
    if facts.disk_free_bytes is None:
        return Check("disk", False, f"disk: the release needs {needs.disk_bytes:,} bytes; df reported nothing for "
                     f"{facts.disk_path}", hint="check the data folder on the board", kind=KIND_CAPACITY)
    line = (f"disk: the release needs {needs.disk_bytes:,} bytes; {facts.disk_path} has "
            f"{facts.disk_free_bytes:,} free")
    if needs.disk_bytes > facts.disk_free_bytes:
        return Check("disk", False, line, kind=KIND_CAPACITY,
                     hint="free space on the board (old releases, logs), or use another data folder")
    return Check("disk", True, line, kind=KIND_CAPACITY)


def _missing_uart_hint(board: Board, s: SerialFacts, pi_uart: bool) -> str:
    """How to make the device appear: the profile's knowledge of the port first ([[uarts]])."""
    uart = board.uart_for(s.device)
    if uart is not None and uart.config:
        return (f"{s.device} is {uart.where}: add {' and '.join(uart.config)} under [all] in "
                "/boot/firmware/config.txt (a dir: flash of the card writes them), then reboot")
    if uart is not None:
        return (f"{s.device} is {uart.where}, there on every boot of a {board.name}: check that the profile is "
                "this board's, or choose another port with --board-port")
    if pi_uart:
        return ("enable the UART: `sudo raspi-config nonint do_serial_hw 0` (enable_uart=1 in "
                "/boot/firmware/config.txt), then reboot")
    return "plug the adapter in, or set serial_device in the board profile"


def _serial(facts: Facts, s: SerialFacts, board: Board) -> list[Check]:
    pi_uart = bool(s.names & PI_UARTS) or (facts.serial0_target is not None and facts.serial0_target == s.resolved)
    if not s.exists or not s.char_device:
        what = "does not exist on the board" if not s.exists else "is not a character device"
        hint = _missing_uart_hint(board, s, pi_uart)
        return [Check("serial", False, f"serial: {s.shown} {what}", hint=hint)]
    checks = [Check("serial", True, f"serial: {s.shown} is a character device")]

    unit = f"serial-getty@{sorted(s.names - {'serial0', 'serial1'} or s.names)[0]}.service"
    gettys = [*s.gettys, *(p for p in s.holders if "getty" in p.command and p not in s.gettys)]
    running = [str(p) for p in gettys] + ([f"{unit} {s.getty_unit}"] if s.getty_unit in ("active",
                                                                                          "activating") else [])
    if running:
        checks.append(Check("serial-getty", False, f"serial: a login console (getty) runs on {s.shown}: "
                            f"{', '.join(running)}", hint=_FREE_UART_HINT.format(unit=shlex.quote(unit))))
    else:
        checks.append(Check("serial-getty", True, f"serial: no login console (getty) on {s.shown}"))

    consoles = [c for c in facts.kernel_consoles if _console_on(c, s, facts.serial0_target, pi_uart)]
    if consoles:
        checks.append(Check("serial-console", False, f"serial: the kernel's console is on {s.shown} "
                            f"(console={consoles[0]} on /proc/cmdline)",
                            hint="remove console=serial0,115200 (or console=" + shlex.quote(consoles[0]) +
                                 ",...) from /boot/firmware/cmdline.txt (`sudo raspi-config nonint do_serial_cons 1`)"
                                 ", then reboot"))
    else:
        checks.append(Check("serial-console", True, f"serial: the kernel's console is not on {s.shown}"))

    getty_pids = {p.pid for p in gettys}
    others = [p for p in s.holders if p.pid not in getty_pids and p.command != RUNNER]
    ours = [p for p in s.holders if p.command == RUNNER]
    if others:
        checks.append(Check("serial-holders", False, f"serial: {s.shown} is held by "
                            f"{', '.join(str(p) for p in others)}",
                            hint=f"stop it (`kill {others[0].pid}`), or use another serial device"))
    elif ours:
        checks.append(Check("serial-holders", True, f"serial: {s.shown} is held only by edgelm's runner "
                            f"({', '.join(str(p) for p in ours)}), which the switch stops"))
    else:
        checks.append(Check("serial-holders", True, f"serial: no other process holds {s.shown} "
                            f"(of those {facts.user or 'this user'} can see)"))

    mode = f"mode {s.mode}, group {s.group or '?'}"
    if s.readable and s.writable:
        checks.append(Check("serial-access", True, f"serial: {facts.user} can read and write {s.shown} ({mode})"))
    elif s.group == "tty":  # a login console owns it: joining tty would be the wrong cure
        checks.append(Check("serial-access", False, f"serial: {facts.user} cannot read and write {s.shown} ({mode}: "
                            "a login console's)", hint=_FREE_UART_HINT.format(unit=shlex.quote(unit))))
    elif s.group and s.group not in facts.groups:
        checks.append(Check("serial-access", False, f"serial: {facts.user} is not in group {s.group}, which owns "
                            f"{s.shown} ({mode})",
                            hint=f"sudo usermod -aG {shlex.quote(s.group)} {shlex.quote(facts.user)}, "
                                 "then log in again"))
    else:
        checks.append(Check("serial-access", False, f"serial: {facts.user} cannot read and write {s.shown} ({mode})",
                            hint="give the device to a group the user is in (a udev rule with GROUP=\"dialout\", "
                                 "MODE=\"0660\")"))
    return checks


def _console_on(console: str, s: SerialFacts, serial0_target: str | None, pi_uart: bool) -> bool:
    """Whether a ``console=`` name from the kernel command line is this device."""
    if console in s.names:
        return True
    if console not in ("serial0", "serial1"):
        return False
    if serial0_target is None:  # no /dev/serial0 link to tell: a Pi UART is taken to be it
        return pi_uart
    return serial0_target.rsplit("/", 1)[-1] in s.names
