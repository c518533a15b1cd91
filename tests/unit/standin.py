"""A stand-in runner for deploy tests that need no torch and no compiler: a bundle whose ``runner``
is a small Python script (it says "HELLO sent", or never does), flashed to the ``host`` board's
``local`` target through the real command line."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = Path("targets") / "local-host"  # the host board's local target, under a workdir

SERVING = """
import os, sys, time, tty
sys.path.insert(0, {repo!r})
from toolchain.link import framing, protocol
serial = sys.argv[sys.argv.index("--serial") + 1]
fd = os.open(serial, os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
hello = protocol.Hello(protocol.PROTOCOL_VERSION, "standin", "host", {sha!r}, 64, 259, 1, 1.0)
os.write(fd, framing.encode(protocol.HELLO, 0, hello.pack()))
print("HELLO sent (stand-in runner)", flush=True)
time.sleep(600)
"""
HANGING = """
import time
time.sleep(600)  # never says HELLO
"""


def run_edgelm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=edgelm_env())


def edgelm_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def sigint_by_default() -> None:
    """For a child that must see Ctrl-C: a background job may have been started with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_error_line(proc: subprocess.CompletedProcess, needle: str) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    return lines[0]


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid`` now, read independently of the code under test."""
    try:
        text = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    fields = text[text.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def identity(pid: int) -> dict:
    """What running.json records of a process: pid, start time, command line."""
    state, start = proc_stat(pid) or ("?", -1)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    return {"pid": pid, "start_time": start, "cmdline": [x.decode() for x in cmdline]}


def runs(record: dict) -> bool:
    """Whether the recorded process still runs (not ended, not a zombie, not a reused pid)."""
    now = proc_stat(record["pid"])
    return now is not None and now[0] != "Z" and now[1] == record["start_time"]


def wait_gone(records: list[dict], timeout: float = 5.0) -> list[dict]:
    """The records still running after ``timeout`` (an orphan's zombie is reaped by init meanwhile)."""
    deadline = time.monotonic() + timeout
    left = [r for r in records if runs(r)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [r for r in left if runs(r)]
    return left




def make_bundle(folder: Path, name: str, serving: bool = True) -> Path:
    """A host bundle in ``folder/name`` whose runner is a Python script that says HELLO on its serial
    port with the program's hash (``serving``), or never does."""
    from fakebundle import FAKE_PTE, write_bundle

    program = FAKE_PTE + name.encode()
    sha = hashlib.sha256(program).hexdigest()
    script = SERVING.format(repo=str(REPO), sha=sha) if serving else HANGING
    root = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    write_bundle(root, runner=f"#!{sys.executable} -S\n# {name}\n{script}".encode(), program=program)
    return root


def kill_leftovers(work: Path) -> None:
    """SIGKILL every process whose command line names ``work`` (what a failed test or trial left running)."""
    mark = str(work).encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
