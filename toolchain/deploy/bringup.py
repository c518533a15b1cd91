"""The one way a board is brought up, used by ``run``, ``flash``, the pytest plugin and the tests
(labgrid's strategies: the only place that knows the order).

    lock -> power on (a board with a power switch) -> clean what a cut upload left -> preflight (the
    board's facts against the bundle's needs) -> deploy into a folder of its own, verified on the
    board (a rollback: the previous release, verified) -> only now stop the runner left serving (and
    say so; a board-side service is held for a lease, not for good) -> switch ``current`` (files
    synced first) -> open the link -> start -> HELLO on the link, with the program's hash and the
    board's name -> confirm (a board that trusts keys records the release's security counter) ->
    serve -> tear down (QUIT, close, stop, power off what was off; or leave it serving)

Whatever ends a bring-up between the stop and the HELLO (a release that does not serve, an error,
Ctrl-C, SIGTERM), what was started is stopped, the release that was current is made current
again (``previous`` names again the one before it, never the release that failed), started again
and confirmed by its HELLO; ``flash`` leaves it serving, ``run`` leaves it serving only if it was
serving before. A failed flash never leaves the board without the release it had. What a SIGKILL
cannot unwind the board recovers by itself: the hold of its service is a lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from toolchain import interrupts
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
    security_counter: int = 0  # the board's security counter once this release was confirmed (its HELLO)


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
        try:
            runner.stop(lease_s=SWITCH_LEASE_S)  # the caller puts a release back and starts it
        except EdgelmError as exc:  # the error that stopped the start is the one to report
            log.warning("stopping the runner of %s on %s failed: %s", release.id, target.where, exc)
        raise


def stop_serving(target: Target, progress: Progress = no_progress, lease_s: float | None = None,
                 info: dict[str, Any] | None | bool = True) -> dict[str, Any] | None:
    """Stop a runner an earlier ``flash`` left serving, and say so (it is never stopped silently);
    what it recorded (None: nothing served). ``lease_s``: see ``RunnerControl.stop``. ``info``:
    what ``running()`` said just before, when the caller asked already."""
    runner = need_runner(target)
    if info is True:
        info = runner.running()
    assert info is None or isinstance(info, dict)
    if info is not None:
        progress("stop", f"the runner of {info.get('release') or 'an earlier release'} on {target.where}")
        log.info("stopping the runner left serving on %s (%s)", target.where, info)
    note = runner.stop(lease_s=lease_s)
    if note:
        log.info("%s", note)
    return info


def check_preflight(target: Target, bundle: Bundle, progress: Progress = no_progress, force: bool = False) -> None:
    """The target's preflight (when it has one): the board's facts against the bundle's needs; refuses
    with the first failing line before anything is sent or switched. ``force``: the refusal becomes a
    note (the user goes on knowing what the board will do with it: run out of memory, say). A
    release the board holds already (current or previous) needs no disk space: the disk check
    does not refuse it (a full board can always be flashed again with what it serves)."""
    if target.preflight is None:
        return
    from toolchain.deploy import preflight

    progress("preflight", f"{target.where}: arch, glibc, RAM, disk, serial device")
    checks = list(target.preflight(bundle))
    if any(c.name == "disk" and not c.ok for c in checks) and bundle.release_id in _on_board(target):
        checks = [dataclasses.replace(c, ok=True, line=f"{c.line}, and it holds release {bundle.release_id} already")
                  if c.name == "disk" else c for c in checks]
    try:
        preflight.require(checks)
    except preflight.PreflightFailed as exc:
        if not force:
            raise
        note = f"forced past the preflight's refusal: {exc.message}"
        log.warning("%s", note)
        target.notes.append(note)
        progress("preflight", note)


def _on_board(target: Target) -> set[str]:
    store = need_store(target)
    return {r.id for r in (store.current(), store.previous()) if r is not None}


def stage(target: Target, bundle: Bundle | None, progress: Progress = no_progress, force: bool = False) -> Release:
    """The release to make current, on the board and verified, not yet current: ``bundle`` after the
    preflight and a deploy, or (None) the previous release. Call it holding the target's lock.
    What an upload that failed or was cut left is removed first: its space counts again."""
    store = need_store(target)
    if bundle is not None:
        store.clean()
        check_preflight(target, bundle, progress, force)
        progress("flash", f"{target.where}")
        return store.deploy(bundle, activate=False, progress=progress)
    release = store.previous()
    if release is None:
        raise UsageError(f"{target.where} has no previous release to roll back to")
    progress("verify", f"release {release.id} on {target.where}")
    return release


# How long a service on the board stays held while we switch (stop -> switch -> start; a recovery
# also verifies the release it restores): past it, it serves its current release by itself.
SWITCH_LEASE_S = 120.0


@dataclass
class _Before:
    """What the board had before the switch: what to put back."""

    current: Release | None
    previous: Release | None
    serving: bool = False  # a runner an earlier flash left served (it is stopped for the switch)


@contextlib.contextmanager
def bring_up(target: Target, bundle: Bundle | None = None, *, rollback: bool = False, threads: int | None = None,
             keep_running: bool = False, open_transport: OpenTransport | None = None,
             timeouts: Timeouts | None = None, progress: Progress = no_progress,
             what: str = "run", force: bool = False) -> Iterator[BoardUp]:
    """Deploy ``bundle`` (or, with ``rollback``, take the previous release) and yield the board
    serving it. On exit the runner is told to quit and stopped, unless ``keep_running`` (``flash``),
    when only our end of the link is closed. If the release does not serve, or the bring-up is
    interrupted (Ctrl-C, SIGTERM) after the old runner was stopped, the release that was current
    is made current again and started again (see the module), and a DeviceError says what
    happened (an interrupt goes on as the KeyboardInterrupt it was)."""
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
            before = _Before(store.current(), store.previous())
            release = stage(target, bundle, progress, force)  # on the board, verified; the old runner still serves
            if bundle is None:
                store.verify(release)  # a rollback's release, before anything is stopped
            restore = before.current if before.current is not None and before.current.id != release.id else None
            serving = need_runner(target).running()
            before.serving = serving is not None
            phase = "stop"
            try:
                stop_serving(target, progress, lease_s=SWITCH_LEASE_S, info=serving)
                phase = "switch"
                progress("switch", f"{target.where}: current -> {release.id}")
                store.activate(release, verify=False)  # verified above; the files are synced before the switch
                phase = "serve"
                up = _serve(target, release, open_transport=open_transport, timeouts=timeouts, threads=threads,
                            progress=progress)
            except EdgelmError as exc:
                state = _recover(target, release, before, keep_running, open_transport, timeouts, threads, progress,
                                 phase=phase)
                if restore is None:
                    raise DeviceError(f"release {release.id} does not serve: {exc}"
                                      + (f"; {state}" if state else "")) from None
                raise DeviceError(f"release {release.id} does not serve ({exc}); rolled back to {restore.id}, "
                                  f"{state}") from None
            except BaseException:  # Ctrl-C, SIGTERM, SIGHUP (or a bug): the previous release is back, and serves
                _recover(target, release, before, keep_running, open_transport, timeouts, threads, progress,
                         phase=phase, interrupted=True)
                raise
            up.previous = restore
            up.booted = powered_here
            try:
                # It answered HELLO with its program: confirmed, so a board that trusts keys records its
                # security counter (MCUboot's moves up only for a confirmed image).
                up.security_counter = store.confirm(release)
                yield up
            finally:
                _tear_down(up, keep_running)
        finally:
            if powered_here and not keep_running and target.power is not None:
                progress("power", f"{target.where}: off again")
                target.power.off()


def _recover(target: Target, failed: Release, before: _Before, keep_running: bool,
             open_transport: OpenTransport | None, timeouts: Timeouts, threads: int | None, progress: Progress,
             phase: str, interrupted: bool = False) -> str:
    """After the switch to ``failed`` did not end serving (``phase``: the step it ended in): nothing
    of it runs, ``current`` and ``previous`` are as before, and the release that was current is
    started again and confirmed by its HELLO. It is left serving when ``keep_running``, or when it
    served before (a ``run``); otherwise it is stopped again, for good. A ``run`` that was
    interrupted does not wait for a HELLO it would stop at once. Returns what became of it (for
    the error); never raises an EdgelmError (the caller's error is the one to report)."""
    store, runner = need_store(target), need_runner(target)
    old = before.current
    leave = keep_running or (before.serving and runner.keeps_serving)
    if phase != "serve":  # _serve stops what it started; a stop or a switch that failed may have left anything
        try:
            note = runner.stop(lease_s=SWITCH_LEASE_S)
            if note:
                log.info("%s", note)
        except EdgelmError as exc:
            log.warning("stopping the runner on %s failed: %s", target.where, exc)
    try:
        now, prev = store.current(), store.previous()
        if _id(now) != _id(old) or _id(prev) != _id(before.previous):
            with interrupts.deferred():  # both links, or a second Ctrl-C waits for them
                store.restore(old, before.previous)
    except EdgelmError as exc:
        return f"but {old.id if old else 'the state before'} cannot be made current again: {exc}"
    if old is None:
        return "nothing was current before it, and nothing is now"
    if old.id == failed.id and phase == "serve" and not interrupted:
        return _stopped(runner, leave, "")  # the same release, which just did not serve: it would not now
    if interrupted and not leave:
        return _stopped(runner, leave, "current again")
    try:
        progress("start", f"runner {old.id} on {target.where} again")
        up = _serve(target, old, open_transport=open_transport, timeouts=timeouts, threads=threads,
                    progress=no_progress)
    except EdgelmError as exc:
        return _stopped(runner, leave, f"current again, but it does not serve either: {exc}")
    try:
        _tear_down(up, leave)
    except EdgelmError as exc:
        log.warning("closing the link of %s on %s: %s", old.id, target.where, exc)
    return "serving again" if leave else "current again"


def _id(release: Release | None) -> str | None:
    return release.id if release is not None else None


def _stopped(runner: Any, leave: bool, state: str) -> str:
    """``state``, once a runner that is not to be left serving is stopped for good (its lease ended)."""
    if not leave:
        try:
            runner.stop()
        except EdgelmError as exc:
            log.warning("stopping the runner failed: %s", exc)
    return state


def _tear_down(up: BoardUp, keep_running: bool) -> None:
    runner = need_runner(up.target)
    try:
        if not keep_running:
            up.session.quit()
    finally:
        up.session.transport.close()
        if not keep_running:
            runner.stop()
