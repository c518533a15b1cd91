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
