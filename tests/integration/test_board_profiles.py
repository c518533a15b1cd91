"""The board profiles people run: a Pi 4 on Raspberry Pi OS bullseye (glibc 2.31, the runner linked for
the runtime's 2.27 floor) and a 512 MB Pi Zero 2 W (the fit check), each served end to end under
emulation of its CPU (cortex-a72, cortex-a53)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("board", ["rpi4", "pizero2w"])
def test_the_board_serves_tiny_under_emulation(board, hil_workdir):
    out = subprocess.run([sys.executable, "-m", "toolchain.cli", "run", "--board", board, "--target", "qemu",
                          "--model", "tiny", "--tokens", "16", "--ignore-eos", "--workdir", str(hil_workdir), "--json"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["validation"]["verdict"] == "PASS" and report["board"] == board and report["emulated"]
    assert len(report["generated_token_ids"]) == 16
    bundle = json.loads(subprocess.run(["cat", f"{report['bundle']}/bundle.json"], capture_output=True,
                                       text=True, check=True).stdout)
    glibc = tuple(int(x) for x in bundle["glibc_by_file"]["runner"].split("."))
    assert glibc <= ((2, 27) if board == "rpi4" else (2, 36))
