"""A board in a labgrid farm: ``labgrid://[HOST:PORT/]PLACE`` (the coordinator at HOST:PORT, else
``$LG_COORDINATOR``, else 127.0.0.1:20408).

For as long as a job holds the target's lock, edgelm holds the place: it acquires it through the
coordinator, reads the resources its exporters publish, and releases it when the job ends, on
failure and on Ctrl-C too. The job that acquired the place says so in the place's tags (its token,
pid, process start time and since when: ``edgelm_job``...), so that another job of the same user on
the same host (another --workdir, another terminal) is refused instead of adopting a place it would
lose when the first job releases it; a place whose job is gone (its pid names no such process) is
taken over, and released at the end. A place the user acquired by hand (``labgrid-client acquire``,
no such tags) is used and left acquired. Inside the place the board's own lock is taken (the ssh://
target's :class:`toolchain.deploy.ssh.BoardLock`). The place must export

    a NetworkService      the board's SSH login: releases are deployed, verified and started over it
                          (:mod:`toolchain.deploy.ssh`, the runner serving on the board's UART)
    a NetworkSerialPort   the board's UART, exported by ser2net: the framed link, opened as
                          rfc2217://HOST:PORT
    a NetworkPowerPort    (optional) its power switch: a board that is off is switched on, one that
                          does not answer is power-cycled, before anything is deployed

Everything a coordinator publishes is text from another machine: a host, a port, a user name and a
power model are accepted only in their plain forms (:func:`resources_from`), and nothing else of it
reaches a command line or a path. The labgrid client is imported only here, and only when a farm is
used (``pip install labgrid``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import interrupts
from toolchain.boards import Board
from toolchain.bundle.package import Bundle
from toolchain.deploy import lock as lock_mod
from toolchain.deploy import ssh as ssh_target
from toolchain.deploy.base import Progress, Release, Target, TargetOptions, no_progress
from toolchain.deploy.sshclient import SshSpec
from toolchain.errors import DeviceError, EdgelmError, UsageError
from toolchain.link import ports
from toolchain.link.session import Timeouts
from toolchain.link.transport import Deadline, Transport

log = logging.getLogger(__name__)

SCHEME = "labgrid://"
DEFAULT_COORDINATOR = "127.0.0.1:20408"
SERIAL_WAIT_S = 20.0  # the exporter starts ser2net once the place is acquired, then publishes its port
BOOT_TIMEOUT_S = 180.0  # a board switched on (or cycled) answers on SSH within this
ANSWER_TIMEOUT_S = 10  # a board that is on but does not let us in within this is cycled
POWER_DELAY_S = 2.0  # off for this long in a cycle
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # a place, a power model, an exporter name
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_MODEL = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
_URL_HOST = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?(/[A-Za-z0-9._~{}/-]*)?\Z")
# The tags a job sets on the place it acquired (labgrid's tag keys: [a-z][a-z0-9_]+; values digits and hex).
TAG_JOB, TAG_PID, TAG_START, TAG_SINCE = "edgelm_job", "edgelm_pid", "edgelm_start", "edgelm_since"
JOB_TAGS = (TAG_JOB, TAG_PID, TAG_START, TAG_SINCE)
TAG_GRACE_S = 10.0  # a place this user acquired so recently, without a job's tags yet, may be a job's...
TAG_WAIT_S = 2.0  # ...whose tags are waited for this long before it is taken for one acquired by hand
_JOB = secrets.token_hex(8)  # this process: the job whose places carry this token
HINT = "labgrid://PLACE or labgrid://HOST:PORT/PLACE (the coordinator; default $LG_COORDINATOR, else 127.0.0.1:20408)"


@dataclass(frozen=True)
class PlaceSpec:
    coordinator: str  # HOST:PORT
    place: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.coordinator}/{self.place}"

    @classmethod
    def parse(cls, text: str, env: Mapping[str, str] | None = None) -> PlaceSpec:
        env = os.environ if env is None else env
        if not text.startswith(SCHEME):
            raise UsageError(f"bad labgrid target {text[:80]!r}: it does not start with {SCHEME}", hint=HINT)
        rest = text[len(SCHEME):]
        coordinator, _, place = rest.rpartition("/")
        if not _NAME.match(place):
            raise UsageError(f"bad labgrid target {text[:80]!r}: the place {place[:64]!r} is not a place name "
                             "(letters, digits, '.', '_', '-')", hint=HINT)
        given = bool(coordinator)
        coordinator = coordinator or env.get("LG_COORDINATOR", "") or DEFAULT_COORDINATOR
        host, sep, port = coordinator.rpartition(":")
        if not sep or not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            where = "in the target" if given else "in $LG_COORDINATOR"
            raise UsageError(f"bad labgrid coordinator {coordinator[:80]!r} {where}: give HOST:PORT", hint=HINT)
        return cls(f"{host}:{int(port)}", place)


@dataclass(frozen=True)
class PlaceResources:
    """What edgelm uses of a place, each value checked (:func:`resources_from`)."""

    ssh: SshSpec
    serial_url: str  # rfc2217://HOST:PORT?ign_set_control
    serial_where: str  # "exporter/group/console (/dev/ttyUSB0)": for messages
    power: dict[str, Any] | None  # {"model", "host", "index"} of a NetworkPowerPort


def _one(entries: Mapping[tuple[str, str], Any], cls: str, place: str, prefer: str) -> tuple[str, Any] | None:
    found = sorted((name, e) for (name, c), e in entries.items() if c == cls)
    if len(found) > 1:
        named = [f for f in found if f[0] == prefer]
        if len(named) != 1:
            raise DeviceError(f"place {place} has {len(found)} {cls} resources and none is named {prefer!r}",
                              hint=f"name the one edgelm should use: labgrid-client -p {place} add-named-match "
                                   f"EXPORTER/GROUP/{cls}/NAME {prefer}")
        return named[0]
    return found[0] if found else None


def _host(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HOST.match(value):
        raise DeviceError(f"{what} is {str(value)[:80]!r}: not a host name or IPv4 address")
    return value


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise DeviceError(f"{what} is {str(value)[:20]!r}: not a TCP port")
    return value


def resources_from(entries: Mapping[tuple[str, str], Any], place: str) -> PlaceResources:
    """The place's resources as labgrid's client sees them (``{(name, cls): entry}`` with ``.args``,
    ``.extra``, ``.avail``), checked (pure): one line naming what is missing or malformed."""
    service = _one(entries, "NetworkService", place, "ssh")
    serial = _one(entries, "NetworkSerialPort", place, "console")
    if service is None or serial is None:
        lacks = [c for c, r in (("a NetworkService", service), ("a NetworkSerialPort", serial)) if r is None]
        raise DeviceError(f"place {place} lacks {' and '.join(lacks)}: edgelm deploys over the board's SSH and "
                          "streams over its serial port",
                          hint="export them from the board's exporter and add-match them to the place")
    _, svc = service
    args = svc.args
    if str(args.get("address", "")).count("%") or svc.extra.get("proxy_required"):
        raise DeviceError(f"place {place}'s NetworkService needs labgrid's SSH proxy, which edgelm does not use",
                          hint="export the board's address so that this machine reaches it directly")
    user = args.get("username")
    try:
        spec = SshSpec(_host(args.get("address"), f"place {place}'s NetworkService address"),
                       user if user else None,
                       _port(args["port"], f"place {place}'s NetworkService port") if "port" in args else None)
    except UsageError as exc:
        raise DeviceError(f"place {place}'s NetworkService: {exc.message}") from None
    if "password" in args:
        log.warning("place %s publishes a password for its NetworkService; edgelm logs in with keys only", place)
    name, ser = serial
    if not ser.avail or ser.args.get("port") is None:
        raise DeviceError(f"place {place}'s serial port {name} is not served (its exporter has not started ser2net "
                          "for it, or it is gone)", hint="check the exporter's log (labgrid-client resources -v)")
    protocol = ser.args.get("protocol", "rfc2217")
    host = _host(ser.args.get("host"), f"place {place}'s serial port host")
    port = _port(ser.args.get("port"), f"place {place}'s serial port")
    if protocol == "rfc2217":
        url = f"rfc2217://{host}:{port}?ign_set_control"  # ser2net does not answer modem-line requests on a pty
    elif protocol == "raw":
        url = f"socket://{host}:{port}"
    else:
        raise DeviceError(f"place {place}'s serial port speaks {str(protocol)[:20]!r}; edgelm opens rfc2217 and raw")
    ports.parse_port_spec(url)
    path = ser.extra.get("path")
    where = f"{name} on {host}:{port}" + (f" ({path})" if isinstance(path, str) and path.startswith("/dev/") else "")
    power = None
    found = _one(entries, "NetworkPowerPort", place, "power")
    if found is not None:
        pargs = found[1].args
        model, phost, index = pargs.get("model"), pargs.get("host"), pargs.get("index")
        if not isinstance(model, str) or not _MODEL.match(model):
            raise DeviceError(f"place {place}'s power port model is {str(model)[:40]!r}: not a labgrid power model")
        if not isinstance(phost, str) or not (_HOST.match(phost) or _URL_HOST.match(phost)):
            raise DeviceError(f"place {place}'s power port host is {str(phost)[:80]!r}: not a host or http URL")
        if isinstance(index, bool) or not isinstance(index, (int, str)) or not re.fullmatch(r"[0-9]{1,4}", str(index)):
            raise DeviceError(f"place {place}'s power port index is {str(index)[:20]!r}: not a socket number")
        power = {"model": model, "host": phost, "index": index}
    return PlaceResources(spec, url, where, power)


# The coordinator: one short client session per call ----------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """labgrid's client keeps its event loop in a context variable and refuses another one later: one
    loop serves every session of this process. It is also the thread's current loop, which gRPC's
    channel binds to when the session makes it."""
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
    asyncio.set_event_loop(_LOOP)
    return _LOOP


def _client() -> Any:
    try:
        from labgrid.remote import client
    except ImportError:
        from toolchain import doctor

        raise UsageError("labgrid:// targets need labgrid's client", hint=doctor.hint("labgrid")) \
            from None
    return client


@contextlib.contextmanager
def _session(spec: PlaceSpec) -> Iterator[Any]:
    """A client session with the coordinator; labgrid's prints go to the log."""
    client = _client()
    loop = _loop()
    args = argparse.Namespace(place=spec.place, allow_unmatched=False, kick=False, state=None, initial_state=None)
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            try:
                session = client.start_session(spec.coordinator, extra={"args": args}, loop=loop)
            except client.Error as exc:
                raise DeviceError(f"the labgrid coordinator at {spec.coordinator} does not answer ({exc})",
                                  hint="start it (labgrid-coordinator), or name another: " + HINT) from None
            try:
                yield session
            except client.Error as exc:
                raise DeviceError(f"labgrid, place {spec.place}: {str(exc).removeprefix('Error: ')}") from None
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(session.stop())
                    loop.run_until_complete(session.close())
    finally:
        for line in said.getvalue().splitlines():
            log.info("labgrid: %s", line)


def _place(session: Any, spec: PlaceSpec) -> Any:
    place = session.places.get(spec.place)
    if place is None:
        known = ", ".join(sorted(session.places)) or "none"
        raise DeviceError(f"the labgrid coordinator at {spec.coordinator} has no place {spec.place!r} "
                          f"(places: {known})",
                          hint=f"labgrid-client -x {spec.coordinator} places")
    return place


def _me(session: Any) -> str:
    return f"{session.gethostname()}/{session.getuser()}"


def _job_tags() -> dict[str, str]:
    return {TAG_JOB: _JOB, TAG_PID: str(os.getpid()), TAG_START: lock_mod.process_start(os.getpid()) or "0",
            TAG_SINCE: str(int(time.time()))}


def _set_tags(session: Any, place: str, tags: dict[str, str]) -> None:
    """Set (value "": remove) tags of a place, as `labgrid-client set-tags` does."""
    request = _client().labgrid_coordinator_pb2.SetPlaceTagsRequest(placename=place, tags=tags)
    session.loop.run_until_complete(session.stub.SetPlaceTags(request))
    session.loop.run_until_complete(session.sync_with_coordinator())


def _holder(place: Any, me: str) -> str:
    """Who holds ``place``: ``free``; ``other`` (another host or user); ``ours`` (this process's job);
    ``job`` (another edgelm job of this user on this host, alive); ``gone`` (such a job whose process
    is gone); ``hand`` (this user on this host, acquired without a job: by hand, or by a job a
    moment ago that has not tagged it yet: see ``recent``)."""
    if not place.acquired:
        return "free"
    if place.acquired != me:
        return "other"
    tags = dict(getattr(place, "tags", None) or {})
    if not tags.get(TAG_JOB):
        return "hand"
    if tags[TAG_JOB] == _JOB:
        return "ours"
    pid = str(tags.get(TAG_PID, ""))
    if pid.isdigit() and lock_mod.process_start(int(pid)) != tags.get(TAG_START):
        return "gone"
    return "job"


def _recent(place: Any) -> bool:
    try:
        return time.time() - float(getattr(place, "changed", 0) or 0) < TAG_GRACE_S
    except (TypeError, ValueError):
        return False


def _job_of(place: Any) -> str:
    """``edgelm pid N on this host, since HH:MM:SS``: the job named by a place's tags (text from the
    coordinator: digits only are shown)."""
    tags = dict(getattr(place, "tags", None) or {})
    pid = str(tags.get(TAG_PID, "?"))
    since = str(tags.get(TAG_SINCE, ""))
    when = time.strftime("%H:%M:%S", time.localtime(int(since))) if since.isdigit() and len(since) < 12 else "?"
    return f"edgelm pid {pid if pid.isdigit() else '?'} on this host, since {when}"


def probe(spec: PlaceSpec) -> list[str]:
    """What keeps us from using the place now, one phrase each ([] when nothing): labgrid, the
    coordinator, the place (it is not acquired, or by no other job)."""
    try:
        _client()
    except UsageError:
        return ["labgrid's client (pip install labgrid)"]
    try:
        with _session(spec) as session:
            place = _place(session, spec)
            who = _holder(place, _me(session))
            if who == "other":
                return [f"labgrid place {spec.place} free (it is acquired by {place.acquired})"]
            if who == "job":
                return [f"labgrid place {spec.place} free (it is held by {place.acquired}: {_job_of(place)})"]
    except DeviceError as exc:
        return [f"labgrid place {spec.place} at {spec.coordinator} ({exc.message})"]
    return []


def acquire(spec: PlaceSpec, wait_s: float = SERIAL_WAIT_S,
            notes: list[str] | None = None) -> tuple[PlaceResources, bool]:
    """Acquire the place for this job and read its resources once the exporter serves its serial port;
    (resources, whether this job acquired it now: it releases it at the end). A place another host,
    user or live edgelm job holds is refused, naming who; one a job that is gone left acquired is
    taken over; one this user acquired by hand (or this process's job holds) is used as it is. On
    failure a place acquired here is released again."""
    with _session(spec) as session:
        me = _me(session)
        waited = time.monotonic() + TAG_WAIT_S
        place = _place(session, spec)
        who = _holder(place, me)
        while who == "hand" and _recent(place) and time.monotonic() < waited:  # a job's, not tagged yet?
            session.loop.run_until_complete(asyncio.sleep(0.1))
            place = _place(session, spec)
            who = _holder(place, me)
        if who == "other":
            raise DeviceError(f"labgrid place {spec.place} is acquired by {place.acquired}",
                              hint="wait for it, or ask them to release it (labgrid-client who)")
        if who == "job":
            raise DeviceError(f"labgrid place {spec.place} is held by {place.acquired} ({_job_of(place)})",
                              hint="wait for that job to end, or end it; a second job never shares a place")
        ours = who in ("free", "gone")
        if who == "free":
            session.loop.run_until_complete(session._acquire_place(spec.place))
            log.info("acquired labgrid place %s at %s", spec.place, spec.coordinator)
        elif who == "gone":
            note = (f"labgrid place {spec.place} was left acquired by a job that is gone ({_job_of(place)}): "
                    "taken over, and released at the end")
            log.warning("%s", note)
            if notes is not None:
                notes.append(note)
        try:
            if ours:
                _set_tags(session, spec.place, _job_tags())
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    return resources_from(session.get_target_resources(_place(session, spec)), spec.place), ours
                except DeviceError:
                    if time.monotonic() > deadline:
                        raise
                session.loop.run_until_complete(asyncio.sleep(0.2))  # the update stream runs meanwhile
        except BaseException:
            if ours:
                with contextlib.suppress(Exception):
                    _untag_and_release(session, spec)
            raise


def _untag_and_release(session: Any, spec: PlaceSpec) -> None:
    """Our tags off first (while it is still ours), then the place released."""
    place = _place(session, spec)
    tags = dict(getattr(place, "tags", None) or {})
    if any(t in tags for t in JOB_TAGS):
        _set_tags(session, spec.place, {t: "" for t in JOB_TAGS})
    session.loop.run_until_complete(session._release_place(spec.place))


def release(spec: PlaceSpec) -> None:
    """Release the place if this process's job holds it (never one another job or the user holds)."""
    with _session(spec) as session:
        place = _place(session, spec)
        if _holder(place, _me(session)) != "ours":
            log.info("labgrid place %s is not this job's to release (%s)", spec.place, place.acquired or "free")
            return
        _untag_and_release(session, spec)
        log.info("released labgrid place %s", spec.place)


# The power switch ----------------------------------------------------------------------------------


class Switch:
    """A NetworkPowerPort, switched by labgrid's own NetworkPowerDriver and power backends."""

    def __init__(self, power: dict[str, Any], delay_s: float = POWER_DELAY_S):
        from labgrid import Target as LgTarget
        from labgrid.driver import NetworkPowerDriver
        from labgrid.resource import NetworkPowerPort

        self.what = f"{power['model']} switch {power['host']} socket {power['index']}"
        target = LgTarget("edgelm")
        NetworkPowerPort(target, name=None, model=power["model"], host=power["host"], index=power["index"])
        self.driver = NetworkPowerDriver(target, name=None, delay=float(delay_s))
        target.activate(self.driver)

    def _do(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # a backend raises whatever its HTTP or socket library raises
            raise DeviceError(f"power {what} through the {self.what} failed: {exc}") from None

    def get(self) -> bool:
        return bool(self._do("state", self.driver.get))

    def on(self) -> None:
        self._do("on", self.driver.on)

    def off(self) -> None:
        self._do("off", self.driver.off)

    def cycle(self) -> None:
        self._do("cycle", self.driver.cycle)


# The target ----------------------------------------------------------------------------------------


def failed_link(spec: PlaceSpec, where: str, exc: DeviceError) -> DeviceError:
    return DeviceError(f"the serial port of labgrid place {spec.place} ({where}) failed: {exc.message}; is its "
                       "exporter (and its ser2net) still running?",
                       hint=f"labgrid-client -x {spec.coordinator} -p {spec.place} show")


class FarmLink:
    """The host's end of the place's serial port; a failure names the place and its exporter."""

    def __init__(self, inner: Transport, spec: PlaceSpec, where: str):
        self.inner = inner
        self.spec = spec
        self.where = where
        self.name = f"{spec} serial {where}"

    def _failed(self, exc: DeviceError) -> DeviceError:
        return failed_link(self.spec, self.where, exc)

    def read(self, deadline: Deadline) -> bytes:
        try:
            return self.inner.read(deadline)
        except DeviceError as exc:
            raise self._failed(exc) from None

    def write(self, data: bytes) -> None:
        try:
            self.inner.write(data)
        except DeviceError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        self.inner.close()


class Farm:
    """The place while a job holds it: its resources, and the SSH target built from them."""

    def __init__(self, spec: PlaceSpec, board: Board, state: Path, options: TargetOptions, notes: list[str]):
        self.spec = spec
        self.board = board
        self.state = state
        self.options = options
        self.notes = notes
        self.depth = 0
        self.acquired_here = False
        self.resources: PlaceResources | None = None
        self.inner: Target | None = None
        self.switch: Switch | None = None

    @contextlib.contextmanager
    def held(self, what: str = "") -> Iterator[Target]:
        """The place acquired for the duration (re-entrant: an inner hold reuses the outer one), and
        the SSH target on its resources. Released on the way out, whatever ended the job."""
        if self.depth:
            self.depth += 1
            try:
                assert self.inner is not None
                yield self.inner
            finally:
                self.depth -= 1
            return
        self.acquired_here = False
        self.depth = 1
        try:
            with interrupts.deferred():  # a Ctrl-C while the place is acquired is raised after it, here
                resources, self.acquired_here = acquire(self.spec, notes=self.notes)
            if not self.acquired_here:
                self.notes.append(f"labgrid place {self.spec.place} was already acquired by this host and user: "
                                  "used, and left acquired")
            self.resources = resources
            opts = TargetOptions(port=resources.serial_url, board_port=self.options.board_port,
                                 ssh_config=self.options.ssh_config,
                                 accept_new_host_key=self.options.accept_new_host_key)
            self.inner = ssh_target.create(str(resources.ssh), self.board, self.state.parent, opts)
            self.switch = Switch(resources.power) if resources.power is not None else None
            log.info("labgrid place %s: ssh %s, serial %s, power %s", self.spec.place, resources.ssh,
                     resources.serial_where, self.switch.what if self.switch else "none")
            with contextlib.ExitStack() as stack:
                if self.inner.board_lock is not None and self.switch is None:
                    # The board's own lock, over its SSH (a board behind a power switch may be off: the
                    # place alone is its lock then).
                    stack.enter_context(self.inner.board_lock(what or "labgrid"))
                    self.notes.extend(self.inner.notes)
                    self.inner.notes.clear()
                yield self.inner
        except BaseException:
            self.depth = 0
            self._release(quiet=True)
            raise
        self.depth = 0
        self._release(quiet=False)

    def _release(self, quiet: bool) -> None:
        self.inner = self.switch = None
        if not self.acquired_here:
            return
        try:
            with interrupts.deferred():  # a second Ctrl-C does not cut the release short
                release(self.spec)
        except EdgelmError as exc:
            if not quiet:
                raise DeviceError(f"could not release labgrid place {self.spec.place}: {exc.message}",
                                  hint=f"labgrid-client -x {self.spec.coordinator} -p {self.spec.place} release") \
                    from None
            log.error("could not release labgrid place %s: %s", self.spec.place, exc.message)
        finally:
            self.acquired_here = False


class FarmStore:
    def __init__(self, farm: Farm):
        self.farm = farm
        self.where = f"{farm.spec}:{farm.board.name}"

    def _store(self, t: Target) -> Any:
        assert t.store is not None
        return t.store

    def deploy(self, bundle: Bundle, *, activate: bool = True, progress: Progress = no_progress) -> Release:
        with self.farm.held() as t:
            return self._store(t).deploy(bundle, activate=activate, progress=progress)

    def current(self) -> Release | None:
        with self.farm.held() as t:
            return self._store(t).current()

    def previous(self) -> Release | None:
        with self.farm.held() as t:
            return self._store(t).previous()

    def activate(self, release: Release, *, verify: bool = True) -> None:
        with self.farm.held() as t:
            self._store(t).activate(release, verify=verify)

    def restore(self, current: Release | None, previous: Release | None) -> None:
        with self.farm.held() as t:
            self._store(t).restore(current, previous)

    def clean(self) -> None:
        with self.farm.held() as t:
            self._store(t).clean()

    def verify(self, release: Release) -> None:
        with self.farm.held() as t:
            self._store(t).verify(release)

    def trust(self, public_key_pem: bytes) -> str:
        with self.farm.held() as t:
            return self._store(t).trust(public_key_pem)

    def trusted(self) -> list[dict[str, str]]:
        with self.farm.held() as t:
            return self._store(t).trusted()

    def untrust(self, fingerprint: str) -> None:
        with self.farm.held() as t:
            self._store(t).untrust(fingerprint)

    def security_counter(self) -> int:
        with self.farm.held() as t:
            return self._store(t).security_counter()

    def confirm(self, release: Release) -> int:
        with self.farm.held() as t:
            return self._store(t).confirm(release)


class FarmRunner:
    """Runner control and link: the runner on the board's UART, started over SSH; the host's end the
    place's serial port through ser2net."""

    keeps_serving = True

    def __init__(self, farm: Farm):
        self.farm = farm
        self.board_device = farm.options.board_port or farm.board.serial_device

    def _runner(self, t: Target) -> Any:
        assert t.runner is not None
        return t.runner

    def connect(self) -> str:
        with self.farm.held():
            assert self.farm.resources is not None
            return self.farm.resources.serial_url

    def open(self, port: str) -> Transport:
        with self.farm.held():
            assert self.farm.resources is not None
            where = self.farm.resources.serial_where
            try:
                transport = ports.open_port(port, self.farm.board.baud)
            except DeviceError as exc:
                raise failed_link(self.farm.spec, where, exc) from None
            return FarmLink(transport, self.farm.spec, where)

    def start(self, release: Release, *, device: str, threads: int | None = None) -> None:
        with self.farm.held() as t:
            self._runner(t).start(release, device=device, threads=threads)

    def alive(self) -> str | None:
        with self.farm.held() as t:
            return self._runner(t).alive()

    def stop(self, *, lease_s: float | None = None) -> str | None:
        with self.farm.held() as t:
            return self._runner(t).stop(lease_s=lease_s)

    def running(self) -> dict[str, Any] | None:
        with self.farm.held() as t:
            return self._runner(t).running()


class FarmPower:
    """The place's power switch: on, off, cycle; ``on`` also cycles a board that is on but does not
    let us in (hung), and waits until it does."""

    def __init__(self, farm: Farm, boot_timeout_s: float = BOOT_TIMEOUT_S):
        self.farm = farm
        self.boot_timeout_s = boot_timeout_s

    def _answer(self, t: Target, timeout_s: float) -> str | None:
        """None once the board lets us in over SSH within ``timeout_s``, else why not."""
        deadline = time.monotonic() + timeout_s
        while True:
            why = t.missing()
            if not why or time.monotonic() > deadline:
                return "; ".join(why) or None
            time.sleep(1.0)

    def _wait_boot(self, t: Target, progress: Progress) -> None:
        progress("power", f"waiting up to {self.boot_timeout_s:g} s for {self.farm.spec.place} to answer on SSH")
        why = self._answer(t, self.boot_timeout_s)
        if why:
            raise DeviceError(f"labgrid place {self.farm.spec.place} was switched on but did not answer within "
                              f"{self.boot_timeout_s:g} s: {why}")

    def on(self, progress: Progress = no_progress) -> bool:
        with self.farm.held() as t:
            switch = self.farm.switch
            if switch is None:
                return False
            if not switch.get():
                progress("power", f"{self.farm.spec.place}: on ({switch.what})")
                switch.on()
                self._wait_boot(t, progress)
                return True
            why = self._answer(t, 0)
            if why:
                note = f"labgrid place {self.farm.spec.place} was on but did not answer ({why}): power-cycled it"
                log.warning("%s", note)
                self.farm.notes.append(note)
                progress("power", note)
                switch.cycle()
                self._wait_boot(t, progress)
            return False

    def off(self) -> bool:
        with self.farm.held():
            switch = self.farm.switch
            if switch is None or not switch.get():
                return False
            switch.off()
            return True

    def cycle(self, progress: Progress = no_progress) -> None:
        with self.farm.held() as t:
            if self.farm.switch is None:
                raise UsageError(f"labgrid place {self.farm.spec.place} exports no NetworkPowerPort")
            progress("power", f"{self.farm.spec.place}: cycle ({self.farm.switch.what})")
            self.farm.switch.cycle()
            self._wait_boot(t, progress)

    def status(self) -> dict[str, Any]:
        with self.farm.held():
            switch = self.farm.switch
            return {"on": switch.get() if switch else None, "place": self.farm.spec.place,
                    "switch": switch.what if switch else None}


def _state_name(spec: PlaceSpec, board: Board) -> str:
    return "labgrid-" + re.sub(r"[^A-Za-z0-9.-]", "_", f"{spec.coordinator}-{spec.place}") + f"-{board.name}"


def create(text: str, board: Board, state_dir: Path, options: TargetOptions) -> Target:
    spec = PlaceSpec.parse(text)
    if options.port is not None:
        raise UsageError("--port is not for labgrid:// targets: the place's NetworkSerialPort is the link",
                         hint="--board-port names the board's end (its UART device) when it is not the profile's")
    if options.boot is not None or options.service:
        raise UsageError("--boot and --service are not for labgrid:// targets")
    state = state_dir / _state_name(spec, board)
    notes: list[str] = []
    farm = Farm(spec, board, state, options, notes)
    runner = FarmRunner(farm)
    target = Target(kind="labgrid", spec=str(spec), board=board, state=state, store=FarmStore(farm), runner=runner,
                    link=runner, power=FarmPower(farm), timeouts=Timeouts(), notes=notes, reserve=farm.held)

    def preflight(bundle: Bundle) -> list:
        with farm.held() as t:
            assert t.preflight is not None
            return t.preflight(bundle)

    target.preflight = preflight
    target.missing = lambda: probe(spec)
    return target
