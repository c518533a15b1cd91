"""Render the firmware templates in ``firmware/`` into a self-contained CMake project for a board.

Files ending in ``.in`` have their ``@NAME@`` tokens replaced (every token must be known, every
value used); the other files are copied as they are. Pure apart from reading and writing files.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from toolchain import __version__
from toolchain.boards import Board
from toolchain.errors import BuildError
from toolchain.paths import FIRMWARE_DIR

_TOKEN = re.compile(r"@([A-Z][A-Z0-9_]*)@")
SOURCE_SUFFIXES = (".c", ".h", ".cpp", ".in", ".txt", ".cmake")
# Board-side templates in firmware/: rendered on deploy (toolchain/deploy/service.py), not part of
# the runner's CMake project and not of its firmware version.
UNIT_TEMPLATE = "edgelm-runner.service.in"
BOARD_SIDE_TEMPLATES = (UNIT_TEMPLATE,)


def firmware_sources(firmware: Path = FIRMWARE_DIR) -> list[Path]:
    return sorted(p for p in firmware.iterdir()
                  if p.is_file() and p.name.endswith(SOURCE_SUFFIXES) and p.name not in BOARD_SIDE_TEMPLATES)


def firmware_version(firmware: Path = FIRMWARE_DIR) -> str:
    """edgelm's version plus a hash of the firmware sources: any change to them is a new firmware."""
    h = hashlib.sha256()
    for p in firmware_sources(firmware):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return f"{__version__}+{h.hexdigest()[:10]}"


def substitute(text: str, values: dict[str, str], name: str) -> str:
    unknown = sorted({m for m in _TOKEN.findall(text) if m not in values})
    if unknown:
        raise BuildError(f"template {name} uses @{unknown[0]}@, which the renderer does not define")
    return _TOKEN.sub(lambda m: values[m.group(1)], text)


def template_values(board: Board, firmware: Path = FIRMWARE_DIR) -> dict[str, str]:
    return {
        "BOARD": board.name,
        "FIRMWARE_VERSION": firmware_version(firmware),
        "SERIAL_DEVICE": board.serial_device,
        "BAUD": str(board.baud),
        "THREADS": str(board.threads),
        "CROSS_PREFIX": board.cross_prefix,
        "SYSTEM_PROCESSOR": board.arch,
    }


def render(board: Board, dest: Path, firmware: Path = FIRMWARE_DIR) -> Path:
    """Write the project for ``board`` into ``dest`` (replaced); returns ``dest``."""
    sources = firmware_sources(firmware)
    if not any(p.name == "CMakeLists.txt" for p in sources):
        raise BuildError(f"{firmware} has no CMakeLists.txt")
    values = template_values(board, firmware)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for src in sources:
        if src.name.endswith(".in"):
            (dest / src.name[:-3]).write_text(substitute(src.read_text(), values, src.name))
        else:
            shutil.copy2(src, dest / src.name)
    return dest
