"""The one way a board is brought up, used by ``run``, ``flash``, the pytest plugin and the tests
(labgrid's strategies: the only place that knows the order).

    lock -> deploy (verified) -> open the link -> start -> HELLO on the link, with the program's
    hash and the board's name -> serve -> tear down (QUIT, close, stop; or leave it running)

When the new release does not come up, the runner is stopped, the previous release is made
current again and started, and the error says so: a failed flash never leaves the board without
the release it had.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from toolchain.bundle.package import Bundle
from toolchain.deploy.base import Release, Target
from toolchain.errors import DeviceError, EdgelmError
from toolchain.link import ports, protocol
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import Transport

log = logging.getLogger(__name__)

Progress = Callable[[str, str], None]
OpenTransport = Callable[[str], Transport]


def _noop(step: str, detail: str) -> None:
    pass


def serial_for(baud: int) -> OpenTransport:
    """Opens the host's end of a target's link; a ``usb:VID:PID[:SERIAL]`` port is resolved on every
    open, so the session's reopen after a board reset finds the adapter under its new name."""
    return lambda port: ports.open_port(port, baud)


@dataclass
class BoardUp:
    """A board serving a verified release, with an open session on its link."""

    target: Target
    release: Release
    session: BoardSession
    hello: protocol.Hello
    port: str


def timeouts_for(target: Target) -> Timeouts:
    """Deadlines by target: an emulated CPU is tens of times slower than the board it stands for."""
    slow = target.emulated
    return Timeouts(first_token_s=120.0 if slow else 60.0, token_s=30.0 if slow else 10.0)


def _serve(target: Target, release: Release, *, expect_sha: str, open_transport: OpenTransport,
           timeouts: Timeouts, threads: int | None, progress: Progress) -> BoardUp:
    """Start ``release`` and wait for its HELLO on the link. On any failure nothing is left running."""
    transport: Transport | None = None
    try:
        port = target.link()
        transport = open_transport(port)  # our end is open before the runner starts: it drops earlier input
        progress("start", f"runner {release.id} on {target.name}:{target.board.name}")
        target.start(threads=threads)
        session = BoardSession(transport, timeouts, alive=target.alive, reopen=lambda: open_transport(port))
        progress("link", f"waiting for HELLO on {port}")
        hello = session.wait_hello()
        if hello.model_sha256 != expect_sha:
            raise DeviceError(f"the board runs program {hello.model_sha256[:12]}..., not the deployed "
                              f"{expect_sha[:12]}...")
        if hello.board != target.board.name:
            raise DeviceError(f"the runner says it was built for board {hello.board!r}, not {target.board.name!r}")
        return BoardUp(target, release, session, hello, port)
    except BaseException:
        if transport is not None:
            transport.close()
        target.stop()
        raise


@contextlib.contextmanager
def bring_up(target: Target, bundle: Bundle, *, threads: int | None = None, keep_running: bool = False,
             open_transport: OpenTransport | None = None, timeouts: Timeouts | None = None,
             progress: Progress = _noop, what: str = "run") -> Iterator[BoardUp]:
    """Deploy ``bundle`` to ``target`` and yield the board serving it. On exit the runner is told to
    quit and stopped, unless ``keep_running`` (``flash``), when only our end of the link is closed.
    If the new release does not serve, the previous one is made current and started again (and
    stopped at the end unless ``keep_running``), and a DeviceError says what happened."""
    open_transport = open_transport or serial_for(target.board.baud)
    timeouts = timeouts or timeouts_for(target)
    expect_sha = bundle.info["model_sha256"]
    with target.lock(what):
        progress("flash", f"{target.name}:{target.board.name}")
        previous = target.current()
        release = target.deploy(bundle)
        try:
            up = _serve(target, release, expect_sha=expect_sha, open_transport=open_transport, timeouts=timeouts,
                        threads=threads, progress=progress)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: what we started is stopped; the previous stays current
            if previous is not None and previous.id != release.id:
                target.activate(previous)
            raise
        except EdgelmError as exc:
            if previous is None or previous.id == release.id:
                raise DeviceError(f"release {release.id} does not serve: {exc}") from None
            target.activate(previous)
            state = _restart_previous(target, previous, keep_running, open_transport, timeouts, threads)
            raise DeviceError(f"release {release.id} does not serve ({exc}); rolled back to {previous.id}, "
                              f"{state}") from None
        try:
            yield up
        finally:
            _tear_down(up, keep_running)


def _restart_previous(target: Target, previous: Release, keep_running: bool, open_transport: OpenTransport,
                      timeouts: Timeouts, threads: int | None) -> str:
    manifest_sha = _release_program_sha(previous)
    try:
        up = _serve(target, previous, expect_sha=manifest_sha, open_transport=open_transport, timeouts=timeouts,
                    threads=threads, progress=_noop)
    except EdgelmError as exc:
        return f"current again, but it does not serve either: {exc}"
    _tear_down(up, keep_running)
    return "serving again" if keep_running else "current again"


def _release_program_sha(release: Release) -> str:
    from toolchain.bundle.package import read_bundle

    return read_bundle(release.path).info["model_sha256"]


def _tear_down(up: BoardUp, keep_running: bool) -> None:
    try:
        if not keep_running:
            up.session.quit()
    finally:
        up.session.transport.close()
        if not keep_running:
            up.target.stop()

