"""The systemd unit: rendered for a user and for a dynamic user, hostile values refused, checked by
systemd-analyze where this machine has it, and the install steps for SSH and for an SD card."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from toolchain.boards import Board
from toolchain.bundle import render
from toolchain.deploy import service
from toolchain.errors import InputError


def board(**kw) -> Board:
    fields = dict(name="pizero2w", description="Raspberry Pi Zero 2 W", arch="aarch64", triple="aarch64-linux-gnu",
                  cpu_flags=("-mcpu=cortex-a53",), cores=4, threads=4, ram_mb=512, glibc="2.36",
                  serial_device="/dev/serial0", baud=921600, default_quant="8da4w", qemu_cpu="cortex-a53")
    return Board(**(fields | kw))


def unit(**kw) -> str:
    args = dict(board=board(), release_dir="/home/pi/.local/share/edgelm/current",
                data_dir="/home/pi/.local/share/edgelm", device="/dev/serial0", user="pi", group="dialout")
    return service.render_unit(**(args | kw))


def sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values, failing on anything that is not a section, key=value or comment."""
    out: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = out.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None and key.isidentifier(), f"not a unit line: {line!r}"
        current.setdefault(key, []).append(value)
    return out


def test_a_unit_for_a_user():
    u = sections(unit(threads=3))
    s = u["Service"]
    assert s["User"] == ["pi"] and "DynamicUser" not in s
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["ExecStart"] == ["/home/pi/.local/share/edgelm/edgelm-serve /home/pi/.local/share/edgelm "
                              "--serial /dev/serial0 --baud 921600 --threads 3"]
    assert s["RuntimeDirectory"] == ["edgelm-runner"] and s["RuntimeDirectoryPreserve"] == ["yes"]
    assert s["WorkingDirectory"] == ["/home/pi/.local/share/edgelm"]
    assert s["Restart"] == ["on-failure"] and s["RestartSec"] == [str(service.RESTART_SEC)]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["full"] and s["PrivateTmp"] == ["yes"]
    assert s["ProtectHome"] == ["read-only"]  # a release in a home folder stays readable
    assert "PrivateDevices" not in s  # it would hide the serial device
    assert u["Install"] == {"WantedBy": ["multi-user.target"]}
    assert u["Unit"]["Description"] == ["edgelm runner (pizero2w) on /dev/serial0"]
    assert "@" not in unit()  # every token filled


def test_a_unit_for_a_dynamic_user_with_the_boards_threads():
    text = unit(user=None, release_dir=PurePosixPath("/opt/edgelm/current"), data_dir="/opt/edgelm",
                board=board(threads=2, cores=4))
    s = sections(text)["Service"]
    assert s["DynamicUser"] == ["yes"] and "User" not in s
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["ExecStart"][0].startswith("/opt/edgelm/edgelm-serve /opt/edgelm --serial ")
    assert s["ExecStart"][0].endswith(" --threads 2")


@pytest.mark.parametrize("kw, message", [
    ({"release_dir": "/opt/x;rm"}, "release_dir='/opt/x;rm' is not an absolute path"),
    ({"release_dir": "/opt/x\nExecStartPre=/bin/sh"}, "is not an absolute path"),
    ({"data_dir": "/opt/edgelm data"}, "data_dir='/opt/edgelm data' is not an absolute path"),
    ({"data_dir": "opt/edgelm"}, "is not an absolute path"),
    ({"data_dir": "/opt/%h"}, "is not an absolute path"),
    ({"data_dir": "/opt/$HOME"}, "is not an absolute path"),
    ({"data_dir": "/opt/'x'"}, "is not an absolute path"),
    ({"data_dir": "/opt/x\\ny"}, "is not an absolute path"),
    ({"data_dir": "/opt//x"}, "is not an absolute path"),
    ({"data_dir": "/opt/-x"}, "is not an absolute path"),
    ({"data_dir": "/opt/../etc"}, "'..' component"),
    ({"data_dir": "/" + "a" * 2000}, "is not an absolute path"),
    ({"device": "/dev/tty S0"}, "device='/dev/tty S0' is not an absolute path"),
    ({"device": "/tmp/ttyS0"}, "is not under /dev"),
    ({"user": "root\nExecStartPre=/bin/sh -c id"}, "user='root\\\\nExecStartPre"),
    ({"user": "root"}, "must not run as root"),
    ({"user": "Pi"}, "is not a user name"),
    ({"user": "pi;id"}, "is not a user name"),
    ({"user": "a" * 33}, "is not a user name"),
    ({"user": "%u"}, "is not a user name"),
    ({"group": "dialout uucp"}, "is not a group name"),
    ({"group": "root"}, "group='root' is refused"),
    ({"group": "tty"}, "may write to every terminal"),
    ({"threads": 0}, "threads=0 must be an integer"),
    ({"threads": 1025}, "threads=1025"),
    ({"threads": True}, "threads=True"),
    ({"threads": "4"}, "threads='4'"),
    ({"user": None}, "home folder, which the dynamic user"),
    ({"release_dir": "/tmp/edgelm/current"}, "PrivateTmp"),
    ({"data_dir": "/var/tmp"}, "PrivateTmp"),
])
def test_hostile_or_unusable_values_are_refused(kw, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        unit(**kw)


@pytest.mark.parametrize("user", ["pi", None])
def test_systemd_analyze_verifies_the_unit(tmp_path, user):
    """Where this machine has systemd-analyze, the unit verifies in a root holding the runner it names
    (and the system's units, for the targets it depends on); the structure is checked everywhere."""
    text = unit(user=user, release_dir="/opt/edgelm/current", data_dir="/opt/edgelm")
    assert sections(text)["Service"]["ExecStart"][0].startswith("/opt/edgelm/edgelm-serve ")
    analyze = shutil.which("systemd-analyze")
    system_units = Path("/usr/lib/systemd/system")
    if analyze is None or not system_units.is_dir():
        return  # structure only: this machine cannot verify units
    root = tmp_path / "root"
    (root / "opt/edgelm/current").mkdir(parents=True)
    shutil.copy("/bin/true", root / "opt/edgelm/current/runner")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    for entry in service.rootfs_files(text, "/opt/edgelm"):
        dest = root / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if entry.link is not None:
            dest.symlink_to(entry.link)
        else:
            dest.write_text(entry.text)
            dest.chmod(entry.mode)
    unit_file = root / service.UNIT_PATH.relative_to("/")
    r = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", str(unit_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Unknown" not in r.stderr and "ignoring" not in r.stderr, r.stderr


def test_install_commands_for_ssh():
    steps = service.install_commands("/home/pi/.local/share/edgelm/edgelm-runner.service")
    assert steps == (
        ("sudo", "-n", "install", "-m", "0644", "/home/pi/.local/share/edgelm/edgelm-runner.service",
         "/etc/systemd/system/edgelm-runner.service"),
        ("sudo", "-n", "systemctl", "daemon-reload"),
        ("sudo", "-n", "systemctl", "enable", "edgelm-runner.service"),
        ("sudo", "-n", "systemctl", "restart", "edgelm-runner.service"))
    assert all(shlex.split(shlex.join(s)) == list(s) for s in steps)
    with pytest.raises(InputError):
        service.install_commands("/tmp/x; reboot")
    assert service.uninstall_commands()[0] == ("sudo", "-n", "systemctl", "disable", "--now", "edgelm-runner.service")


def test_rootfs_files_enable_the_unit_on_a_card():
    text = unit(user=None, release_dir="/opt/edgelm/current", data_dir="/opt/edgelm")
    serve, f, link = service.rootfs_files(text, "/opt/edgelm")
    assert serve.path == PurePosixPath("opt/edgelm/edgelm-serve") and serve.mode == 0o755
    assert serve.text == service.serve_script() and serve.text.startswith("#!/bin/sh\n")
    assert f.path == PurePosixPath("etc/systemd/system/edgelm-runner.service") and f.text == text and f.mode == 0o644
    assert link.path == PurePosixPath("etc/systemd/system/multi-user.target.wants/edgelm-runner.service")
    assert link.link == "/etc/systemd/system/edgelm-runner.service" and link.text is None
    with pytest.raises(ValueError):
        service.RootfsEntry(PurePosixPath("../etc/x"), text="")
    with pytest.raises(ValueError):
        service.RootfsEntry(PurePosixPath("etc/x"), text="", link="/y")


def test_the_unit_template_is_not_part_of_the_runners_cmake_project():
    names = [p.name for p in render.firmware_sources()]
    assert service.TEMPLATE.is_file() and service.TEMPLATE.name not in names
    assert "CMakeLists.txt" in names
