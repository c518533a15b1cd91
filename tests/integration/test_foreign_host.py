"""edgelm on a host that is not Linux (issue 25): no ``/proc``, no ``signal.SIGHUP``, no ``fcntl``/``termios``/
``pwd``, no ``os.getuid`` (tests/foreignhost.py). What needs no board works there; what needs Linux says
so in one line, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOREIGN = REPO / "tests" / "foreignhost.py"


def edgelm(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("EDGELM_DEBUG", None)
    return subprocess.run([sys.executable, str(FOREIGN), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


PROBE = """
import sys
sys.path.insert(0, {tests!r})
import foreignhost
foreignhost.simulate()
import os, signal
assert not hasattr(signal, "SIGHUP") and not hasattr(os, "getuid")
import fcntl  # a library may still import it
ns = {{"__name__": "toolchain.probe"}}
exec(compile(PROBE_BODY, "probe", "exec"), ns)
print(ns["result"])
"""
PROBE_BODY = """
try:
    import fcntl
    result = "imported"
except ImportError:
    result = "refused"
try:
    open("/proc/self/stat")
    result += " read"
except FileNotFoundError:
    result += " absent"
"""


def test_the_simulation_refuses_what_a_foreign_host_lacks(tmp_path):
    code = f"PROBE_BODY = {PROBE_BODY!r}\n" + PROBE.format(tests=str(REPO / "tests"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["refused", "absent"], out.stderr


def test_version_boards_and_ports_work_there(tmp_path):
    assert "edgelm" in ok(edgelm("--version", cwd=tmp_path))
    assert "rpi5" in ok(edgelm("boards", cwd=tmp_path))
    ok(edgelm("ports", "--workdir", str(tmp_path / "out"), cwd=tmp_path))
    ok(edgelm("doctor", cwd=tmp_path))


def test_a_linux_only_target_says_so_in_one_line(tmp_path):
    for target in ("local", "qemu"):
        board = "host" if target == "local" else "rpi5"
        proc = edgelm("run", "--board", board, "--target", target, "--model", "tiny", "--workdir",
                      str(tmp_path / "out"), cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "needs Linux" in lines[0], proc.stderr
        assert not (tmp_path / "out" / "exports").exists()  # refused before any work


@pytest.mark.slow
def test_export_and_inspect_work_there(tmp_path):
    out = tmp_path / "tiny"
    ok(edgelm("export", "--model", "tiny", "--max-seq-len", "64", "--out", str(out),
              cwd=tmp_path, timeout=600))
    text = ok(edgelm("inspect", str(out / "model.pte"), cwd=tmp_path))
    assert "tiny" in text
