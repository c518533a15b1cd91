"""Preflight: the probe run for real with sh, its output parsed strictly, and every verdict's line."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from toolchain import boards
from toolchain.boards import Board
from toolchain.deploy import preflight
from toolchain.deploy.preflight import Check, Facts, Needs, Process, SerialFacts
from toolchain.errors import CapacityError, DeviceError, InputError

MIB = 1 << 20
SH = shutil.which("sh") or "/bin/sh"


def board(name="pizero2w", ram_mb=512, **kw) -> Board:
    fields = dict(name=name, description="Raspberry Pi Zero 2 W (RP3A0, 4x Cortex-A53)", arch="aarch64",
                  triple="aarch64-linux-gnu", cpu_flags=("-mcpu=cortex-a53",), cores=4, threads=4, ram_mb=ram_mb,
                  glibc="2.36", serial_device="/dev/serial0", baud=921600, default_quant="8da4w",
                  qemu_cpu="cortex-a53")
    return Board(**(fields | kw))


# Real figures: the runtime is what an aarch64 bundle of executorch 1.5.1 holds besides its program
# (runner + 5 libraries + manifest); the states are manifest.state_bytes at max_seq_len 512 (lfm2-350m:
# 6 attention layers x 2 x 8 kv heads x 512 x 64 x 4 bytes + 10 conv layers x 1024 x 2 x 4 bytes). The
# lfm2-350m figures were measured on 2026-11-29: `edgelm run --board pizero2w --model lfm2-350m` exported
# an 8da4w program of 268,464,256 bytes, built a pizero2w bundle around it and was refused with this line.
RUNTIME = 12_175_924  # an aarch64 bundle's runner, libraries and manifest (12,506,688 - 330,764 bytes)
TINY = {"name": "tiny", "program": 330_764, "state": 263_168}
LFM2_350M = {"name": "lfm2-350m", "program": 268_464_256, "state": 12_664_832, "runtime": 12_203_438}


def bundle_info(model, **kw):
    return {"format": "edgelm-bundle/1", "board": "pizero2w", "arch": "aarch64", "glibc_required": "2.34",
            "model_sha256": "ab" * 32, "size_bytes": model["program"] + model.get("runtime", RUNTIME),
            "max_seq_len": 512} | kw


def manifest(model):
    return {"program": {"file": "model.pte", "sha256": "ab" * 32, "size_bytes": model["program"],
                        "max_seq_len": 512, "state_bytes": model["state"]},
            "model": {"name": model["name"]}}


def needs(model=TINY, **kw) -> Needs:
    return Needs.of(bundle_info(model, **kw), manifest(model))


def facts(**kw) -> Facts:
    base = Facts(arch="aarch64", glibc="2.36", mem_total_bytes=427_000 * 1024, mem_available_bytes=350 * MIB,
                 disk_path="/home/pi", disk_free_bytes=20_000 * MIB, systemd=True, user="pi",
                 groups=("pi", "adm", "dialout", "sudo"), kernel_consoles=("tty1",), serial0_target="/dev/ttyS0",
                 serial=serial())
    return replace(base, **kw)


def serial(**kw) -> SerialFacts:
    base = SerialFacts(device="/dev/serial0", resolved="/dev/ttyS0", exists=True, char_device=True, group="dialout",
                       mode="660", readable=True, writable=True, holders=(), gettys=(), getty_unit="inactive")
    return replace(base, **kw)


def by_name(checks):
    return {c.name: c for c in checks}



# --------------------------------------------------------------------------------------------------
# The RAM need and the profile fit
# --------------------------------------------------------------------------------------------------

def test_the_ram_need_is_program_state_runtime_and_margin():
    n = needs(LFM2_350M)
    assert n.runtime_bytes == 12_203_438
    assert n.margin_bytes == 64 * MIB + (268_464_256 + 12_664_832) // 10
    assert n.ram_bytes == 268_464_256 + 12_664_832 + 12_203_438 + n.margin_bytes == 388_554_298
    assert n.disk_bytes == 268_464_256 + 12_203_438 + preflight.DISK_MARGIN_BYTES


def test_a_512_mb_pi_zero_2_w_is_refused_lfm2_350m_with_the_byte_counts():
    check = preflight.fit(board(), needs(LFM2_350M))
    assert not check.ok and check.kind == "capacity"
    assert check.line == (
        "RAM: lfm2-350m needs 388,554,298 bytes of RAM (program 268,464,256 + state 12,664,832 + runtime "
        "12,203,438 + margin 95,221,772); pizero2w's 512 MB leave 369,098,752 bytes for it "
        "(536,870,912 less 167,772,160 for the OS)")
    assert "--model tiny" in check.hint
    with pytest.raises(preflight.DoesNotFit) as err:
        preflight.require([check])
    assert isinstance(err.value, CapacityError) and err.value.exit_code == 4
    assert str(err.value) == "preflight: " + check.line


def test_a_512_mb_pi_zero_2_w_serves_tiny():
    check = preflight.fit(board(), needs(TINY))
    assert check.ok
    assert "tiny needs 79,938,113 bytes of RAM" in check.line
    preflight.require([check])


def test_lfm2_350m_fits_a_2_gb_board():
    assert preflight.fit(board("rpi4", ram_mb=2048), needs(LFM2_350M)).ok
    assert preflight.os_reserve_bytes(2048) == 256 * MIB and preflight.os_reserve_bytes(512) == 160 * MIB


@pytest.mark.parametrize("edit, field", [
    (lambda i, m: i.pop("size_bytes"), "size_bytes"),
    (lambda i, m: i.__setitem__("size_bytes", "12"), "size_bytes"),
    (lambda i, m: i.__setitem__("size_bytes", True), "size_bytes"),
    (lambda i, m: i.__setitem__("glibc_required", 2.34), "glibc_required"),
    (lambda i, m: m["program"].__setitem__("state_bytes", -1), "state_bytes"),
    (lambda i, m: i.__setitem__("size_bytes", 5), "less than its program"),
    (lambda i, m: i.__setitem__("model_sha256", "cd" * 32), "model_sha256"),
    (lambda i, m: i.__setitem__("arch", "riscv64"), "arch="),
    (lambda i, m: i.__setitem__("glibc_required", "two"), "glibc_required="),
])
def test_needs_refuse_a_bundle_description_that_does_not_hold(edit, field):
    info, man = bundle_info(TINY), manifest(TINY)
    edit(info, man)
    with pytest.raises(InputError, match=field):
        Needs.of(info, man)


# --------------------------------------------------------------------------------------------------
# Parsing the probe's output
# --------------------------------------------------------------------------------------------------

GOOD = """probe=edgelm-preflight/1
arch=aarch64
glibc=2.36
mem_total_kb=437500
mem_available_kb=358400
disk_path=/home/pi
disk_free_kb=20480000
systemd=yes
user=pi
groups=pi adm dialout cdrom sudo audio video plugdev games users input render netdev gpio i2c spi
kernel_consoles=ttyS0 tty1
serial0_target=/dev/ttyS0
serial_device=/dev/serial0
serial_resolved=/dev/ttyS0
serial_exists=yes
serial_char=yes
serial_group=tty
serial_mode=620
serial_readable=no
serial_writable=yes
serial_holders=612:agetty 733:minicom
serial_getty=612:agetty
serial_getty_unit=active
end=ok
"""


def test_parse_a_raspberry_pi_with_a_getty_on_its_uart():
    f = preflight.parse_facts(GOOD)
    assert f.arch == "aarch64" and f.glibc == "2.36" and f.systemd
    assert f.mem_available_bytes == 358400 * 1024 and f.disk_free_bytes == 20480000 * 1024
    assert f.groups[:3] == ("pi", "adm", "dialout") and f.kernel_consoles == ("ttyS0", "tty1")
    s = f.serial
    assert s is not None and s.resolved == "/dev/ttyS0" and s.names == {"serial0", "ttyS0"}
    assert s.holders == (Process(612, "agetty"), Process(733, "minicom")) and s.gettys == (Process(612, "agetty"),)
    assert s.getty_unit == "active" and s.group == "tty" and not s.readable and s.writable


def test_parse_without_a_serial_device_and_with_unknowns():
    text = GOOD.split("serial_device=")[0] + "serial_device=\nend=ok\n"
    text = text.replace("glibc=2.36", "glibc=").replace("mem_available_kb=358400", "mem_available_kb=")
    f = preflight.parse_facts(text)
    assert f.serial is None and f.glibc is None and f.mem_available_bytes is None


def test_a_three_part_glibc_version_keeps_major_minor():
    assert preflight.parse_facts(GOOD.replace("glibc=2.36", "glibc=2.36.1")).glibc == "2.36"


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("arch=aarch64\n", "arch=aarch64\nevil=1\n"), "unknown key 'evil'"),
    (GOOD.replace("user=pi\n", "user=pi\nuser=root\n"), "'user' given twice"),
    (GOOD.replace("user=pi\n", "user pi\n"), "line 9 'user pi' is not key=value"),
    (GOOD.replace("user=pi\n", "user=pi;rm -rf /\n"), "is not key=value in the probe's characters"),
    (GOOD.replace("user=pi\n", "user=pi\r\n"), "is not key=value"),
    (GOOD.replace("user=pi\n", "user=\x1b[2Jpi\n"), "is not key=value"),
    (GOOD.replace("user=pi\n", "user=pi\u2028groups=root\n"), "is not key=value"),
    (GOOD.replace("user=pi\n", "USER=pi\n"), "is not key=value"),
    (GOOD.replace("mem_available_kb=358400", "mem_available_kb=-5"), "is not a number"),
    (GOOD.replace("mem_available_kb=358400", "mem_available_kb=1" + "0" * 30), "is not a number"),
    (GOOD.replace("systemd=yes", "systemd=maybe"), "is not yes or no"),
    (GOOD.replace("glibc=2.36", "glibc=musl"), "is not a version"),
    (GOOD.replace("612:agetty 733", "612:agetty 733x"), "not PID:COMMAND"),
    (GOOD.replace("end=ok\n", ""), "ended early"),
    (GOOD.replace("end=ok\n", "end=ok\narch=x86_64\n"), "comes after the end line"),
    (GOOD.replace("probe=edgelm-preflight/1\n", ""), "not the probe's first line"),
    ("Welcome to Raspberry Pi OS!\n" + GOOD, "line 1 'Welcome to Raspberry Pi OS!'"),
    (GOOD.replace("serial_char=yes\n", ""), "lacks 'serial_char'"),
    (GOOD.replace("serial_device=/dev/serial0", "serial_device="), "has 'serial_resolved' but no serial device"),
    ("probe=edgelm-preflight/1\n" + "x" * 70_000, "printed 70,025 characters"),
])
def test_parse_refuses_hostile_or_malformed_output_naming_the_line(text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        preflight.parse_facts(text)


def test_parse_cuts_absurdly_long_values():
    f = preflight.parse_facts(GOOD.replace("disk_path=/home/pi", "disk_path=/" + "a" * 1000))
    assert len(f.disk_path) == preflight.MAX_VALUE_CHARS


# --------------------------------------------------------------------------------------------------
# The verdict, one line each
# --------------------------------------------------------------------------------------------------

def test_a_ready_board_passes_every_check():
    checks = preflight.judge(facts(), needs(TINY), board())
    assert [c.name for c in checks] == ["arch", "glibc", "ram", "disk", "serial", "serial-getty", "serial-console",
                                        "serial-holders", "serial-access"]
    assert all(c.ok for c in checks), [c.line for c in checks if not c.ok]
    preflight.require(checks)
    assert by_name(checks)["ram"].line == (
        "RAM: tiny needs 79,938,113 bytes of RAM (program 330,764 + state 263,168 + runtime 12,175,924 + margin "
        "67,168,257); the board has 367,001,600 available of 437,248,000")


def test_arch_mismatch_a_32_bit_userland():
    c = by_name(preflight.judge(facts(arch="armv7l"), needs(), board()))["arch"]
    assert not c.ok and c.line == "architecture: the board is armv7l (uname -m); the pizero2w bundle needs aarch64"
    assert "64-bit OS" in c.hint


def test_glibc_older_than_the_bundle_needs():
    c = by_name(preflight.judge(facts(glibc="2.31"), needs(), board()))["glibc"]
    assert not c.ok and c.kind == "capacity"
    assert c.line == ("glibc: the board has 2.31 (the pizero2w profile says 2.36); the bundle's binaries need "
                      "2.34 or newer")
    c = by_name(preflight.judge(facts(glibc=None), needs(), board()))["glibc"]
    assert not c.ok and "has none" in c.line


def test_ram_short_on_the_board_itself():
    c = by_name(preflight.judge(facts(mem_available_bytes=300 * MIB), needs(LFM2_350M), board()))["ram"]
    assert not c.ok and c.line == (
        "RAM: lfm2-350m needs 388,554,298 bytes of RAM (program 268,464,256 + state 12,664,832 + runtime 12,203,438 "
        "+ margin 95,221,772); the board has 314,572,800 available of 437,248,000")
    c = by_name(preflight.judge(facts(mem_available_bytes=None), needs(), board()))["ram"]
    assert not c.ok and "no MemAvailable" in c.line


def test_disk_short():
    c = by_name(preflight.judge(facts(disk_free_bytes=10 * MIB), needs(), board()))["disk"]
    assert not c.ok and c.line == "disk: the release needs 16,700,992 bytes; /home/pi has 10,485,760 free"


def test_serial_device_missing_says_how_to_enable_the_uart():
    checks = preflight.judge(facts(serial=serial(exists=False, char_device=False, resolved=None)), needs(), board())
    assert [c.name for c in checks][-1] == "serial"  # nothing more to say about a missing device
    c = checks[-1]
    assert not c.ok and c.line == "serial: /dev/serial0 does not exist on the board"
    assert "do_serial_hw 0" in c.hint and "enable_uart=1" in c.hint
    usb = serial(device="/dev/ttyUSB0", resolved=None, exists=False, char_device=False)
    assert "plug the adapter in" in preflight.judge(facts(serial=usb), needs(), board())[-1].hint


def test_serial_device_not_a_char_device():
    c = preflight.judge(facts(serial=serial(char_device=False)), needs(), board())[-1]
    assert not c.ok and c.line == "serial: /dev/serial0 (-> /dev/ttyS0) is not a character device"


def test_a_getty_on_the_uart_says_how_to_free_it():
    s = serial(gettys=(Process(612, "agetty"),), holders=(Process(612, "agetty"),), getty_unit="active")
    checks = by_name(preflight.judge(facts(serial=s), needs(), board()))
    c = checks["serial-getty"]
    assert not c.ok and c.line == ("serial: a login console (getty) runs on /dev/serial0 (-> /dev/ttyS0): "
                                   "pid 612 (agetty), serial-getty@ttyS0.service active")
    assert "sudo raspi-config nonint do_serial_cons 1" in c.hint
    assert "sudo systemctl disable --now serial-getty@ttyS0.service" in c.hint
    assert "console=serial0,115200" in c.hint and "/boot/firmware/cmdline.txt" in c.hint
    assert checks["serial-holders"].ok  # the getty is reported once, as a getty


def test_a_kernel_console_on_the_uart():
    for consoles in (("serial0", "tty1"), ("ttyS0",)):
        c = by_name(preflight.judge(facts(kernel_consoles=consoles), needs(), board()))["serial-console"]
        assert not c.ok and c.line.startswith("serial: the kernel's console is on /dev/serial0 (-> /dev/ttyS0) ")
        assert "cmdline.txt" in c.hint
    # a console on the other UART is not this device's
    other = facts(kernel_consoles=("ttyAMA0",))
    assert by_name(preflight.judge(other, needs(), board()))["serial-console"].ok
    usb = facts(serial=serial(device="/dev/ttyUSB0", resolved="/dev/ttyUSB0"), kernel_consoles=("serial0",))
    assert by_name(preflight.judge(usb, needs(), board()))["serial-console"].ok


def test_held_by_another_process():
    s = serial(holders=(Process(733, "minicom"),))
    c = by_name(preflight.judge(facts(serial=s), needs(), board()))["serial-holders"]
    assert not c.ok and c.line == "serial: /dev/serial0 (-> /dev/ttyS0) is held by pid 733 (minicom)"
    assert "kill 733" in c.hint


def test_held_by_edgelms_own_runner_is_fine():
    s = serial(holders=(Process(812, "runner"),))
    c = by_name(preflight.judge(facts(serial=s), needs(), board()))["serial-holders"]
    assert c.ok and "edgelm's runner (pid 812 (runner))" in c.line


def test_user_not_in_the_devices_group():
    s = serial(readable=False, writable=False)
    c = by_name(preflight.judge(facts(serial=s, groups=("pi", "sudo")), needs(), board()))["serial-access"]
    assert not c.ok and c.line == ("serial: pi is not in group dialout, which owns /dev/serial0 (-> /dev/ttyS0) "
                                   "(mode 660, group dialout)")
    assert c.hint == "sudo usermod -aG dialout pi, then log in again"


def test_a_device_a_login_console_owns_is_not_cured_by_joining_tty():
    s = serial(group="tty", mode="620", readable=False, writable=True, getty_unit="active")
    c = by_name(preflight.judge(facts(serial=s), needs(), board()))["serial-access"]
    assert not c.ok and c.line == ("serial: pi cannot read and write /dev/serial0 (-> /dev/ttyS0) (mode 620, group "
                                   "tty: a login console's)")
    assert "usermod" not in c.hint and "do_serial_cons 1" in c.hint


def test_in_the_group_and_still_no_access():
    c = by_name(preflight.judge(facts(serial=serial(readable=False, mode="600")), needs(), board()))["serial-access"]
    assert not c.ok and "cannot read and write" in c.line and "udev" in c.hint


def test_require_names_the_first_failure_and_counts_the_rest():
    bad = facts(arch="armv7l", serial=serial(holders=(Process(733, "minicom"),), writable=False),
                groups=("pi",))
    checks = preflight.judge(bad, needs(), board())
    with pytest.raises(preflight.PreflightFailed) as err:
        preflight.require(checks)
    assert isinstance(err.value, DeviceError) and not isinstance(err.value, CapacityError)
    assert err.value.exit_code == 6
    assert str(err.value) == ("preflight: architecture: the board is armv7l (uname -m); the pizero2w bundle needs "
                              "aarch64 (and 2 more failed check(s): serial-holders, serial-access)")
    assert err.value.checks == tuple(checks)


def test_a_check_is_one_line():
    with pytest.raises(ValueError):
        Check("x", True, "two\nlines")


# --------------------------------------------------------------------------------------------------
# The probe, run for real with sh on this machine
# --------------------------------------------------------------------------------------------------

def run_probe(*args, mode="stdin", env=None):
    if mode == "stdin":
        cmd = [SH, "-s", "--", *args]
        r = subprocess.run(cmd, input=preflight.PROBE_SCRIPT, capture_output=True, text=True, timeout=60, env=env)
    else:
        cmd = [SH, "-c", preflight.PROBE_SCRIPT, "sh", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return preflight.parse_facts(r.stdout)


def this_glibc():
    name, version = platform.libc_ver()
    return ".".join(version.split(".")[:2]) if name == "glibc" else None


@pytest.fixture
def pty():
    main, sub = os.openpty()
    yield os.ttyname(sub)
    os.close(main)
    os.close(sub)


@pytest.mark.parametrize("mode", ["stdin", "argv"])
def test_the_probe_on_this_machine_with_a_pty(tmp_path, pty, mode):
    f = run_probe(str(tmp_path / "data" / "edgelm"), pty, mode=mode)
    assert f.arch == platform.machine()
    assert f.glibc == this_glibc()
    assert 0 < f.mem_available_bytes <= f.mem_total_bytes
    assert f.disk_path == str(tmp_path)  # the data folder's nearest existing ancestor
    assert f.disk_free_bytes > 0
    assert f.systemd == os.path.isdir("/run/systemd/system")
    assert f.user and f.groups
    s = f.serial
    assert s is not None and s.device == pty and s.resolved == pty and s.exists and s.char_device
    assert s.readable and s.writable and s.group
    assert os.getpid() in [p.pid for p in s.holders]  # this test holds the pty open
    assert s.gettys == ()
    checks = by_name(preflight.judge(f, needs(arch=platform.machine(), glibc_required="2.17"),
                                     board("here", arch="x86_64", triple="x86_64-linux-gnu", qemu_cpu=None)))
    assert checks["arch"].ok and checks["glibc"].ok and checks["ram"].ok and checks["disk"].ok
    assert not checks["serial-holders"].ok and f"pid {os.getpid()}" in checks["serial-holders"].line


def test_the_probe_with_a_missing_device(tmp_path):
    f = run_probe(str(tmp_path), "/dev/edgelm-no-such-tty")
    assert f.disk_path == str(tmp_path)
    assert f.serial is not None and not f.serial.exists and not f.serial.char_device and f.serial.holders == ()
    c = preflight.judge(f, needs(arch=platform.machine(), glibc_required="2.17"),
                        board("here", arch="x86_64", triple="x86_64-linux-gnu", qemu_cpu=None))[-1]
    assert not c.ok and c.line == "serial: /dev/edgelm-no-such-tty does not exist on the board"


def test_the_probe_without_a_serial_device(tmp_path):
    f = run_probe(str(tmp_path))
    assert f.serial is None and f.arch == platform.machine()


def fake_getty(*args, code="import time; time.sleep(60)"):
    """A process whose command line reads /sbin/agetty ARGS (a Python sleeping under that name)."""
    return subprocess.Popen(["/sbin/agetty", "-c", code, *args], executable=sys.executable,
                            stdin=subprocess.DEVNULL)


def test_the_probe_without_fuser_scans_proc_and_sees_gettys(tmp_path, pty):
    """Without fuser the probe reads /proc/*/fd. A getty is a process called *getty* with the device as
    its controlling terminal (systemd's agetty: "agetty ... - vt220") or named in its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("uname", "getconf", "ldd", "sed", "awk", "dirname", "df", "id", "cat", "readlink", "stat", "ls",
                 "ps", "tr", "cut"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    getty_tty = fake_getty("-", "vt220", code=f"import os, time; os.setsid(); fd = os.open({pty!r}, os.O_RDWR); "
                                           "time.sleep(60)")
    getty_arg = fake_getty("-L", pty.removeprefix("/dev/"), "115200", "vt100")
    try:
        time.sleep(0.5)
        f = run_probe(str(tmp_path), pty, env={"PATH": str(bin_dir)})
    finally:
        for p in (getty_tty, getty_arg):
            p.kill()
            p.wait()
    s = f.serial
    assert s is not None
    assert {os.getpid(), getty_tty.pid} <= {p.pid for p in s.holders}  # this test and the first getty hold it
    assert sorted(p.pid for p in s.gettys) == sorted([getty_tty.pid, getty_arg.pid])
    assert {p.command for p in s.gettys} == {"agetty"}
    checks = by_name(preflight.judge(f, needs(arch=platform.machine(), glibc_required="2.17"),
                                      board("here", arch="x86_64", triple="x86_64-linux-gnu", qemu_cpu=None)))
    assert not checks["serial-getty"].ok and f"pid {getty_tty.pid} (agetty)" in checks["serial-getty"].line
    # the getty holding the device is reported as a getty; this test's own hold is the only other holder
    assert f"pid {os.getpid()}" in checks["serial-holders"].line
    assert f"pid {getty_tty.pid}" not in checks["serial-holders"].line


def test_the_probe_sanitizes_what_it_prints(tmp_path):
    """A data folder and a device named with a newline and shell text come back as one harmless line each."""
    hostile = str(tmp_path / "x\nuser=root;$(touch pwned)")
    f = run_probe(hostile, "/dev/x\nend=ok")
    assert f.disk_path == str(tmp_path)
    assert f.serial is not None and f.serial.device == "/dev/x_end_ok" and not f.serial.exists
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_a_missing_uart_gets_the_profiles_boot_lines_not_pi_4_knowledge():
    rpi5 = boards.get("rpi5")
    gpio = serial(device="/dev/ttyAMA0", resolved=None, exists=False, char_device=False)
    hint = preflight.judge(facts(serial=gpio), needs(), rpi5)[-1].hint
    assert "dtparam=uart0=on" in hint and "GPIO 14" in hint and "enable_uart" not in hint
    debug = serial(device="/dev/ttyAMA10", resolved=None, exists=False, char_device=False)
    assert "debug header" in preflight.judge(facts(serial=debug), needs(), rpi5)[-1].hint
    rpi4 = serial(device="/dev/ttyAMA0", resolved=None, exists=False, char_device=False)
    assert "enable_uart=1 and dtoverlay=disable-bt" in preflight.judge(facts(serial=rpi4), needs(),
                                                                         boards.get("rpi4"))[-1].hint
