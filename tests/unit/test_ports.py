"""Serial ports by identity: --port forms, usb: resolution against a faked port list, re-resolution
after a reset renames the adapter, the permission message, and `edgelm ports` listing a pty."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from serial.tools.list_ports_common import ListPortInfo
from standin import STATE, identity, run_edgelm, wait_gone

from toolchain import cli
from toolchain.cli import main
from toolchain.errors import DeviceError, UsageError
from toolchain.link import framing, ports
from toolchain.link import protocol as P
from toolchain.link.ports import PortInfo, PortSpec
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import Deadline, SerialTransport


def usb(device, vid, pid, serial=None, product="USB Serial", location=None):
    """One entry as pyserial's comports() gives it on Linux."""
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number, info.product, info.location = vid, pid, serial, product, location
    info.description = product
    info.hwid = info.usb_info()
    return info


def lister(*entries):
    return lambda: list(entries)


FTDI_A = usb("/dev/ttyUSB0", 0x0403, 0x6001, "A50285BI", "FT232R USB UART", "1-1.2:1.0")
FTDI_B = usb("/dev/ttyUSB1", 0x0403, 0x6001, "B7777777", "FT232R USB UART", "1-1.3:1.0")
CH340 = usb("/dev/ttyUSB2", 0x1A86, 0x7523, None, "USB2.0-Serial")
UART = ListPortInfo("/dev/ttyS0", skip_link_detection=True)


class Ptys:
    """Pseudo-terminals for a test: (master fd, slave path), the slave end held open; closed at the end."""

    def __init__(self):
        self.open = []

    def __call__(self):
        master, slave = os.openpty()
        self.open += [master, slave]
        return master, os.ttyname(slave)

    def hang_up(self, master):
        """The board's side goes away (as when a USB adapter is unplugged or reset)."""
        self.open.remove(master)
        os.close(master)

    def close_all(self):
        for fd in self.open:
            os.close(fd)


@pytest.fixture
def pty():
    ptys = Ptys()
    yield ptys
    ptys.close_all()


# --port forms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("/dev/ttyUSB0", PortSpec("path", "/dev/ttyUSB0")),
    ("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
     PortSpec("path", "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0")),
    ("usb:0403:6001", PortSpec("usb", "usb:0403:6001", 0x0403, 0x6001)),
    ("USB:1A86:7523", PortSpec("usb", "usb:1a86:7523", 0x1A86, 0x7523)),
    ("usb:0403:6001:A50285BI", PortSpec("usb", "usb:0403:6001:A50285BI", 0x0403, 0x6001, "A50285BI")),
    ("usb:303a:1001:F4:12:FA:4F:2B:A8", PortSpec("usb", "usb:303a:1001:F4:12:FA:4F:2B:A8", 0x303A, 0x1001,
                                                 "F4:12:FA:4F:2B:A8")),
    ("rfc2217://lab-ser2net.local:4000", PortSpec("url", "rfc2217://lab-ser2net.local:4000")),
    ("rfc2217://10.0.0.7:4000?ign_set_control", PortSpec("url", "rfc2217://10.0.0.7:4000?ign_set_control")),
    ("socket://[::1]:4001", PortSpec("url", "socket://[::1]:4001")),
    ("loop://", PortSpec("url", "loop://")),
])
def test_port_specs_are_read(text, expected):
    assert ports.parse_port_spec(text) == expected


def test_a_relative_path_that_exists_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "host").touch()
    assert ports.parse_port_spec("link/host") == PortSpec("path", "link/host")


@pytest.mark.parametrize("text, needle", [
    ("usb:../../etc", "not a USB port spec"),
    ("usb:1234:5678:$(reboot)", "not a USB port spec"),
    ("usb:1234:5678:a b", "not a USB port spec"),
    ("usb:1234:5678:", "not a USB port spec"),
    ("usb:123:5678", "not a USB port spec"),
    ("usb:12345:678", "not a USB port spec"),
    ("usb:gggg:5678", "not a USB port spec"),
    ("usb:0x12:5678", "not a USB port spec"),
    ("usb:1234", "not a USB port spec"),
    ("usb:", "not a USB port spec"),
    ("COM3", "not a serial port"),
    ("ttyUSB0", "not a serial port"),
    ("$(reboot)", "not a serial port"),
    ("", "not a serial port"),
    ("/dev/ttyUSB0\n", "not a serial port"),
    ("/dev/tty\x1b[31m", "not a serial port"),
    ("/dev/" + "x" * 5000, "not a serial port"),
    ("hwgrep://.*", "unsupported serial URL"),
    ("spy:///dev/ttyUSB0", "unsupported serial URL"),
    ("file:///etc/passwd", "unsupported serial URL"),
    ("socket://host", "malformed serial URL"),
    ("socket://host:0", "malformed serial URL"),
    ("socket://host:65536", "malformed serial URL"),
    ("socket://h;reboot:4000", "malformed serial URL"),
    ("rfc2217://host:4000/../x", "malformed serial URL"),
    ("loop://x", "malformed serial URL"),
])
def test_anything_else_is_refused_in_one_line_naming_the_forms(text, needle):
    with pytest.raises(UsageError) as caught:
        ports.parse_port_spec(text)
    message = str(caught.value)
    assert needle in message and "\n" not in message and "\x1b" not in message
    assert len(message) < 300


def test_a_bare_tty_name_gets_a_hint():
    with pytest.raises(UsageError) as caught:
        ports.parse_port_spec("ttyACM0")
    assert caught.value.hint == "did you mean /dev/ttyACM0? See `edgelm ports`"


# usb: resolution against a faked port list --------------------------------------------------------


def test_usb_resolves_to_the_one_adapter_with_those_ids():
    assert ports.resolve("usb:1a86:7523", lister(FTDI_A, CH340, UART)) == "/dev/ttyUSB2"
    assert ports.resolve("usb:1A86:7523", lister(FTDI_A, CH340, UART)) == "/dev/ttyUSB2"


def test_the_serial_number_picks_one_of_two_alike_adapters():
    found = lister(FTDI_A, FTDI_B, CH340)
    assert ports.resolve("usb:0403:6001:B7777777", found) == "/dev/ttyUSB1"
    assert ports.resolve("usb:0403:6001:a50285bi", found) == "/dev/ttyUSB0"


def test_two_alike_adapters_without_a_serial_number_ask_for_it():
    with pytest.raises(DeviceError) as caught:
        ports.resolve("usb:0403:6001", lister(FTDI_A, FTDI_B, CH340))
    assert str(caught.value) == ("2 USB serial ports match usb:0403:6001: 0403:6001 A50285BI FT232R USB UART "
                                 "(/dev/ttyUSB0 at 1-1.2:1.0); 0403:6001 B7777777 FT232R USB UART "
                                 "(/dev/ttyUSB1 at 1-1.3:1.0)")
    assert caught.value.hint == "add the serial number, e.g. --port usb:0403:6001:A50285BI"


def test_no_match_lists_the_usb_ports_there_are():
    with pytest.raises(DeviceError) as caught:
        ports.resolve("usb:0403:6001:ZZZ", lister(FTDI_A, CH340, UART))
    assert str(caught.value) == ("no USB serial port matches usb:0403:6001:ZZZ; USB serial ports here: 0403:6001 "
                                 "A50285BI FT232R USB UART (/dev/ttyUSB0 at 1-1.2:1.0); 1a86:7523 (no serial "
                                 "number) USB2.0-Serial (/dev/ttyUSB2)")
    with pytest.raises(DeviceError, match="USB serial ports here: none"):
        ports.resolve("usb:0403:6001", lister(UART))


def test_paths_and_urls_resolve_to_themselves_without_listing():
    def never():
        raise AssertionError("a path or URL needs no port list")

    assert ports.resolve("/dev/ttyAMA0", never) == "/dev/ttyAMA0"
    assert ports.resolve("socket://localhost:4001", never) == "socket://localhost:4001"


def test_ports_as_pyserial_lists_them():
    listed = ports.list_ports(lister(UART, CH340, FTDI_A))
    assert [p.device for p in listed] == ["/dev/ttyUSB0", "/dev/ttyUSB2", "/dev/ttyS0"]  # USB first
    ftdi, ch340, uart = listed
    assert (ftdi.kind, ftdi.usb_id, ftdi.serial_number, ftdi.description) == (
        "usb", "0403:6001", "A50285BI", "FT232R USB UART")
    assert ftdi.spec == "usb:0403:6001:A50285BI" and ch340.spec == "usb:1a86:7523"
    assert (uart.kind, uart.usb_id, uart.description, uart.spec) == ("platform", None, "", "/dev/ttyS0")
    assert json.loads(json.dumps(ftdi.to_dict()))["spec"] == "usb:0403:6001:A50285BI"


def test_port_info_is_validated():
    with pytest.raises(ValueError, match="kind='serial'"):
        PortInfo("/dev/ttyUSB0", "serial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vid=65536"):
        PortInfo("/dev/ttyUSB0", "usb", vid=0x10000, pid=1)
    with pytest.raises(ValueError, match="has both ids"):
        PortInfo("/dev/ttyUSB0", "usb", vid=0x0403)


# Re-resolution: a reset re-enumerates the adapter under another name ---------------------------------


def test_usb_is_resolved_again_on_every_open(pty):
    _, first = pty()
    _, second = pty()
    answers = iter([[usb(first, 0x0403, 0x6001, "A50285BI")], [usb(second, 0x0403, 0x6001, "A50285BI")]])
    open_link = ports.opener("usb:0403:6001:A50285BI", 115200, lambda: next(answers))
    one = open_link()
    two = open_link()
    try:
        assert one.name == f"{first} (usb:0403:6001:A50285BI)"
        assert two.name == f"{second} (usb:0403:6001:A50285BI)"
    finally:
        one.close()
        two.close()


def test_a_session_follows_the_adapter_to_its_new_name_after_a_reset(pty):
    master_a, first = pty()
    master_b, second = pty()
    there = [usb(first, 0x0403, 0x6001, "A50285BI")]
    open_link = ports.opener("usb:0403:6001", 115200, lambda: list(there))
    session = BoardSession(open_link(), Timeouts(hello_s=10), reopen=open_link, reopen_s=5)
    hello = P.Hello(P.PROTOCOL_VERSION, "fw", "rpi5", "ab" * 32, 64, 259, 4, 5.0)
    done = threading.Event()

    def board_after_reset():  # the old name is gone, the adapter is back as another, the runner says HELLO
        there[:] = [usb(second, 0x0403, 0x6001, "A50285BI")]
        pty.hang_up(master_a)
        while not done.wait(0.05):
            os.write(master_b, framing.encode(P.HELLO, 0, hello.pack()))

    board = threading.Thread(target=board_after_reset)
    board.start()
    try:
        assert session.wait_hello().board == "rpi5"
        assert session.reopened == 1 and session.transport.name == f"{second} (usb:0403:6001)"
    finally:
        done.set()
        board.join()
        session.transport.close()


# Other kinds of port ---------------------------------------------------------------------------------


def test_a_url_opens_through_pyserial():
    link = ports.open_port("loop://", 115200)
    try:
        link.write(b"\x00ping\x00")
        got = b""
        deadline = Deadline(2.0)
        while b"ping" not in got and not deadline.expired:
            got += link.read(deadline)
        assert got == b"\x00ping\x00"
    finally:
        link.close()


def test_a_missing_device_and_a_file_that_is_no_port(tmp_path):
    with pytest.raises(DeviceError, match=r"^no serial port /dev/ttyUSB99 \(nothing at that path\)$") as caught:
        ports.open_port("/dev/ttyUSB99", 115200)
    assert "usb:VID:PID" in caught.value.hint
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DeviceError, match="is not a serial port"):
        SerialTransport(str(tmp_path / "notes.txt"))


def test_a_port_another_program_holds_is_busy(pty):
    _, path = pty()
    first = SerialTransport(path)
    try:
        with pytest.raises(DeviceError, match=f"^serial port {path} is busy"):
            SerialTransport(path)
    finally:
        first.close()


# Permission ----------------------------------------------------------------------------------------


def test_permission_says_which_group_to_join():
    err = ports.permission_error("/dev/ttyUSB0", group="dialout", user="ana", member=False, in_session=False)
    assert str(err) == ("cannot open /dev/ttyUSB0: permission denied; it belongs to group dialout, which ana is "
                        "not in")
    assert err.hint == "sudo usermod -aG dialout $USER, then log in again"


def test_permission_when_joined_after_this_login():
    err = ports.permission_error("/dev/ttyACM0", group="uucp", user="ana", member=True, in_session=False)
    assert str(err).endswith("it belongs to group uucp, which ana joined after this login")
    assert err.hint == "log out and in again (or run `newgrp uucp`)"


def test_permission_when_the_group_may_not_write():
    err = ports.permission_error("/dev/ttyUSB0", group="dialout", user="ana", member=True, in_session=True,
                                 mode=0o20640)
    assert str(err).endswith("which ana is in, but the group may not read and write it (mode crw-r-----)")


def test_permission_for_a_root_device_and_an_unknown_group():
    assert "udev rule" in ports.permission_error("/dev/ttyS1", group="root", user="ana", member=False,
                                                 in_session=False).hint
    assert str(ports.permission_error("/dev/ttyS1", group=None, user="ana", member=False, in_session=False)) == \
        "cannot open /dev/ttyS1: permission denied"


def test_opening_a_port_of_a_group_we_are_not_in(pty):
    """For real: a pty given to a group, opened by a user outside it (as root, a forked child drops to nobody)."""
    import grp
    import pwd

    _, path = pty()
    group = next((g for g in ("dialout", "uucp", "tty") if _has_group(g)), None)
    if os.geteuid() != 0 or group is None:
        os.chmod(path, 0)
        with pytest.raises(DeviceError, match="permission denied"):
            SerialTransport(path)
        return
    os.chown(path, 0, grp.getgrnam(group).gr_gid)
    os.chmod(path, 0o660)
    nobody = pwd.getpwuid(65534).pw_name
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # everything it needs is imported already: nobody may not read the interpreter's files
        answer = "opened"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            SerialTransport(path)
        except DeviceError as exc:
            answer = f"{exc}\n{exc.hint}"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            answer = f"{type(exc).__name__}: {exc}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        answer = reader.read()
    os.waitpid(child, 0)
    assert answer.splitlines() == [
        f"cannot open {path}: permission denied; it belongs to group {group}, which {nobody} is not in",
        f"sudo usermod -aG {group} $USER, then log in again"]


def _has_group(name):
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


# edgelm ports ----------------------------------------------------------------------------------------



def _runner_left_running(workdir, record, host_end):
    """What `edgelm flash` leaves: the host end of the link, and running.json naming the runner."""
    state = workdir / STATE
    (state / "link").mkdir(parents=True)
    (state / "link" / "host").symlink_to(host_end)
    (state / "running.json").write_text(json.dumps({"runner_pid": record["pid"], "port": str(state / "link/host"),
                                                    "processes": {"runner": record}}))
    return str(state / "link" / "host")


def test_ports_json_lists_a_runners_pseudo_terminal(workdir, sleeper, pty, monkeypatch):
    _, host_end = pty()
    link = _runner_left_running(workdir, identity(sleeper.pid), host_end)
    result = CliRunner().invoke(main, ["ports", "--json", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    listed = {p["device"]: p for p in json.loads(result.output)}
    assert listed[str(workdir.resolve() / STATE / "link/host")] == {
        "device": link, "kind": "pty", "vid": None, "pid": None, "serial_number": None, "manufacturer": None,
        "product": None, "description": "edgelm link to local:host runner", "hwid": f"pty {host_end}",
        "location": None, "usb_id": None, "spec": link}
    monkeypatch.setattr(cli.console, "width", 240)  # a row on one line
    table = CliRunner().invoke(main, ["ports", "--wide", "--workdir", str(workdir)])
    assert table.exit_code == 0
    row = next(line for line in table.output.splitlines() if link in line)
    assert [cell.strip() for cell in row.split("│")[1:6]] == [link, "pty", "-", "edgelm link to local:host runner", ""]


@pytest.mark.parametrize("deep", [False, True])
def test_ports_fit_80_columns_and_never_cut_the_path(request, sleeper, pty, deep):
    """At 80 columns every line fits, and the one thing to copy, the link's path, is there whole: in a
    table when it fits beside its description, else on a line of its own (the terminal wraps it)."""
    short = tempfile.mkdtemp(prefix="edgelm-")  # a pytest folder's path is long already
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    work = Path(short) / ("a-workdir-whose-path-is-longer-than-a-terminal-is-wide" * deep) / "work"
    _, host_end = pty()
    link = _runner_left_running(work, identity(sleeper.pid), host_end)
    assert (len(link) > 80) == deep
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    shown = subprocess.run([sys.executable, "-m", "toolchain.cli", "ports", "--workdir", str(work)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    print(shown.stdout)
    lines = shown.stdout.splitlines()
    assert "…" not in shown.stdout
    assert [line for line in lines if len(line) > 80] == ([link] if deep else [])
    row = next(line for line in lines if link in line)
    assert row.split()[0] == link and "edgelm link to local:host runner" in " ".join(shown.stdout.split())


def test_a_link_whose_runner_has_gone_is_not_listed(workdir, sleeper, pty):
    _, host_end = pty()
    record = identity(sleeper.pid)
    record["start_time"] += 1  # the pid now names another process
    _runner_left_running(workdir, record, host_end)
    result = CliRunner().invoke(main, ["ports", "--json", "--workdir", str(workdir)])
    assert result.exit_code == 0 and all(p["kind"] != "pty" for p in json.loads(result.output))


def test_a_link_to_something_that_is_no_pty_is_not_listed(tmp_path):
    (tmp_path / "file").touch()
    assert ports.edgelm_link(str(tmp_path / "file"), "local", "host") is None
    assert ports.edgelm_link(str(tmp_path / "gone"), "local", "host") is None


def test_flash_then_ports_lists_its_link(workdir, standin_bundle):
    flashed = run_edgelm("flash", standin_bundle("good"), "--target", "local", "--workdir", str(workdir))
    assert flashed.returncode == 0, flashed.stderr
    info = json.loads((workdir / STATE / "running.json").read_text())
    try:
        listed = run_edgelm("ports", "--json", "--workdir", str(workdir))
        assert listed.returncode == 0, listed.stderr
        links = [p for p in json.loads(listed.stdout) if p["kind"] == "pty"]
        assert [(p["device"], p["description"]) for p in links] == [(info["port"], "edgelm link to local:host runner")]
    finally:
        run_edgelm("stop", "--board", "host", "--target", "local", "--workdir", str(workdir))
        wait_gone([info["processes"]["runner"], info["processes"]["socat"]])
