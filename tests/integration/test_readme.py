"""The README's "Run on a board" block, run as a newcomer runs it: every line in order, as written, in a
fresh folder outside the repository, on the emulated Pi 5 (signing included). Between its lines the
test also checks what the README promises there: after `trust`, an unsigned bundle is refused."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(heading: str) -> list[list[str]]:
    """The commands of the first fenced block after ``heading``, one argv per line (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(heading):]
    start = after.index("```\n") + 4
    block = after[start:after.index("```\n", start)]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def kill_leftovers(work: Path) -> None:
    """SIGKILL what a failed run left running in ``work`` (qemu-user, socat)."""
    mark = str(work).encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), 9)
        except OSError:
            pass


def edgelm(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert argv[0] == "edgelm", argv
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELM_")}
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *argv[1:]], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=900)


def test_the_readmes_run_block_works_top_to_bottom_in_a_fresh_folder(tmp_path):
    lines = readme_block("## Run on a board")
    assert len(lines) >= 10 and any(a[:2] == ["edgelm", "trust"] for a in lines)
    folder = tmp_path / "newcomer"
    folder.mkdir()
    trusted = False
    try:
        for argv in lines:
            if trusted and argv[:2] == ["edgelm", "flash"]:
                unsigned = edgelm(["edgelm", "flash", "out/rpi5/unsigned", "--json"], folder)
                assert unsigned.returncode == 3, unsigned.stderr
                assert "accepts only signed bundles" in unsigned.stderr and "--sign-key KEY" in unsigned.stderr
            done = edgelm(argv, folder)
            assert done.returncode == 0, f"`{shlex.join(argv)}` exited {done.returncode}:\n{done.stderr[-2000:]}"
            if argv[:2] == ["edgelm", "build"] and "--sign-key" not in argv:
                subprocess.run(["cp", "-a", "out/rpi5/bundle", "out/rpi5/unsigned"], cwd=folder, check=True)
            if argv[:2] == ["edgelm", "trust"] and "--list" not in argv:
                trusted = True
            if argv[:2] == ["edgelm", "monitor"]:
                assert "text: " in done.stdout, done.stdout
        listed = json.loads(edgelm(["edgelm", "trusted", "--board", "rpi5", "--json"], folder).stdout)
        assert listed["keys"] == [] and listed["security_counter"] == 1  # untrusted at the end; the counter stays
    finally:
        edgelm(["edgelm", "stop", "--board", "rpi5"], folder)
        kill_leftovers(folder)
