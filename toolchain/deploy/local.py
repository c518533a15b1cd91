"""Run a bundle natively on this machine (the ``host`` board): the simulation of a board."""

from __future__ import annotations

import platform

from toolchain.deploy.process import ProcessTarget
from toolchain.errors import UsageError


class LocalTarget(ProcessTarget):
    name = "local"

    def check_board(self) -> None:
        if self.board.arch != platform.machine():
            raise UsageError(f"the local target runs {platform.machine()} bundles; {self.board.name} is "
                             f"{self.board.arch}", hint="use --target qemu for Arm boards")
