"""Run a bundle natively on this machine (the ``host`` board): the simulation of a board.

Also the assembly of every target whose runner is a process here (``qemu`` too): a release store
in the target's state folder (the board itself: its releases, trusted keys and security counter),
the process runner and its pseudo-terminal link, and a preflight
that checks the board profile's RAM against the program's need (an emulated board has the RAM
its profile says).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

from toolchain.boards import Board
from toolchain.bundle.package import Bundle
from toolchain.deploy.base import Target, missing_tools
from toolchain.deploy.process import ProcessRunner
from toolchain.deploy.store import LocalStore
from toolchain.errors import UsageError
from toolchain.link.session import Timeouts

SOCAT = ("socat", "Debian's socat: it joins the board's and the host's pseudo-terminals")


def process_target(kind: str, board: Board, state_dir: Path, prefix: Callable[[], list[str]], *,
                   emulated: bool = False, timeouts: Timeouts | None = None,
                   missing: Callable[[], list[str]] = lambda: missing_tools(SOCAT)) -> Target:
    from toolchain import doctor

    doctor.require_linux(f"--target {kind} (a runner process joined to this host by pseudo-terminals)")
    state = state_dir / f"{kind}-{board.name}"
    where = f"{kind}:{board.name}"
    runner = ProcessRunner(state, board, prefix)
    return Target(kind=kind, spec=kind, board=board, state=state, emulated=emulated, rss_of_emulator=emulated,
                  store=LocalStore(state, board, where),
                  runner=runner, link=runner, preflight=lambda bundle: profile_fit(board, bundle),
                  timeouts=timeouts or Timeouts(), missing=missing)


def profile_fit(board: Board, bundle: Bundle) -> list:
    """What can be checked without the board: its profile's RAM against the program's need."""
    from toolchain.deploy import preflight

    return [preflight.fit(board, preflight.needs_for(bundle))]


def create(spec: str, board: Board, state_dir: Path, options: object = None) -> Target:
    if board.arch != platform.machine():
        raise UsageError(f"the local target runs {platform.machine()} bundles; {board.name} is {board.arch}",
                         hint="use --target qemu for Arm boards")
    return process_target("local", board, state_dir, list)
