"""Run an Arm board's bundle under QEMU user-mode emulation of the board's CPU.

``qemu-aarch64 -cpu cortex-a76`` executes the same binary a Raspberry Pi 5 runs and traps an
instruction that CPU lacks, so a build that would crash on the board crashes here too.
"""

from __future__ import annotations

import shutil

from toolchain.deploy.process import ProcessTarget
from toolchain.errors import DeviceError, UsageError

SYSROOTS = {"aarch64": "/usr/aarch64-linux-gnu"}


class QemuTarget(ProcessTarget):
    name = "qemu"
    emulated = True

    def check_board(self) -> None:
        if self.board.arch not in SYSROOTS:
            raise UsageError(f"the qemu target emulates Arm boards; {self.board.name} is {self.board.arch}",
                             hint="use --target local for the host board")

    def command_prefix(self) -> list[str]:
        qemu = f"qemu-{self.board.arch}"
        if shutil.which(qemu) is None:
            raise DeviceError(f"{qemu} is not installed", hint="`make setup` installs Debian's qemu-user")
        return [qemu, "-L", SYSROOTS[self.board.arch], "-cpu", self.board.qemu_cpu or "max"]
