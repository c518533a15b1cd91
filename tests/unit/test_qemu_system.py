"""The qemu-system target's pure parts and refusals (no QEMU is started here: tests/integration/test_image.py
boots the image), and the image builder's checks on what it is given."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from toolchain import boards
from toolchain.deploy import qemu_system
from toolchain.deploy.base import Capability, TargetOptions
from toolchain.errors import DeviceError, UsageError
from toolchain.image import builder

RPI5 = boards.get("rpi5")
OOM = ("[   73.059432] Out of memory: Killed process 141 (runner) total-vm:976004kB, anon-rss:616048kB, "
       "file-rss:315804kB, shmem-rss:2788kB, UID:0 pgtables:1976kB oom_score_adj:0\nKilled\n")


def test_the_console_says_why_the_runner_ended():
    rid = "r-0123456789abcdef"
    assert qemu_system.runner_exit("edgelm-service: starting runner of " + rid + "\n", RPI5) is None
    plain = f"edgelm-service: runner of {rid} exited with status 1\n"
    assert qemu_system.runner_exit(plain, RPI5) == "runner exited with status 1"
    assert qemu_system.runner_exit(plain, RPI5, release="r-ffffffffffffffff") is None  # another release's end
    why = qemu_system.runner_exit(OOM + f"edgelm-service: runner of {rid} exited with status 137\n", RPI5, rid)
    assert why.startswith("the board ran out of memory: the kernel killed the runner (Out of memory: Killed "
                          "process 141 (runner)") and why.endswith("rpi5 has 4096 MiB")


def test_what_the_guest_prints_is_shown_sanitized_and_cut():
    rid = "r-0123456789abcdef"
    hostile = ("Out of memory: Killed process 1 (runner) \x1b]0;owned\x07" + "A" * 5000 + "\n"
               f"edgelm-service: runner of {rid} exited with status 137\n")
    why = qemu_system.runner_exit(hostile, RPI5)
    assert "\x1b" not in why and "\x07" not in why and len(why) < 400


def test_the_target_is_made_of_power_store_service_and_link(tmp_path):
    image = tmp_path / "img"
    tgt = qemu_system.create(f"qemu-system:{image}", RPI5, tmp_path / "targets", TargetOptions())
    assert Capability.POWER in tgt.capabilities and Capability.DEPLOY in tgt.capabilities
    assert tgt.link.board_device == "/dev/ttyAMA0" and tgt.emulated and not tgt.rss_of_emulator
    other = qemu_system.create(f"qemu-system:{tmp_path / 'other'}", RPI5, tmp_path / "targets", TargetOptions())
    assert tgt.state != other.state  # one machine per image
    default = qemu_system.create("qemu-system", RPI5, tmp_path / "targets", TargetOptions())
    assert default.power.image_dir == default.state / "image" and default.power.build_if_missing


@pytest.mark.parametrize("spec, options, message", [
    ("qemu-systemx", TargetOptions(), "unknown target"),
    ("qemu-system", TargetOptions(port="/dev/ttyUSB0"), "wires its own UART"),
    ("qemu-system", TargetOptions(service=True), "wires its own UART"),
])
def test_options_that_do_not_apply_are_refused(tmp_path, spec, options, message):
    with pytest.raises(UsageError, match=message):
        qemu_system.create(spec, RPI5, tmp_path, options)


def test_the_host_board_has_no_image(tmp_path):
    with pytest.raises(UsageError, match="boots Arm board images; host is x86_64"):
        qemu_system.create("qemu-system", boards.get("host"), tmp_path, TargetOptions())


def test_a_board_that_is_off_is_said_to_be_off_and_nothing_is_run(tmp_path):
    tgt = qemu_system.create(f"qemu-system:{tmp_path / 'img'}", RPI5, tmp_path / "targets", TargetOptions())
    assert tgt.power.status()["on"] is False
    with pytest.raises(DeviceError, match="the emulated rpi5 is powered off"):
        tgt.store.current()  # no ssh is started
    assert tgt.runner.running() is None and "nothing serves" in tgt.runner.stop()
    assert tgt.runner.alive().startswith("the emulated board is off")


def test_a_machine_record_naming_another_process_is_stale(tmp_path):
    """A pid in machine.json that now names another process is not our QEMU: the board is off and
    nothing is signalled."""
    tgt = qemu_system.create(f"qemu-system:{tmp_path / 'img'}", RPI5, tmp_path / "targets", TargetOptions())
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        tgt.state.mkdir(parents=True)
        fake = {"process": {"pid": sleeper.pid, "start_time": 1, "cmdline": ["qemu-system-aarch64"]},
                "ssh_port": 1, "uart_port": 2}
        (tgt.state / qemu_system.MACHINE_FILE).write_text(json.dumps(fake))
        assert tgt.power.status()["on"] is False and not (tgt.state / qemu_system.MACHINE_FILE).exists()
        assert tgt.power.off() is False and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_public_key_must_be_one_openssh_key_line(tmp_path):
    good = tmp_path / "k.pub"
    good.write_text("ssh-ed25519 " + "A" * 68 + " me@host\n")
    assert builder.authorized_key(good).startswith("ssh-ed25519 ")
    for text in ["ssh-ed25519 " + "A" * 68 + "\ncommand=\"sh\" ssh-ed25519 " + "B" * 68,
                 "not a key", 'command="rm -rf /" ssh-ed25519 ' + "A" * 68]:
        good.write_text(text)
        with pytest.raises(UsageError, match="is not one OpenSSH public key line"):
            builder.authorized_key(good)


def test_a_folder_that_is_not_an_image_is_refused(tmp_path):
    with pytest.raises(UsageError, match="is not a board image"):
        builder.read_image(tmp_path)
    (tmp_path / builder.IMAGE_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(Exception, match="is not an edgelm-image/1 description"):
        builder.read_image(tmp_path)


@pytest.mark.parametrize("name", ["init.in", "edgelm-service.in"])
def test_the_guest_scripts_render_completely_and_parse(tmp_path, name):
    text = builder._render(name, {"@BOARD@": "rpi5", "@MODULES@": " ".join(builder.MODULES),
                                  "@DATA@": "/data/edgelm/rpi5", "@UART@": builder.UART})
    assert "@" not in text.replace("$@", "")
    script = tmp_path / name
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_the_data_disk_is_the_same_bytes_for_the_same_tree(tmp_path):
    def make(where: Path) -> str:
        tree = where / "tree"
        (tree / "edgelm" / "rpi5" / "releases" / "r-0123456789abcdef").mkdir(parents=True)
        (tree / "edgelm" / "rpi5" / "releases" / "r-0123456789abcdef" / "model.pte").write_bytes(b"\1" * 70000)
        (tree / "edgelm" / "rpi5" / "current").symlink_to("releases/r-0123456789abcdef")
        disk = where / "data.img"
        builder._data_disk(tree, disk, 16 << 20)
        return hashlib.sha256(disk.read_bytes()).hexdigest()

    one = make(tmp_path / "one")
    (tmp_path / "two").mkdir()
    assert make(tmp_path / "two") == one


@pytest.mark.parametrize("args, needle", [
    (["power", "on", "--board", "rpi5", "--target", "qemu"], "target 'qemu' has no power control"),
    (["power", "status", "--board", "host", "--target", "qemu-system"], "boots Arm board images; host is x86_64"),
    (["image", "--board", "host", "--out", "IMG"], "board images are for Arm boards; host is x86_64"),
    (["image", "--board", "rpi5", "--out", "IMG", "--bundle", "NOPE", "--model", "tiny"], "not both"),
    (["power", "on", "--board", "rpi5", "--target", "qemu-system:NOIMAGE"], "is not a board image"),
])
def test_cli_refusals_are_one_line(tmp_path, args, needle):
    from click.testing import CliRunner

    from toolchain.cli import main

    args = [a.replace("IMG", str(tmp_path / "img")).replace("NOIMAGE", str(tmp_path / "none")) for a in args]
    result = CliRunner().invoke(main, [*args, "--workdir", str(tmp_path / "work")])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "img").exists()


def test_a_folder_name_cannot_add_options_to_qemu_or_lines_to_ssh_config(tmp_path):
    odd = tmp_path / "img,readonly=off,file=x"
    tgt = qemu_system.create(f"qemu-system:{odd}", RPI5, tmp_path / "targets", TargetOptions())

    class Img:
        kernel, initramfs, data = odd / "k", odd / "i", odd / "data.img"

    argv = tgt.power.argv(Img, 2222, 3333)
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith(f"file={tmp_path}/img,,readonly=off,,file=x/data.img,format=raw")
    for bad in ["img\nHost *\n  ProxyCommand sh", 'img"x', "img%d"]:
        with pytest.raises(UsageError, match="cannot be named in an ssh_config file"):
            qemu_system.create(f"qemu-system:{tmp_path / bad}", RPI5, tmp_path / "targets", TargetOptions())
