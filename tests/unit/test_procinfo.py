"""Process identity where there is no /proc (issue 25: macOS, Windows): psutil's pid + creation time,
through the same ProcessRecord, lock notes and liveness checks as on Linux."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import psutil
import pytest

from toolchain import procinfo
from toolchain.deploy import lock, sshclient
from toolchain.deploy.process import ProcessRecord
from toolchain.errors import DeviceError


@pytest.fixture
def no_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(procinfo, "PROC", str(tmp_path / "no-proc"))
    assert not procinfo.has_proc()


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def test_without_proc_a_record_comes_from_psutil(no_proc, child):
    rec = ProcessRecord.of(child.pid)
    assert rec is not None
    assert rec.start_time == round(psutil.Process(child.pid).create_time() * procinfo.PSUTIL_TICKS)
    assert rec.cmdline[-2:] == ("-c", "import time; time.sleep(60)")
    assert rec.changed() is None
    assert ProcessRecord.from_dict(rec.to_dict()) == rec
    moved = ProcessRecord(rec.pid, rec.start_time + 1, rec.cmdline)
    assert moved.changed() is not None and moved.changed().startswith("is now another process")
    child.kill()
    time.sleep(0.2)  # a zombie until reaped: it has ended all the same
    assert ProcessRecord.of(child.pid) is None and not sshclient._alive(child.pid)
    child.wait()
    assert rec.changed() == "has exited"


def test_without_proc_lock_notes_and_liveness_still_name_one_process(no_proc, child):
    start = lock.process_start(child.pid)
    assert start is not None and start == lock.process_start(child.pid)
    assert lock.note("run")["start"] == lock.process_start(__import__("os").getpid())
    assert sshclient._alive(child.pid)
    child.kill()
    child.wait()
    assert lock.process_start(child.pid) is None and not sshclient._alive(child.pid)
    assert procinfo.look(-1) is None


def test_with_proc_the_start_time_is_field_22(child):
    stat = open(f"/proc/{child.pid}/stat", "rb").read()
    assert procinfo.look(child.pid).start == procinfo.stat_start_time(stat)[1]


def test_a_lock_without_fcntl_uses_msvcrt_or_says_it_cannot(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    with pytest.raises(DeviceError, match="neither with fcntl nor with msvcrt"):
        with lock.hold(tmp_path / "a", "run"):
            pass
    calls = []
    fake = types.SimpleNamespace(LK_NBLCK=2, locking=lambda fd, mode, n: calls.append((mode, n)))
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    with lock.hold(tmp_path / "b", "run"):
        assert '"what": "run"' in (tmp_path / "b" / "lock").read_text()
    assert calls == [(2, 1)]
