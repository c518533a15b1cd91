"""The one way a board is brought up, used by ``run``, ``flash``, the pytest plugin and the tests
(labgrid's strategies: the only place that knows the order).

    lock -> power on (a board with a power switch) -> preflight (the board's facts against the
    bundle's needs) -> deploy into a folder of its own, verified on the board -> stop a runner left
    serving (and say so) -> switch ``current`` (verified again) -> open the link -> start -> HELLO on
    the link, with the program's hash and the board's name -> serve -> tear down (QUIT, close, stop,
    power off what was off; or leave it serving)

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
from toolchain.deploy.base import Progress, Release, Target, need_link, need_runner, need_store, no_progress
from toolchain.errors import DeviceError, EdgelmError, UsageError
from toolchain.link import protocol
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import Transport

log = logging.getLogger(__name__)

OpenTransport = Callable[[str], Transport]


@dataclass
class BoardUp:
    """A board serving a verified release, with an open session on its link."""

    target: Target
    release: Release
    session: BoardSession
    hello: protocol.Hello
    port: str
    previous: Release | None = None  # what was current before (None: nothing, or the same release)
    booted: bool = False  # the board was powered on for this bring-up (and is powered off after it)


def _serve(target: Target, release: Release, *, open_transport: OpenTransport | None, timeouts: Timeouts,
           threads: int | None, progress: Progress) -> BoardUp:
    """Start ``release`` and wait for its HELLO on the link. On any failure nothing is left running."""
    runner, link = need_runner(target), need_link(target)
    opener = open_transport or link.open
    transport: Transport | None = None
    try:
        port = link.connect()
        transport = opener(port)  # our end is open before the runner starts: it drops earlier input
        progress("start", f"runner {release.id} on {target.where}")
        runner.start(release, device=link.board_device, threads=threads)
        session = BoardSession(transport, timeouts, alive=runner.alive, reopen=lambda: opener(port))
        progress("link", f"waiting for HELLO on {port}")
        hello = session.wait_hello()
        if hello.model_sha256 != release.model_sha256:
            raise DeviceError(f"the board runs program {hello.model_sha256[:12]}..., not the deployed "
                              f"{release.model_sha256[:12]}...")
        if hello.board != target.board.name:
            raise DeviceError(f"the runner says it was built for board {hello.board!r}, not {target.board.name!r}")
        return BoardUp(target, release, session, hello, port)
    except BaseException:
        if transport is not None:
            transport.close()
        runner.stop()
        raise


def stop_serving(target: Target, progress: Progress = no_progress) -> None:
    """Stop a runner an earlier ``flash`` left serving, and say so (it is never stopped silently)."""
    runner = need_runner(target)
    info = runner.running()
    if info is not None:
        progress("stop", f"the runner of {info.get('release') or 'an earlier release'} on {target.where}")
        log.info("stopping the runner left serving on %s (%s)", target.where, info)
    note = runner.stop()
    if note:
        log.info("%s", note)


def check_preflight(target: Target, bundle: Bundle, progress: Progress = no_progress, force: bool = False) -> None:
    """The target's preflight (when it has one): the board's facts against the bundle's needs; refuses
    with the first failing line before anything is sent or switched. ``force``: the refusal becomes a
    note (the user goes on knowing what the board will do with it: run out of memory, say)."""
    if target.preflight is None:
        return
    from toolchain.deploy import preflight

    progress("preflight", f"{target.where}: arch, glibc, RAM, disk, serial device")
    try:
        preflight.require(target.preflight(bundle))
    except preflight.PreflightFailed as exc:
        if not force:
            raise
        note = f"forced past the preflight's refusal: {exc.message}"
        log.warning("%s", note)
        target.notes.append(note)
        progress("preflight", note)


def stage(target: Target, bundle: Bundle | None, progress: Progress = no_progress, force: bool = False) -> Release:
    """The release to make current, on the board and verified, not yet current: ``bundle`` after the
    preflight and a deploy, or (None) the previous release. Call it holding the target's lock."""
    store = need_store(target)
    if bundle is not None:
        check_preflight(target, bundle, progress, force)
        progress("flash", f"{target.where}")
        return store.deploy(bundle, activate=False, progress=progress)
    release = store.previous()
    if release is None:
        raise UsageError(f"{target.where} has no previous release to roll back to")
    progress("verify", f"release {release.id} on {target.where}")
    return release


@contextlib.contextmanager
def bring_up(target: Target, bundle: Bundle | None = None, *, rollback: bool = False, threads: int | None = None,
             keep_running: bool = False, open_transport: OpenTransport | None = None,
             timeouts: Timeouts | None = None, progress: Progress = no_progress,
             what: str = "run", force: bool = False) -> Iterator[BoardUp]:
    """Deploy ``bundle`` (or, with ``rollback``, take the previous release) and yield the board
    serving it. On exit the runner is told to quit and stopped, unless ``keep_running`` (``flash``),
    when only our end of the link is closed. If the release does not serve, the one that was
    current is made current and started again (and stopped at the end unless ``keep_running``),
    and a DeviceError says what happened."""
    if (bundle is None) == (not rollback):
        raise UsageError("bring up either a bundle or the previous release (rollback)")
    store = need_store(target)
    need_runner(target)
    need_link(target)
    timeouts = timeouts or target.timeouts
    with target.lock(what):
        # A board with a power switch (an emulated one that boots) is switched on first; one that
        # was off before is switched off again after a run (flash leaves it serving).
        powered_here = target.power.on(progress) if target.power is not None else False
        try:
            previous = store.current()
            release = stage(target, bundle, progress, force)
            stop_serving(target, progress)
            store.activate(release)  # verifies the release's files on the board first; refuses if one does not
            restore = previous if previous is not None and previous.id != release.id else None
            try:
                up = _serve(target, release, open_transport=open_transport, timeouts=timeouts, threads=threads,
                            progress=progress)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: what we started is stopped, the previous is current
                if restore is not None:
                    store.activate(restore)
                raise
            except EdgelmError as exc:
                if restore is None:
                    raise DeviceError(f"release {release.id} does not serve: {exc}") from None
                state = _restart_previous(target, restore, keep_running, open_transport, timeouts, threads)
                raise DeviceError(f"release {release.id} does not serve ({exc}); rolled back to {restore.id}, "
                                  f"{state}") from None
            up.previous = restore
            up.booted = powered_here
            try:
                yield up
            finally:
                _tear_down(up, keep_running)
        finally:
            if powered_here and not keep_running and target.power is not None:
                progress("power", f"{target.where}: off again")
                target.power.off()


def _restart_previous(target: Target, previous: Release, keep_running: bool, open_transport: OpenTransport | None,
                      timeouts: Timeouts, threads: int | None) -> str:
    try:
        need_store(target).activate(previous)
    except EdgelmError as exc:
        return f"but it cannot be made current again: {exc}"
    try:
        up = _serve(target, previous, open_transport=open_transport, timeouts=timeouts, threads=threads,
                    progress=no_progress)
    except EdgelmError as exc:
        return f"current again, but it does not serve either: {exc}"
    _tear_down(up, keep_running)
    return "serving again" if keep_running else "current again"


def _tear_down(up: BoardUp, keep_running: bool) -> None:
    runner = need_runner(up.target)
    try:
        if not keep_running:
            up.session.quit()
    finally:
        up.session.transport.close()
        if not keep_running:
            runner.stop()
