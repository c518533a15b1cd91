"""`edgelm doctor` (issue 25): one line per capability, the install line of what is missing, --json,
--for; every "not installed" error points to it (and none to `make setup`: an installed package has
no Makefile)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolchain import doctor
from toolchain.errors import DeviceError, UsageError

REPO = Path(__file__).resolve().parents[2]

# Programs the test suite runs by name that are not found with shutil.which(...) in it
RUN_BY_TESTS = {"sshd", "ser2net", "labgrid-coordinator", "labgrid-exporter", "mke2fs", "debugfs", "faketime",
                "qemu-aarch64", "qemu-system-aarch64", "qemu-system-arm", "socat", "ssh", "ssh-keygen", "cmake",
                "aarch64-linux-gnu-g++", "arm-none-eabi-gcc", "clang", "chromium", "g++"}
# Found with shutil.which but part of every Linux system (coreutils, util-linux, procps, systemd), or optional
BASE_SYSTEM = {"sh", "uname", "getconf", "ldd", "sed", "awk", "dirname", "df", "id", "cat", "readlink", "stat", "ls",
               "ps", "tr", "cut", "systemd-analyze", "chromium-browser"}


def edgelm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=60)


def known(name: str) -> bool:
    names = set(doctor.TOOLS) | set(doctor.ALIASES) | {t.check for t in doctor.TOOLS.values()}
    return name in names


def which_literals() -> set[str]:
    found = set()
    for folder in ("tests", "toolchain", "benchmarks", "examples"):
        for path in (REPO / folder).rglob("*.py"):
            found |= set(re.findall(r"shutil\.which\(\s*f?\"([A-Za-z0-9_.+/-]+)\"", path.read_text()))
    return found


def test_doctor_json_names_every_tool_the_test_suite_uses():
    proc = edgelm("doctor", "--json")
    data = json.loads(proc.stdout)
    named = set(data["tools"]) | {doctor.ALIASES.get(n, n) for n in data["tools"]}
    used = (which_literals() | RUN_BY_TESTS) - BASE_SYSTEM
    assert used, "no tool found in the tests"
    for name in sorted(used):
        assert known(name), f"{name} is used by the tests or the code but `edgelm doctor` does not know it"
        assert doctor.tool(name).name in named, name
    assert data["torch"]["installed"] and data["torch"]["build"] == "CPU"
    assert [c["name"] for c in data["capabilities"]] == [c.name for c in doctor.CAPABILITIES]
    for cap in data["capabilities"]:
        assert set(cap) >= {"name", "ready", "missing", "line", "install", "tools"}


def test_a_tool_taken_off_path_makes_its_capability_not_ready_with_the_install_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for t in doctor.TOOLS.values():
        if t.kind in ("command", "script") and t.name != "socat" and (found := shutil.which(t.check)):
            (bin_dir / t.check).symlink_to(found)
    assert (bin_dir / "qemu-aarch64").exists() or shutil.which("qemu-aarch64") is None
    before = edgelm("doctor", "--json", "--for", "run:rpi5")
    proc = edgelm("doctor", "--json", "--for", "run:rpi5", env={"PATH": str(bin_dir)})
    assert json.loads(before.stdout)["ready"] and before.returncode == 0, before.stdout + before.stderr
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    caps = {c["name"]: c for c in data["capabilities"]}
    for name in ("qemu", "local"):
        assert not caps[name]["ready"] and caps[name]["missing"] == ["socat"]
        assert caps[name]["install"]["apt"] == "sudo apt-get install --no-install-recommends socat"
        assert caps[name]["install"]["macos"] == "brew install socat"
    assert caps["export"]["ready"] and caps["ssh"]["ready"]
    assert data["for"] == ["export", "build-arm64", "qemu"] and not data["ready"]
    text = edgelm("doctor", "--for", "run:rpi5", env={"PATH": str(bin_dir)})
    assert text.returncode == 1
    qemu_line = next(x for x in text.stdout.splitlines() if x[1:].startswith("qemu "))
    assert qemu_line.startswith("*qemu") and "NOT READY: socat: sudo apt-get install --no-install-recommends socat" \
        in qemu_line, text.stdout
    assert text.stdout.splitlines()[1].startswith("torch 2.13.0")


def test_text_is_one_line_per_capability():
    proc = edgelm("doctor")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("edgelm ") and lines[1].startswith("torch ")
    assert [x.split()[0] for x in lines[2:]] == [c.name for c in doctor.CAPABILITIES]
    assert proc.returncode == 0  # nothing asked for: a report, not a verdict


@pytest.mark.parametrize(("spec", "caps"), [
    ("run:rpi5", ["export", "build-arm64", "qemu"]),
    ("run:host", ["export", "build-host", "local"]),
    ("run:rpi5:ssh://pi@raspberrypi.local", ["export", "build-arm64", "ssh"]),
    ("run:rpi4:qemu-system", ["export", "build-arm64", "image"]),
    ("run:rpi5:labgrid://place", ["export", "build-arm64", "farm"]),
    ("run:rpi5:dir:/media/boot", ["export", "build-arm64"]),
    ("build:rpi5", ["export", "build-arm64"]),
    ("run:corstone-300", ["export", "arm"]),
    ("image", ["image"]),
    ("export", ["export"]),
])
def test_for_names_the_capabilities_a_job_needs(spec, caps):
    assert doctor.wanted(spec) == caps


def test_for_test_and_all_ask_for_everything():
    assert doctor.wanted("test") == doctor.wanted("all") == [c.name for c in doctor.CAPABILITIES]


@pytest.mark.parametrize("spec", ["run", "fly:rpi5", "nonsense", "run:rpi5:telnet"])
def test_an_unknown_for_is_a_usage_error(spec):
    with pytest.raises(UsageError):
        doctor.wanted(spec)


def test_an_unknown_board_in_for_is_a_usage_error():
    proc = edgelm("doctor", "--for", "run:no-such-board")
    assert proc.returncode == 2 and "no-such-board" in proc.stderr


def test_not_installed_errors_point_to_doctor_not_to_make_setup(monkeypatch, tmp_path):
    from toolchain import boards
    from toolchain.deploy import qemu

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeviceError) as err:
        qemu.emulator(boards.get("rpi5"))
    assert "sudo apt-get install --no-install-recommends qemu-user" in err.value.hint
    assert "edgelm doctor" in err.value.hint
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in (REPO / "toolchain").rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if "make setup" in line]
    assert not offenders, offenders


def test_every_capability_names_known_tools_with_an_install_line():
    for cap in doctor.CAPABILITIES:
        for name in cap.tools:
            t = doctor.TOOLS[name]
            assert t.install() or name in ("apt-get", "dpkg-deb"), name
            assert t.why, name
    for t in doctor.TOOLS.values():
        for line in t.install().values():
            assert "make setup" not in line
