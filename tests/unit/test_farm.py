"""labgrid:// specs and what a coordinator publishes about a place, checked before any of it is used:
a hostile coordinator's host, port, user or power model does not reach a command line."""

from types import SimpleNamespace

import pytest

from toolchain import boards
from toolchain.deploy import farm, registry
from toolchain.deploy.registry import TargetOptions
from toolchain.errors import DeviceError, UsageError


def entry(cls_args, avail=True, **extra):
    return SimpleNamespace(args=cls_args, avail=avail, extra={"proxy": "exporter", "proxy_required": False, **extra})


def good():
    return {
        ("NetworkService", "NetworkService"): entry({"address": "192.168.10.51", "username": "pi", "port": 22}),
        ("console", "NetworkSerialPort"): entry({"host": "farm-host", "port": 40233, "speed": 921600},
                                                path="/dev/ttyUSB0"),
        ("NetworkPowerPort", "NetworkPowerPort"): entry({"model": "simplerest", "index": 1,
                                                         "host": "http://192.168.10.2/power/{index}/{value}"}),
    }


def test_spec_forms(monkeypatch):
    assert farm.PlaceSpec.parse("labgrid://rpi5", env={}) == farm.PlaceSpec("127.0.0.1:20408", "rpi5")
    assert farm.PlaceSpec.parse("labgrid://rpi5", env={"LG_COORDINATOR": "farm:4000"}).coordinator == "farm:4000"
    spec = farm.PlaceSpec.parse("labgrid://farm.lan:20408/jetson-orin-nano", env={})
    assert (spec.coordinator, spec.place) == ("farm.lan:20408", "jetson-orin-nano")
    assert str(spec) == "labgrid://farm.lan:20408/jetson-orin-nano"


@pytest.mark.parametrize("text", ["labgrid://", "labgrid://rpi 5", "labgrid://../x", "labgrid://farm/rpi5",
                                  "labgrid://farm:0/rpi5", "labgrid://farm:99999/rpi5", "labgrid://-x:1/rpi5",
                                  "labgrid://h;rm:1/rpi5", "labgrid://rpi5\n", "labgrid://" + "p" * 65])
def test_bad_specs_are_one_line(text):
    with pytest.raises(UsageError, match="bad labgrid"):
        farm.PlaceSpec.parse(text, env={})


def test_a_bad_coordinator_in_the_environment_is_named():
    with pytest.raises(UsageError, match=r"in \$LG_COORDINATOR"):
        farm.PlaceSpec.parse("labgrid://rpi5", env={"LG_COORDINATOR": "farm"})


def test_resources_of_a_good_place():
    r = farm.resources_from(good(), "rpi5")
    assert str(r.ssh) == "ssh://pi@192.168.10.51:22"
    assert r.serial_url == "rfc2217://farm-host:40233?ign_set_control"
    assert r.serial_where == "console on farm-host:40233 (/dev/ttyUSB0)"
    assert r.power == {"model": "simplerest", "host": "http://192.168.10.2/power/{index}/{value}", "index": 1}
    raw = good()
    raw[("console", "NetworkSerialPort")].args["protocol"] = "raw"
    assert farm.resources_from(raw, "rpi5").serial_url == "socket://farm-host:40233"
    del raw[("NetworkPowerPort", "NetworkPowerPort")]
    assert farm.resources_from(raw, "rpi5").power is None


@pytest.mark.parametrize("key,field,value,says", [
    (("NetworkService", "NetworkService"), "address", "-oProxyCommand=touch /tmp/x", "not a host name"),
    (("NetworkService", "NetworkService"), "address", "fe80::1%eth0", "SSH proxy"),
    (("NetworkService", "NetworkService"), "username", "-oProxyCommand=x", "not a user name"),
    (("NetworkService", "NetworkService"), "username", "pi;reboot", "not a user name"),
    (("NetworkService", "NetworkService"), "port", "22; reboot", "not a TCP port"),
    (("NetworkService", "NetworkService"), "port", 70000, "not a TCP port"),
    (("console", "NetworkSerialPort"), "host", "host/../../etc", "not a host name"),
    (("console", "NetworkSerialPort"), "port", None, "is not served"),
    (("console", "NetworkSerialPort"), "port", True, "not a TCP port"),
    (("console", "NetworkSerialPort"), "protocol", "telnet", "edgelm opens rfc2217 and raw"),
    (("NetworkPowerPort", "NetworkPowerPort"), "model", "../../os", "not a labgrid power model"),
    (("NetworkPowerPort", "NetworkPowerPort"), "model", "simple.rest", "not a labgrid power model"),
    (("NetworkPowerPort", "NetworkPowerPort"), "host", "file:///etc/passwd", "not a host or http URL"),
    (("NetworkPowerPort", "NetworkPowerPort"), "host", "http://x/a b", "not a host or http URL"),
    (("NetworkPowerPort", "NetworkPowerPort"), "index", "1;2", "not a socket number"),
])
def test_what_a_hostile_coordinator_publishes_is_refused(key, field, value, says):
    entries = good()
    entries[key].args[field] = value
    with pytest.raises(DeviceError, match=says):
        farm.resources_from(entries, "rpi5")


def test_a_place_without_its_resources_or_with_two_consoles():
    entries = good()
    del entries[("NetworkService", "NetworkService")]
    with pytest.raises(DeviceError, match="place rpi5 lacks a NetworkService: "):
        farm.resources_from(entries, "rpi5")
    entries = good()
    entries[("other", "NetworkSerialPort")] = entry({"host": "h", "port": 1})
    assert farm.resources_from(entries, "rpi5").serial_url.startswith("rfc2217://farm-host:")  # "console" wins
    entries[("more", "NetworkSerialPort")] = entries.pop(("console", "NetworkSerialPort"))
    with pytest.raises(DeviceError, match="2 NetworkSerialPort resources and none is named 'console'"):
        farm.resources_from(entries, "rpi5")
    entries = good()
    entries[("console", "NetworkSerialPort")].avail = False
    with pytest.raises(DeviceError, match="is not served"):
        farm.resources_from(entries, "rpi5")


def test_the_target_kind_is_registered_and_refuses_options_it_has_no_use_for(tmp_path):
    board = boards.get("rpi5")
    target = registry.create("labgrid://farm:20408/rpi5", board, tmp_path)
    assert target.kind == "labgrid" and target.spec == "labgrid://farm:20408/rpi5"
    assert target.reserve is not None and target.power is not None
    assert target.state.name == "labgrid-farm_20408-rpi5-rpi5"
    with pytest.raises(UsageError, match="--port is not for labgrid"):
        registry.create("labgrid://rpi5", board, tmp_path, TargetOptions(port="/dev/ttyUSB0"))
    with pytest.raises(UsageError, match="--boot and --service"):
        registry.create("labgrid://rpi5", board, tmp_path, TargetOptions(service=True))


def test_a_coordinator_that_does_not_answer_is_what_is_missing(tmp_path):
    target = registry.create("labgrid://127.0.0.1:1/rpi5", boards.get("rpi5"), tmp_path)
    missing = target.missing()
    assert len(missing) == 1 and "coordinator at 127.0.0.1:1 does not answer" in missing[0]


# Issue 23: a place another job holds is not adopted --------------------------------------------------------

class FakePlace(SimpleNamespace):
    pass


class FakeStub:
    def __init__(self, session):
        self.session = session

    async def SetPlaceTags(self, request):  # noqa: N802 - labgrid's gRPC name
        place = self.session.places[request.placename]
        for k, v in dict(request.tags).items():
            if v:
                place.tags[k] = v
            else:
                place.tags.pop(k, None)


class FakeSession:
    """labgrid's client session as farm.py uses it, over one place; ``later``: tags another job sets
    on the place once it has been looked at twice (a job that acquired it a moment ago)."""

    def __init__(self, place, later=None):
        import asyncio
        import socket

        self._places = {"rpi5": place}
        self.reads = 0
        self.later = later
        self.loop = asyncio.new_event_loop()
        self.stub = FakeStub(self)
        self.host = socket.gethostname()
        self.calls = []

    @property
    def places(self):
        self.reads += 1
        if self.later and self.reads > 2:
            self._places["rpi5"].tags.update(self.later)
            self.later = None
        return self._places

    def gethostname(self):
        return self.host

    def getuser(self):
        return "me"

    async def _acquire_place(self, name):
        self.calls.append("acquire")
        self._places[name].acquired = f"{self.host}/me"

    async def _release_place(self, name):
        self.calls.append("release")
        self._places[name].acquired = None

    async def sync_with_coordinator(self):
        pass

    def get_target_resources(self, place):
        return good()


@pytest.fixture
def coordinator(monkeypatch):
    """A fake coordinator session for farm.py; returns a function that installs one over a place."""
    import contextlib

    def install(place, later=None):
        session = FakeSession(place, later)

        @contextlib.contextmanager
        def fake(spec):
            yield session

        monkeypatch.setattr(farm, "_session", fake)
        return session

    return install


SPEC = farm.PlaceSpec("farm:20408", "rpi5")


def _start(pid):
    from pathlib import Path

    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]


def _tags(pid, start, since_s=60):
    import time

    return {"edgelm_job": "0123456789abcdef", "edgelm_pid": str(pid), "edgelm_start": start,
            "edgelm_since": str(int(time.time() - since_s))}


def test_a_place_another_live_job_of_this_user_holds_is_refused_and_left_to_it(coordinator, sleeper):
    import time

    session = coordinator(FakePlace(acquired=None, tags={}, changed=time.time() - 60))
    me = f"{session.host}/me"
    place = session._places["rpi5"]
    place.acquired, place.tags = me, _tags(sleeper.pid, _start(sleeper.pid))
    with pytest.raises(DeviceError) as err:
        farm.acquire(SPEC)
    line = str(err.value)
    assert line.startswith(f"labgrid place rpi5 is held by {me} (edgelm pid {sleeper.pid} on this host, since "), line
    assert session.calls == [] and place.acquired == me and place.tags["edgelm_job"] == "0123456789abcdef"
    farm.release(SPEC)  # a job that ends never releases a place another job holds
    assert session.calls == [] and place.acquired == me


def test_a_place_this_user_acquired_a_moment_ago_is_not_adopted_before_its_job_says_so(coordinator, sleeper):
    import time

    session = coordinator(FakePlace(acquired=None, tags={}, changed=time.time()),
                          later=_tags(sleeper.pid, _start(sleeper.pid), since_s=0))
    session._places["rpi5"].acquired = f"{session.host}/me"  # acquired, its tags not written yet
    with pytest.raises(DeviceError, match=f"is held by .*/me \\(edgelm pid {sleeper.pid} "):
        farm.acquire(SPEC)
    assert session.calls == []


def test_a_place_a_dead_job_left_acquired_is_taken_over_and_released_at_the_end(coordinator):
    import os
    import subprocess
    import time

    gone = subprocess.Popen(["true"])
    gone.wait()
    session = coordinator(FakePlace(acquired=None, tags={}, changed=time.time() - 60))
    place = session._places["rpi5"]
    place.acquired, place.tags = f"{session.host}/me", _tags(gone.pid, "1")
    resources, ours = farm.acquire(SPEC)
    assert ours and resources.serial_url.startswith("rfc2217://farm-host:")
    assert place.tags["edgelm_pid"] == str(os.getpid()) and place.tags["edgelm_job"] != "0123456789abcdef"
    farm.release(SPEC)
    assert session.calls == ["release"] and place.acquired is None and place.tags == {}


def test_a_free_place_is_acquired_tagged_and_released_untagged(coordinator):
    import os
    import time

    session = coordinator(FakePlace(acquired=None, tags={"team": "a"}, changed=time.time() - 60))
    place = session._places["rpi5"]
    _, ours = farm.acquire(SPEC)
    assert ours and session.calls == ["acquire"] and place.tags["edgelm_pid"] == str(os.getpid())
    farm.release(SPEC)
    assert session.calls == ["acquire", "release"] and place.tags == {"team": "a"}


def test_a_place_acquired_by_hand_is_used_and_left_acquired(coordinator):
    import time

    session = coordinator(FakePlace(acquired=None, tags={}, changed=time.time() - 600))
    place = session._places["rpi5"]
    place.acquired = f"{session.host}/me"  # `labgrid-client acquire`, by the user
    _, ours = farm.acquire(SPEC)
    assert not ours and session.calls == [] and place.tags == {}
    farm.release(SPEC)
    assert session.calls == [] and place.acquired == f"{session.host}/me"
