"""A board that boots (issue 8): the rpi5 image built from Debian packages, booted under
qemu-system-aarch64 with the board's CPU, RAM and cores; releases flashed over SSH into the guest,
the service there serving them on the PL011 UART; power cycles; a QEMU killed mid-stream."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
from pathlib import Path

import pytest

from toolchain import api, boards
from toolchain.errors import DeviceError
from toolchain.image import builder

pytestmark = pytest.mark.slow

BOARD = "rpi5"
PROMPT = "Once upon a time"


def _bundle(workdir: Path, quant: str, board: str = BOARD):
    exported, _ = api.cached_export("tiny", workdir, quant=quant)
    bundle, _ = api.cached_build(board, exported.pte, workdir)
    return bundle


def _request(spec: str, workdir: Path, quant: str = "8da4w", tokens: int = 32) -> api.RunRequest:
    return api.RunRequest(board=BOARD, model="tiny", prompt=PROMPT, tokens=tokens, quant=quant, target=spec,
                          workdir=workdir, ignore_eos=True)


def _processes_naming(text: str) -> list[str]:
    """Command lines of the processes on this machine that mention ``text`` (an image or state folder)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{d.name}: {cmd[:160]}")
    return found


@pytest.fixture()
def image(hil_workdir, tmp_path):
    """An rpi5 image serving tiny 8da4w; the board is powered off at the end whatever happened."""
    out = tmp_path / "image"
    api.image(BOARD, out, bundle_dir=_bundle(hil_workdir, "8da4w").root, workdir=hil_workdir)
    spec = f"qemu-system:{out}"
    yield spec, out
    api.power(BOARD, "off", spec, hil_workdir)
    state = api.target_for(BOARD, spec, hil_workdir).state
    assert _processes_naming(str(out)) == [] and _processes_naming(str(state)) == []


def test_the_image_is_the_same_bytes_twice_and_boots_to_a_pass(image, hil_workdir, tmp_path):
    spec, out = image
    again = api.image(BOARD, tmp_path / "again", bundle_dir=_bundle(hil_workdir, "8da4w").root, workdir=hil_workdir)
    first = json.loads((out / builder.IMAGE_FILE).read_text())
    assert again["sha256"] == first["sha256"] and again["files"] == first["files"]
    assert {"boot/kernel8.img", "boot/initramfs8", "boot/config.txt", "boot/cmdline.txt", "data.img"} \
        <= set(first["files"])
    assert (out / "boot" / "config.txt").read_text() == builder.boot_config(boards.get(BOARD))
    assert (out / "boot" / "config.txt").read_text().splitlines()[-1] == "dtparam=uart0=on"  # a Pi 5's GPIO UART0

    report = api.run_job(_request(spec, hil_workdir))
    assert report.passed, report.validation
    assert len(report.generated_token_ids) == 32 and report.target == spec
    assert report.boot is not None and report.boot["boot_to_hello_s"] > 0  # the run powered it on: it says how fast
    assert api.power(BOARD, "status", spec, hil_workdir)["on"] is False  # and off again: it was off before
    print(f"\nimage: initramfs {(out / builder.INITRAMFS_FILE).stat().st_size:,} bytes, kernel "
          f"{(out / builder.KERNEL_FILE).stat().st_size:,} bytes; boot: {report.boot}")


def test_a_changed_kernel_is_refused_before_boot(image, hil_workdir):
    spec, out = image
    kernel = out / builder.KERNEL_FILE
    kernel.write_bytes(kernel.read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="does not match its sha256"):
        api.power(BOARD, "on", spec, hil_workdir)
    assert api.power(BOARD, "status", spec, hil_workdir)["on"] is False


def test_a_release_flashed_over_ssh_is_served_and_survives_a_power_cycle(image, hil_workdir):
    spec, out = image
    first, second = _bundle(hil_workdir, "8da4w"), _bundle(hil_workdir, "8da8w")
    assert first.info["model_sha256"] != second.info["model_sha256"]
    on = api.power(BOARD, "on", spec, hil_workdir)
    assert on["on"] and on["boot_hello_model_sha256"] == first.info["model_sha256"]  # the image's own release

    flashed = api.flash(second.root, spec, hil_workdir)
    assert flashed["serving"] and flashed["previous"] == first.release_id
    assert flashed["model_sha256"] == second.info["model_sha256"]
    tgt = api.target_for(BOARD, spec, hil_workdir)
    assert tgt.runner.running()["release"] == second.release_id  # the guest's service serves the new one

    report = api.run_job(_request(spec, hil_workdir, quant="8da8w"))
    assert report.passed and report.model_sha256 == second.info["model_sha256"]
    assert report.boot is None  # it was on already, and stays on

    cycled = api.power(BOARD, "cycle", spec, hil_workdir)
    assert cycled["on"] and cycled["boot_hello_model_sha256"] == second.info["model_sha256"]
    assert tgt.store.current().id == second.release_id


def test_killing_qemu_mid_stream_fails_the_run_clearly_and_leaves_nothing_running(image, hil_workdir):
    spec, out = image
    api.power(BOARD, "on", spec, hil_workdir)
    pid = api.power(BOARD, "status", spec, hil_workdir)["pid"]
    killed = []

    def on_text(piece: str) -> None:
        if piece and not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with pytest.raises(DeviceError) as err:
        api.run_job(_request(spec, hil_workdir, tokens=200), on_text=on_text)
    assert killed
    assert "the emulated board is off" in str(err.value), str(err.value)
    assert api.power(BOARD, "status", spec, hil_workdir)["on"] is False
    state = api.target_for(BOARD, spec, hil_workdir).state
    assert _processes_naming(str(out)) == [] and _processes_naming(str(state)) == []


@pytest.mark.timeout(2400)  # fp32 export, two boots into an OOM, the 1.7 GB program hashed twice in the guest
def test_a_model_too_big_for_the_board_is_refused_and_forced_past_runs_out_of_memory(hil_workdir, tmp_path):
    """fp32 lfm2-350m (a 1.7 GB program) on a 1 GB Raspberry Pi 3: the image carries it on its data
    disk, as a card written in a reader would. At boot the service's runner is killed by the kernel;
    the preflight refuses a run with byte counts; forced past it, the run fails naming the OOM kill."""
    from toolchain.deploy.preflight import DoesNotFit

    board = "rpi3b"
    exported, _ = api.cached_export("lfm2-350m", hil_workdir, quant="fp32")
    bundle, _ = api.cached_build(board, exported.pte, hil_workdir)
    out = tmp_path / "image"
    api.image(board, out, bundle_dir=bundle.root, workdir=hil_workdir)
    spec = f"qemu-system:{out}"
    request = api.RunRequest(board=board, model="lfm2-350m", quant="fp32", prompt=PROMPT, tokens=4, target=spec,
                             workdir=hil_workdir)
    try:
        booted = api.power(board, "on", spec, hil_workdir)
        assert "ran out of memory" in (booted["boot_error"] or ""), booted  # what the board did at boot
        api.stop(board, spec, hil_workdir)  # the service is held (until the next boot)

        with pytest.raises(DoesNotFit) as refused:
            api.run_job(request)
        text = str(refused.value)
        assert re.search(r"needs [0-9,]{13} bytes of RAM \(program [0-9,]{13} ", text), text
        assert re.search(r"the board has [0-9,]+ available of [0-9,]{13}", text), text

        with pytest.raises(DeviceError) as forced:
            api.run_job(dataclasses.replace(request, force=True))
        message = str(forced.value)
        assert "ran out of memory" in message and "Out of memory: Killed process" in message, message
        assert "rpi3b has 1024 MiB" in message
    finally:
        api.power(board, "off", spec, hil_workdir)
    assert _processes_naming(str(out)) == []
