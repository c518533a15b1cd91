"""The one bring-up, on a fake target whose every step can fail (an error) or be interrupted (Ctrl-C,
SIGTERM): whatever happens, a release is current afterwards, it is the one expected, ``previous``
never names a release that failed, and it serves when it must (``flash``: always; ``run``: when it
served before). Also the order of the steps: nothing that served is stopped before the new release
is on the board and verified, and nothing but the switch comes between the stop and the start."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from toolchain import boards, interrupts
from toolchain.deploy import bringup, local, preflight
from toolchain.deploy.base import Release, Target
from toolchain.errors import DeviceError, UsageError
from toolchain.link import framing, protocol
from toolchain.link.session import Timeouts
from toolchain.link.transport import Deadline

BOARD = boards.get("host")


def _rel(name: str) -> Release:
    sha = hashlib.sha256(name.encode()).hexdigest()
    return Release(f"r-{sha[:16]}", f"/fake/releases/{name}", BOARD.name, sha)


@dataclasses.dataclass
class Fault:
    step: str  # the fake's method that fails
    exc: type[BaseException]
    call: int = 1  # at its n-th call


@dataclasses.dataclass
class FakeBundle:
    """What the bring-up reads of a bundle (its id); the fake store maps it to a release."""

    name: str

    @property
    def release_id(self) -> str:
        return _rel(self.name).id


class Board:
    """The fake board: releases on it, the links, what runs. ``good``: releases that say HELLO."""

    def __init__(self, good: set[str], fault: Fault | None = None):
        self.good = good
        self.fault = fault
        self.releases: dict[str, Release] = {}
        self.current: str | None = None
        self.previous: str | None = None
        self.running: str | None = None  # the release whose runner runs
        self.events: list[tuple[str, str]] = []
        self.calls: dict[str, int] = {}

    def step(self, name: str, detail: str = "") -> None:
        self.events.append((name, detail))
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.fault is not None and self.fault.step == name and self.fault.call == self.calls[name]:
            exc = self.fault.exc
            raise exc(15) if exc is interrupts.Terminated else exc(f"{name} failed (injected)")

    def serving(self) -> str | None:
        """The release that serves now: its runner runs and it says HELLO."""
        return self.running if self.running is not None and self.running in self.good else None


NAMES = ("a", "b", "c", "z", "bad")


class FakeStore:
    where = "fake:host"

    def __init__(self, board: Board):
        self.b = board

    def _get(self, rid: str | None) -> Release | None:
        return None if rid is None else self.b.releases[rid]

    def deploy(self, bundle: Any, *, activate: bool = True, progress: Any = None) -> Release:
        self.b.step("deploy", bundle.name)
        release = _rel(bundle.name)
        self.b.releases[release.id] = release
        if activate:
            self.activate(release)
        return release

    def current(self) -> Release | None:
        self.b.step("current")
        return self._get(self.b.current)

    def previous(self) -> Release | None:
        self.b.step("previous")
        return self._get(self.b.previous)

    def verify(self, release: Release) -> None:
        self.b.step("verify", release.id)

    def activate(self, release: Release, *, verify: bool = True) -> None:
        if verify:
            self.verify(release)
        self.b.step("activate", release.id)
        if self.b.current is not None and self.b.current != release.id:
            self.b.previous = self.b.current
        self.b.current = release.id

    def restore(self, current: Release | None, previous: Release | None) -> None:
        if current is not None:
            self.verify(current)
        self.b.step("restore", f"{current and current.id} {previous and previous.id}")
        self.b.current = current.id if current else None
        self.b.previous = previous.id if previous else None

    def clean(self) -> None:
        self.b.step("clean")

    def trust(self, public_key_pem: bytes) -> str:
        raise NotImplementedError

    def confirm(self, release: Release) -> int:
        return 0  # trusts no key: nothing to record


class FakeTransport:
    name = "fake"

    def __init__(self, board: Board):
        self.b = board
        self.sent = False
        self.closed = False

    def read(self, deadline: Deadline) -> bytes:
        rid = self.b.running
        if rid is not None and rid in self.b.good and not self.sent:
            self.sent = True
            try:
                self.b.step("hello", rid)
            except DeviceError:
                return b""  # an error there: the HELLO never comes
            release = self.b.releases[rid]
            hello = protocol.Hello(protocol.PROTOCOL_VERSION, "fake", BOARD.name, release.model_sha256, 64, 259, 1, 1.0)
            return framing.encode(protocol.HELLO, 0, hello.pack())
        return b""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeRunner:
    """Runner control and link. A release not in ``good`` starts and exits at once (no HELLO)."""

    keeps_serving = True
    board_device = "/dev/fake"

    def __init__(self, board: Board):
        self.b = board
        self.leases: list[float | None] = []

    def connect(self) -> str:
        self.b.step("connect")
        return "fake-port"

    def open(self, port: str) -> FakeTransport:
        self.b.step("open")
        return FakeTransport(self.b)

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        self.b.step("start", release.id)
        self.b.running = release.id

    def alive(self) -> str | None:
        if self.b.running is None:
            return "not started"
        return None if self.b.running in self.b.good else "runner exited with status 1"

    def stop(self, *, lease_s: float | None = None) -> str | None:
        self.b.step("stop", "" if self.b.running is None else self.b.running)
        self.leases.append(lease_s)
        self.b.running = None
        return None

    def running(self) -> dict[str, Any] | None:
        self.b.step("running")
        return {"release": self.b.running} if self.b.running is not None else None


def fake_target(tmp_path: Path, board: Board) -> Target:
    runner = FakeRunner(board)
    return Target(kind="fake", spec="fake", board=BOARD, state=tmp_path / "state", store=FakeStore(board),
                  runner=runner, link=runner, timeouts=Timeouts(hello_s=0.5))


def on_board(board: Board, current: str, previous: str | None, serving: bool) -> None:
    """``current`` deployed and current (``previous`` before it); its runner running if ``serving``."""
    for name in filter(None, (current, previous)):
        board.releases[_rel(name).id] = _rel(name)
    board.current = _rel(current).id
    board.previous = _rel(previous).id if previous else None
    board.running = _rel(current).id if serving else None


def flash(target: Target, name: str, **kw: Any) -> None:
    with bringup.bring_up(target, FakeBundle(name), keep_running=True, what="flash", **kw):
        pass


def run(target: Target, name: str, **kw: Any) -> None:
    with bringup.bring_up(target, FakeBundle(name), **kw):
        pass


def names(board: Board, *rids: str | None) -> tuple[str | None, ...]:
    by_id = {_rel(n).id: n for n in NAMES}
    return tuple(by_id.get(r) if r is not None else None for r in rids)


# Every step, failing or interrupted ----------------------------------------------------------------

STEPS = ["current", "previous", "clean", "deploy", "running", "stop", "activate", "connect", "open", "start",
         "hello"]
FAULTS = [DeviceError, KeyboardInterrupt, interrupts.Terminated]


@pytest.mark.parametrize("exc", FAULTS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("step", STEPS)
def test_a_flash_that_fails_or_is_interrupted_at_any_step_leaves_the_old_release_current_and_serving(
        tmp_path, step, exc):
    board = Board(good={_rel("a").id, _rel("b").id, _rel("z").id}, fault=Fault(step, exc))
    on_board(board, "a", "z", serving=True)
    target = fake_target(tmp_path, board)
    with pytest.raises((DeviceError, KeyboardInterrupt)):
        flash(target, "b")
    assert names(board, board.current, board.previous) == ("a", "z"), board.events
    assert names(board, board.serving()) == ("a",), board.events  # started again, and it said HELLO
    if step not in ("current", "previous", "clean", "deploy", "running"):  # it was stopped: confirmed again
        assert ("hello", _rel("a").id) in board.events, board.events


@pytest.mark.parametrize("exc", FAULTS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("served", [True, False], ids=["was serving", "was not serving"])
def test_a_run_that_fails_or_is_interrupted_leaves_the_old_release_current_and_as_it_was(tmp_path, step, exc,
                                                                                         served):
    board = Board(good={_rel("a").id, _rel("b").id, _rel("z").id}, fault=Fault(step, exc))
    on_board(board, "a", "z", serving=served)
    target = fake_target(tmp_path, board)
    with pytest.raises((DeviceError, KeyboardInterrupt)):
        run(target, "b")
    assert names(board, board.current, board.previous) == ("a", "z"), board.events
    assert names(board, board.serving()) == (("a",) if served else (None,)), board.events


@pytest.mark.parametrize("served", [True, False], ids=["was serving", "was not serving"])
def test_a_release_that_does_not_serve_is_rolled_back_and_previous_still_names_the_one_before(tmp_path, served):
    board = Board(good={_rel("a").id, _rel("z").id})
    on_board(board, "a", "z", serving=served)
    target = fake_target(tmp_path, board)
    with pytest.raises(DeviceError, match=r"does not serve \(.*\); rolled back to r-[0-9a-f]{16}, serving again"):
        flash(target, "bad")
    assert names(board, board.current, board.previous, board.serving()) == ("a", "z", "a")
    with pytest.raises(DeviceError, match=r"rolled back to r-[0-9a-f]{16}, (serving|current) again"):
        run(target, "bad")
    assert names(board, board.current, board.previous) == ("a", "z")
    # a flash left "a" serving above; the run found it serving and leaves it so
    assert names(board, board.serving()) == ("a",)


def test_a_run_of_a_release_that_does_not_serve_leaves_nothing_running_that_did_not_run(tmp_path):
    board = Board(good={_rel("a").id, _rel("z").id})
    on_board(board, "a", "z", serving=False)
    with pytest.raises(DeviceError, match=r"rolled back to r-[0-9a-f]{16}, current again"):
        run(fake_target(tmp_path, board), "bad")
    assert names(board, board.current, board.previous, board.running) == ("a", "z", None)
    assert ("hello", _rel("a").id) in board.events  # confirmed before it was stopped again


def test_a_rollback_that_fails_puts_back_what_was_current_and_previous(tmp_path):
    board = Board(good={_rel("a").id})
    on_board(board, "a", "bad", serving=True)
    target = fake_target(tmp_path, board)
    with pytest.raises(DeviceError, match="rolled back to"):
        with bringup.bring_up(target, rollback=True, keep_running=True, what="flash"):
            pass
    assert names(board, board.current, board.previous, board.serving()) == ("a", "bad", "a")
    assert board.events.index(("verify", _rel("bad").id)) < board.events.index(("stop", _rel("a").id))


def test_the_first_flash_that_fails_leaves_nothing_current(tmp_path):
    board = Board(good=set())
    target = fake_target(tmp_path, board)
    with pytest.raises(DeviceError, match="nothing was current before it, and nothing is now"):
        flash(target, "bad")
    assert (board.current, board.previous, board.running) == (None, None, None)


# The order ----------------------------------------------------------------------------------------------

def test_the_old_runner_is_stopped_only_after_the_new_release_is_on_the_board_and_just_before_the_switch(
        tmp_path):
    board = Board(good={_rel("a").id, _rel("b").id})
    on_board(board, "a", None, serving=True)
    target = fake_target(tmp_path, board)
    flash(target, "b")
    steps = [e for e, _ in board.events if e not in ("current", "previous", "running")]
    assert steps == ["clean", "deploy", "stop", "activate", "connect", "open", "start", "hello"], board.events
    assert ("activate", _rel("b").id) in board.events and ("verify", _rel("b").id) not in board.events
    assert target.runner.leases[0] == bringup.SWITCH_LEASE_S  # a service on the board is held for a lease only
    assert names(board, board.current, board.previous, board.serving()) == ("b", "a", "b")


def test_a_rollback_is_verified_before_anything_is_stopped(tmp_path):
    board = Board(good={_rel("a").id, _rel("z").id})
    on_board(board, "a", "z", serving=True)
    with bringup.bring_up(fake_target(tmp_path, board), rollback=True, keep_running=True, what="flash"):
        pass
    steps = [e for e, _ in board.events if e not in ("current", "previous", "running")]
    assert steps.index("verify") < steps.index("stop") < steps.index("activate") < steps.index("start")
    assert names(board, board.current, board.previous, board.serving()) == ("z", "a", "z")


def test_a_run_stops_its_runner_for_good_at_the_end(tmp_path):
    board = Board(good={_rel("a").id, _rel("b").id})
    on_board(board, "a", None, serving=False)
    target = fake_target(tmp_path, board)
    run(target, "b")
    assert target.runner.leases == [bringup.SWITCH_LEASE_S, None]  # held for the switch only; for good at the end
    assert board.running is None


def test_an_interrupted_run_that_served_nothing_does_not_wait_for_a_hello(tmp_path):
    board = Board(good={_rel("a").id, _rel("b").id}, fault=Fault("hello", KeyboardInterrupt))
    on_board(board, "a", None, serving=False)
    target = fake_target(tmp_path, board)
    with pytest.raises(KeyboardInterrupt):
        run(target, "b")
    assert [e for e in board.events if e[0] == "start"] == [("start", _rel("b").id)]
    assert names(board, board.current, board.previous, board.running) == ("a", None, None)
    assert target.runner.leases[-1] is None  # stopped for good: a board-side service is not left to resume


# A real store: previous, the syncs, what a failed upload left, the disk check -----------------------------

@pytest.fixture
def local_target(tmp_path):
    """The local target's real store, with the fake runner and link."""
    target = local.create("local", BOARD, tmp_path / "targets")
    board = Board(good=set())
    runner = FakeRunner(board)
    target.runner = target.link = runner
    target.preflight = None
    target.timeouts = Timeouts(hello_s=0.5)
    return target, board


def _good(board: Board, bundle) -> None:
    board.good.add(bundle.release_id)
    board.releases[bundle.release_id] = Release(bundle.release_id, "", BOARD.name, bundle.files["model.pte"])


def test_previous_never_names_a_release_that_failed(tmp_path, fakes, local_target):
    target, board = local_target
    a = fakes.write_bundle(tmp_path / "a", runner=b"#!/bin/sh\necho a\n")
    b = fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\necho b\n")
    bad = fakes.write_bundle(tmp_path / "bad", runner=b"#!/bin/sh\nexit 1\n")
    for bundle in (a, b):
        _good(board, bundle)
    board.releases[bad.release_id] = Release(bad.release_id, "", BOARD.name, bad.files["model.pte"])
    for bundle in (a, b):
        with bringup.bring_up(target, bundle, keep_running=True, what="flash"):
            pass
    assert (target.store.current().id, target.store.previous().id) == (b.release_id, a.release_id)
    with pytest.raises(DeviceError, match="rolled back to"):
        with bringup.bring_up(target, bad, keep_running=True, what="flash"):
            pass
    assert (target.store.current().id, target.store.previous().id) == (b.release_id, a.release_id)
    assert board.serving() == b.release_id
    with pytest.raises(KeyboardInterrupt):  # interrupted while it waits for the HELLO of a good release
        board.fault = Fault("hello", KeyboardInterrupt, call=board.calls.get("hello", 0) + 1)
        with bringup.bring_up(target, a, keep_running=True, what="flash"):
            pass
    assert (target.store.current().id, target.store.previous().id) == (b.release_id, a.release_id)
    assert board.serving() == b.release_id


def test_every_release_file_and_its_folders_are_synced_before_current_names_it(tmp_path, fakes, local_target,
                                                                               monkeypatch):
    target, board = local_target
    bundle = fakes.write_bundle(tmp_path / "a")
    _good(board, bundle)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *a, **kw):
        events.append(("rename", f"{src} -> {dst}"))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with bringup.bring_up(target, bundle, keep_running=True, what="flash"):
        pass
    root = target.state
    release = root / "releases" / bundle.release_id
    switch = next(i for i, (kind, what) in enumerate(events) if kind == "rename" and what.endswith(f"{root}/current"))
    synced_before = {what for kind, what in events[:switch] if kind == "fsync"}
    for name in [*bundle.files, "bundle.json"]:
        assert str(release / name) in synced_before, events
    assert {str(release), str(root / "releases")} <= synced_before, events
    assert ("fsync", str(root)) in events[switch:], events  # the switch itself, after it


def test_a_failed_upload_is_cleaned_before_the_preflight_counts_the_space(tmp_path, fakes, local_target):
    target, board = local_target
    bundle = fakes.write_bundle(tmp_path / "a")
    _good(board, bundle)
    left = target.state / "releases" / ".incoming-r-0123456789abcdef"
    left.mkdir(parents=True)
    (left / "model.pte").write_bytes(b"\0" * 4096)
    seen = []
    target.preflight = lambda b: seen.append(left.exists()) or []
    with bringup.bring_up(target, bundle, keep_running=True, what="flash"):
        pass
    assert seen == [False]


def test_a_full_board_is_not_refused_the_release_it_holds(tmp_path, fakes, local_target):
    target, board = local_target
    bundle = fakes.write_bundle(tmp_path / "a")
    other = fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\necho b\n")
    _good(board, bundle)
    _good(board, other)
    with bringup.bring_up(target, bundle, keep_running=True, what="flash"):
        pass
    full = preflight.Check("disk", False, "disk: the release needs 9,999 bytes; /data has 10 free",
                           kind=preflight.KIND_CAPACITY)
    target.preflight = lambda b: [preflight.Check("arch", True, "architecture: ok"), full]
    with bringup.bring_up(target, bundle, keep_running=True, what="flash"):  # the current release: flashed again
        pass
    assert board.serving() == bundle.release_id
    with pytest.raises(preflight.DoesNotFit, match="has 10 free"):  # another release still needs the space
        with bringup.bring_up(target, other, keep_running=True, what="flash"):
            pass
    assert board.serving() == bundle.release_id


def test_a_store_restores_current_and_previous_and_removes_what_was_not_there(tmp_path, fakes, local_target):
    target, _ = local_target
    store = target.store
    a = store.deploy(fakes.write_bundle(tmp_path / "a"))
    b = store.deploy(fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\necho b\n"))
    store.restore(a, None)
    assert store.current().id == a.id and store.previous() is None
    store.restore(b, a)
    assert (store.current().id, store.previous().id) == (b.id, a.id)
    store.restore(None, None)
    assert store.current() is None and not (target.state / "current").is_symlink()
    with pytest.raises(UsageError):
        store.restore(dataclasses.replace(a, id="r-0000000000000000"), None)
