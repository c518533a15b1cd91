"""A board that boots (issue 8, first slice): the rpi5 image with tiny, booted under
qemu-system-aarch64 -M virt with the board's CPU, RAM and cores; HELLO on its PL011; same bytes twice."""

import socket
import subprocess
import time

import pytest

from toolchain import api, boards
from toolchain.image import builder
from toolchain.link import ports
from toolchain.link.session import BoardSession, Timeouts

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rpi5_image_boots_to_hello_and_is_reproducible(hil_workdir, tmp_path, tmp_path_factory):
    board = boards.get("rpi5")
    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    bundle, _ = api.cached_build("rpi5", exported.pte, hil_workdir)
    cache = tmp_path_factory.getbasetemp() / "debs"
    one = builder.build(board, bundle, tmp_path / "one", cache)
    two = builder.build(board, bundle, tmp_path / "two", cache)
    assert one.sha256 == two.sha256
    port = _free_port()
    qemu = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", board.qemu_cpu, "-m", str(board.ram_mb), "-smp", str(board.cores),
         "-nographic", "-monitor", "none", "-kernel", str(one.kernel), "-initrd", str(one.initramfs),
         "-append", "console=ttyS0 quiet",
         "-chardev", f"socket,id=uart,host=127.0.0.1,port={port},server=on,wait=on,nodelay=on",
         "-serial", "chardev:uart",
         "-chardev", f"file,id=con,path={tmp_path / 'console.log'}", "-device", "pci-serial,chardev=con"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                transport = ports.open_port(f"socket://127.0.0.1:{port}", board.baud)
                break
            except Exception:
                assert time.monotonic() < deadline and qemu.poll() is None, "QEMU did not listen on the UART"
                time.sleep(0.1)
        t = time.monotonic()
        session = BoardSession(transport, Timeouts(hello_s=60))
        hello = session.wait_hello()
        boot_to_hello = time.monotonic() - t
        print(f"\nboot to HELLO {boot_to_hello:.1f} s; initramfs {one.initramfs.stat().st_size:,} bytes")
        assert hello.model_sha256 == bundle.info["model_sha256"] and hello.board == "rpi5"
        transport.close()
    finally:
        qemu.kill()
        qemu.wait()
