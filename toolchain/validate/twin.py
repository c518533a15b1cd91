"""The board's twin: the host's own build of the bundle's runner, on the board's instruction set,
served the same requests as the board.

An honest board and its twin run the same binary on the same program with the same thread count,
and an Arm board's twin runs under QEMU's model of the board's CPU (the profile's ``qemu_cpu``), so
XNNPACK picks the same kernels and every float comes out the same: the twin's stream equals the
board's bit for bit (tokens, reported logits, stop, and the call counters of speculative
decoding). Any difference is a FAIL, with nothing excused (``compare.compare_twin``).

The twin is the runner the host built (its bundle folder here), never a binary taken from the
board. It is one process for the life of a board session: a chat's turns reach it in the same
order, as the same REQUESTs (``Collected.request``), so the state it keeps is the board's.
"""

from __future__ import annotations

import logging
import platform
import subprocess
from pathlib import Path

from toolchain.boards import Board
from toolchain.errors import DeviceError, EdgelmError
from toolchain.link import protocol
from toolchain.link.session import BoardSession, Collected, Timeouts
from toolchain.link.transport import PipeTransport

log = logging.getLogger(__name__)

TIMEOUTS = Timeouts(hello_s=600.0, first_token_s=600.0, token_s=120.0)  # the twin is not on trial for speed


def command(board: Board) -> tuple[list[str] | None, str]:
    """The prefix that runs ``board``'s binaries here on its instruction set ([] natively), or None
    and why there is no twin."""
    from toolchain.deploy import qemu

    if board.arch == platform.machine():
        return [], "native"
    if not board.qemu_cpu:  # profiles of Linux Arm boards must name one; other kinds have none to name
        return None, f"QEMU has no model of {board.name}'s CPU here ({board.arch}, no qemu_cpu)"
    try:
        prefix = qemu.emulator(board)
    except EdgelmError as exc:
        return None, exc.message
    sysroot = qemu.SYSROOTS[board.arch]
    if not Path(sysroot).is_dir():
        return None, f"{sysroot} is missing (Debian's libc6-{board.arch.replace('aarch64', 'arm64')}-cross)"
    return prefix, f"{prefix[0]} -cpu {board.qemu_cpu}"


class Twin:
    """The bundle's runner (``root``: the bundle folder the host built) started here with ``threads``
    threads, on stdio. ``serve`` sends one REQUEST and gathers the stream; ``close`` ends it."""

    def __init__(self, board: Board, root: Path, threads: int, *, model_sha256: str | None = None,
                 timeouts: Timeouts = TIMEOUTS):
        prefix, self.how = command(board)
        if prefix is None:
            raise DeviceError(f"no twin for {board.name}: {self.how}")
        root = root.resolve()  # it runs in its own folder: a relative path would name another
        cmd = [*prefix, str(root / "runner"), "--model", str(root / "model.pte"), "--serial", "-",
               "--threads", str(threads)]
        log.info("twin: %s", " ".join(cmd))
        self.log = root.parent / f".twin-{root.name}.log"
        with self.log.open("wb") as err:
            self._proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                          start_new_session=True)
        self._link = PipeTransport.of(self._proc, f"twin of {board.name}")
        try:
            self.session = BoardSession(self._link, timeouts, alive=self._alive)
            self.hello = self.session.wait_hello()
        except BaseException:
            self.close()
            raise
        if model_sha256 is not None and self.hello.model_sha256 != model_sha256:
            self.close()
            raise DeviceError(f"the twin serves program {self.hello.model_sha256[:12]}..., not the board's "
                              f"{model_sha256[:12]}...")

    def _alive(self) -> str | None:
        code = self._proc.poll()
        if code is None:
            return None
        tail = " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:]) if self.log.exists() else ""
        return f"the twin exited with status {code}" + (f": {tail}" if tail else "")

    def serve(self, request: protocol.Request) -> Collected:
        """The twin's stream for ``request`` exactly as sent to the board (flags included)."""
        try:
            return self.session.collect(request)
        except EdgelmError as exc:
            raise DeviceError(f"the twin could not serve the request: {exc}") from None

    def close(self) -> None:
        session = getattr(self, "session", None)  # None when the twin never said HELLO
        if session is not None:
            session.quit()
        self._link.close()

    def __enter__(self) -> Twin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
