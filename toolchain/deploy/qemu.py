"""Run an Arm board's bundle under QEMU user-mode emulation of the board's CPU.

``qemu-aarch64 -cpu cortex-a76`` executes the same binary a Raspberry Pi 5 runs and traps an
instruction that CPU lacks, so a build that would crash on the board crashes here too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from toolchain import doctor
from toolchain.boards import Board
from toolchain.deploy import local
from toolchain.deploy.base import Target, missing_tools
from toolchain.errors import DeviceError, UsageError
from toolchain.link.session import Timeouts

SYSROOTS = {"aarch64": "/usr/aarch64-linux-gnu"}
# An emulated CPU is tens of times slower than the board it stands for.
TIMEOUTS = Timeouts(first_token_s=120.0, token_s=30.0)


def emulator(board: Board) -> list[str]:
    """The command prefix that runs ``board``'s Linux binaries here: qemu-user with the board's CPU
    model and its architecture's sysroot (also the board's twin: validate/twin.py)."""
    if board.arch not in SYSROOTS:
        raise UsageError(f"the qemu target emulates Arm boards; {board.name} is {board.arch}",
                         hint="use --target local for the host board")
    qemu = f"qemu-{board.arch}"
    if shutil.which(qemu) is None:
        raise DeviceError(f"{qemu} is not installed", hint=doctor.hint(qemu))
    return [qemu, "-L", SYSROOTS[board.arch], "-cpu", board.qemu_cpu or "max"]


def create(spec: str, board: Board, state_dir: Path, options: object = None) -> Target:
    if board.arch not in SYSROOTS:
        raise UsageError(f"the qemu target emulates Arm boards; {board.name} is {board.arch}",
                         hint="use --target local for the host board")

    def prefix() -> list[str]:
        return emulator(board)

    def missing() -> list[str]:
        lacks = missing_tools((f"qemu-{board.arch}", "Debian's qemu-user"), local.SOCAT)
        if not Path(SYSROOTS[board.arch]).is_dir():
            lacks.append(f"{SYSROOTS[board.arch]} (Debian's libc6-{board.arch.replace('aarch64', 'arm64')}-cross)")
        return lacks

    return local.process_target("qemu", board, state_dir, prefix, emulated=True, timeouts=TIMEOUTS, missing=missing)
