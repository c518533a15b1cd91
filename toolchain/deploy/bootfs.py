"""A Raspberry Pi OS card's boot partition: the settings that give the runner its UART.

What a port needs is board knowledge, in the profile (:class:`toolchain.boards.Uart`, ``[[uarts]]`` in
``boards/*.toml``): a Pi 5's GPIO header wants ``dtparam=uart0=on`` for ``/dev/ttyAMA0``; a Pi 3/4/Zero 2 W
wants ``enable_uart=1`` and ``dtoverlay=disable-bt`` for the PL011. Two edits, both pure and idempotent:
:func:`set_line` makes one ``config.txt`` line hold for every model; :func:`strip_serial_console` takes the
port's ``console=`` words off the kernel command line in ``cmdline.txt``, so neither the kernel nor a
getty talks on the runner's device. Everything else is kept byte for byte.

On a host the card's two partitions are mounted apart (``/media/$USER/bootfs`` and ``.../rootfs``);
on the board bookworm mounts the boot partition at ``/boot/firmware``, bullseye at ``/boot``.
:func:`find_boot` finds it (a folder with ``config.txt`` and ``cmdline.txt``); :func:`apply` writes
both files or neither: new contents go to temporary files beside them first, and the second
replace failing puts the first file back.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from toolchain.boards import Uart
from toolchain.errors import DeviceError, InputError, UsageError

CONFIG_TXT = "config.txt"
CMDLINE_TXT = "cmdline.txt"
UART_SETTING = "enable_uart=1"
# Where a root file system mounts its boot partition: bookworm, then bullseye.
BOOT_DIRS = ("boot/firmware", "boot")
MAX_BOOT_FILE_BYTES = 1 << 20
# Serial consoles on a Raspberry Pi: the firmware's aliases, the PL011 and mini UARTs, the Pi 5's
# debug UART (ttyAMA10). console=tty1 (the screen) and every other word stay.
PI_SERIAL_CONSOLES = ("serial0", "serial1", "ttyAMA0", "ttyAMA1", "ttyAMA10", "ttyS0")
_SECTION = re.compile(r"\s*\[([^\]]*)\]")
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # bytes that are not UTF-8 come back as they were


# --------------------------------------------------------------------------------------------------
# The edits (pure)
# --------------------------------------------------------------------------------------------------

def set_line(config_txt: str, wanted: str) -> str:
    """``config_txt`` with ``wanted`` (``name=value``, e.g. ``enable_uart=1``, ``dtparam=uart0=on``, or
    ``dtoverlay=disable-bt``) in force on every model.

    A setting (``enable_uart``, ``dtparam=uart0``): its lines that apply to every model (before any
    section, or under ``[all]``) are set to the value. If the last one the firmware reads for some model
    is still another (none at all, or a later one under a filter such as ``[pi4]``), ``wanted`` is
    appended under ``[all]``: later lines win. An overlay (``dtoverlay=NAME``) is loaded, never replaced:
    present for every model or appended under ``[all]``; other overlays are left alone. Comments, other
    sections and line endings stay as they were.
    """
    key, value = wanted.rsplit("=", 1)
    overlay = key == "dtoverlay"
    pattern = re.compile(r"\s*" + r"\s*=\s*".join(re.escape(part) for part in key.split("=")) + r"\s*=\s*(\S*)\s*")
    lines = config_txt.splitlines(keepends=True)
    out: list[str] = []
    in_all = True
    last_all = None  # index of the last line of this setting that applies to every model
    later_filtered = False  # another value under a filter, after last_all
    for line in lines:
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        section = _SECTION.match(body)
        match = pattern.fullmatch(body)
        if match and overlay and match.group(1) != value:
            match = None  # another overlay: not this one's business
        if section:
            in_all = section.group(1).strip().lower() == "all"
        elif match and in_all:
            if match.group(1) != value:
                line = wanted + ending
            last_all, later_filtered = len(out), False
        elif match and match.group(1) != value:
            later_filtered = True
        out.append(line)
    text = "".join(out)
    if last_all is not None and not later_filtered:
        return text
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    if text and not text.endswith("\n"):
        text += newline
    return text + ("" if in_all else f"[all]{newline}") + wanted + newline


def enable_uart(config_txt: str) -> str:
    """``config_txt`` with ``enable_uart=1`` on every model (:func:`set_line`)."""
    return set_line(config_txt, UART_SETTING)


def _console_word(names: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"console=(?:" + "|".join(re.escape(n) for n in names) + r")(?:,\S*)?")


def strip_serial_console(cmdline: str, names: tuple[str, ...] = PI_SERIAL_CONSOLES) -> str:
    """``cmdline`` without its ``console=`` words on the ports ``names`` (default: every Pi serial
    port), each with the space after it (or before, at the end); one line, its ending kept."""
    body = cmdline.rstrip("\r\n")
    ending = cmdline[len(body):]
    if "\n" in body or "\r" in body:
        raise InputError(f"{CMDLINE_TXT} has more than one line; the firmware reads one",
                         hint="join it into one line (words separated by spaces) and try again")
    if not names:
        return cmdline
    console = _console_word(names)
    words = re.findall(r"\S+|\s+", body)
    kept: list[str] = []
    for i, word in enumerate(words):
        if console.fullmatch(word):
            if i + 1 < len(words):
                words[i + 1] = ""  # the space after it
            elif kept and kept[-1].isspace():
                kept.pop()  # the last word: the space before it
            continue
        if word:
            kept.append(word)
    return "".join(kept) + ending


def serial_consoles(cmdline: str, names: tuple[str, ...] = PI_SERIAL_CONSOLES) -> list[str]:
    """The ``console=`` words of a command line on the ports ``names``."""
    if not names:
        return []
    console = _console_word(names)
    return [w for w in cmdline.split() if console.fullmatch(w)]


def edit(config_txt: str, cmdline: str, uart: Uart) -> tuple[str, str, list[str]]:
    """Both files as ``uart`` needs them, and what changed (one phrase each: the line set, the consoles
    removed)."""
    changes = []
    for wanted in uart.config:
        before, config_txt = config_txt, set_line(config_txt, wanted)
        if config_txt != before:
            changes.append(f"{CONFIG_TXT}: {wanted}")
    removed = serial_consoles(cmdline, uart.consoles)
    cmdline = strip_serial_console(cmdline, uart.consoles)
    if removed:
        changes.append(f"{CMDLINE_TXT}: removed {' '.join(removed)}")
    return config_txt, cmdline, changes


# --------------------------------------------------------------------------------------------------
# The card (files)
# --------------------------------------------------------------------------------------------------

def is_boot_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in (CONFIG_TXT, CMDLINE_TXT))


def find_boot(root: Path, boot: Path | None = None) -> Path:
    """The boot partition: ``boot`` when given (a card's bootfs mounted apart), else the one under
    the root file system ``root`` (``boot/firmware``, then ``boot``), inside it."""
    if boot is not None:
        if not is_boot_dir(boot):
            raise UsageError(f"{boot} is not a Raspberry Pi OS boot partition (no {CONFIG_TXT} and {CMDLINE_TXT})",
                             hint="give the card's boot partition as mounted (e.g. /media/$USER/bootfs)")
        return boot
    top = root.resolve()
    for rel in BOOT_DIRS:
        candidate = root / rel
        if not candidate.is_dir() or not _inside(candidate, top):
            continue
        if is_boot_dir(candidate):
            return candidate
    raise UsageError(f"no boot partition under {root} (looked for {CONFIG_TXT} and {CMDLINE_TXT} in "
                     f"{' and '.join(BOOT_DIRS)})",
                     hint="on a host the card's boot partition mounts apart: give it (e.g. /media/$USER/bootfs)")


def is_pi_os_root(root: Path) -> bool:
    """Whether ``root`` looks like a Raspberry Pi OS root file system (etc/os-release and etc/rpi-issue,
    followed only inside it: /etc/os-release is a relative link on Debian)."""
    top = root.resolve()
    return all((root / "etc" / name).is_file() and _inside(root / "etc" / name, top)
               for name in ("os-release", "rpi-issue"))


def apply(boot: Path, uart: Uart) -> list[str]:
    """Give the runner ``uart``: write ``config.txt`` and ``cmdline.txt`` in ``boot``; what changed, one
    line each (nothing when both were already so). Both files or neither: on an error nothing stays
    changed."""
    if not is_boot_dir(boot):
        raise UsageError(f"{boot} is not a Raspberry Pi OS boot partition (no {CONFIG_TXT} and {CMDLINE_TXT})")
    config, cmdline = boot / CONFIG_TXT, boot / CMDLINE_TXT
    old_config, old_cmdline = _read(config), _read(cmdline)
    new_config, new_cmdline, edits = edit(old_config, old_cmdline, uart)
    plan = [(path, old, new) for path, old, new in ((config, old_config, new_config),
                                                     (cmdline, old_cmdline, new_cmdline)) if new != old]
    changes = [f"{boot / phrase}" for phrase in edits]
    if not plan:
        return []
    temps: list[Path] = []
    try:
        for path, _old, new in plan:
            temps.append(_write_temp(path, new))
    except OSError as exc:
        _remove(temps)
        raise DeviceError(f"cannot write in {boot}: {exc.strerror or exc}; nothing was changed") from None
    done: list[tuple[Path, str]] = []
    try:
        for (path, old, _new), tmp in zip(plan, temps, strict=True):
            os.replace(tmp, path)
            done.append((path, old))
    except OSError as exc:
        _remove(temps)
        restored = _restore(done)
        state = "nothing was changed" if restored else f"{done[0][0]} was changed and could not be put back"
        raise DeviceError(f"cannot replace a file in {boot}: {exc.strerror or exc}; {state}") from None
    _fsync_dir(boot)
    for path, _old, new in plan:
        if _read(path) != new:
            raise DeviceError(f"{path} does not read back as written", hint="check the card (fsck.vfat)")
    return changes


def _inside(path: Path, top: Path) -> bool:
    try:
        path.resolve().relative_to(top)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _read(path: Path) -> str:
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; a boot partition (FAT) holds none")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_BOOT_FILE_BYTES:
        raise InputError(f"{path} is {size:,} bytes; a {path.name} is far smaller")
    return path.read_bytes().decode(_ENCODING, _ERRORS)


def _write_temp(path: Path, text: str) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode(_ENCODING, _ERRORS))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        except OSError:
            pass  # FAT has no modes to keep
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _restore(done: list[tuple[Path, str]]) -> bool:
    """Put replaced files back as they were; whether that worked."""
    for path, old in reversed(done):
        try:
            os.replace(_write_temp(path, old), path)
        except OSError:
            return False
    return True


def _remove(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system syncs a folder
    finally:
        os.close(fd)
