"""One edgelm job at a time per target; a second one is refused at once, naming the holder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from standin import REPO, STATE, edgelm_env, one_error_line, run_edgelm

from toolchain.deploy import lock
from toolchain.errors import DeviceError


def _stop(workdir):
    return run_edgelm("stop", "--board", "host", "--target", "local", "--workdir", str(workdir))


def test_stop_is_refused_while_another_process_holds_the_target(workdir):
    with lock.hold(workdir.resolve() / STATE, "run", "local:host"):
        t0 = time.monotonic()
        refused = _stop(workdir)
        assert time.monotonic() - t0 < 10  # at once, not after waiting for the holder
        assert refused.returncode == 6
        line = one_error_line(refused, "local:host is busy")
        assert f"pid {os.getpid()} (run since " in line and "pytest" in line
    assert _stop(workdir).returncode == 0  # released


def test_flash_is_refused_while_another_flash_waits_for_its_runner(workdir, standin_bundle):
    hangs, good = standin_bundle("hangs", serving=False), standin_bundle("good")
    holder = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "flash", str(hangs), "--target", "local",
                               "--workdir", str(workdir)], stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=edgelm_env())
    try:
        deadline = time.monotonic() + 30
        while not (workdir / STATE / "runner.log").exists():  # it has the lock and has started its runner
            assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()
            time.sleep(0.02)
        for refused in (run_edgelm("flash", str(good), "--target", "local", "--workdir", str(workdir)),
                        _stop(workdir)):
            assert refused.returncode == 6
            line = one_error_line(refused, f"busy: held by pid {holder.pid} (flash since ")
            assert f"flash {hangs}" in line  # its command line
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    # consistent after the SIGTERM: nothing was current before that flash, and nothing is now
    assert not (workdir / STATE / "current").is_symlink()
    flashed = run_edgelm("flash", str(good), "--target", "local", "--json", "--workdir", str(workdir))
    assert flashed.returncode == 0, flashed.stderr
    assert _stop(workdir).returncode == 0


def _hold_in_a_child(state):
    """A process that holds ``state``'s lock until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom pathlib import Path\n"
                               "from toolchain.deploy import lock\n"
                               f"with lock.hold(Path({str(state)!r}), 'flash'):\n"
                               "    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env=edgelm_env())
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_lock_left_by_a_dead_holder_blocks_nothing(workdir):
    state = workdir.resolve() / STATE
    holder = _hold_in_a_child(state)
    assert json.loads((state / lock.LOCK_FILE).read_text())["pid"] == holder.pid
    holder.send_signal(signal.SIGKILL)  # no cleanup at all: its note stays in the file
    holder.wait()
    assert (state / lock.LOCK_FILE).read_text()
    assert _stop(workdir).returncode == 0


def test_the_refusal_is_a_device_error_and_a_holder_may_take_its_lock_again(tmp_path):
    holder = _hold_in_a_child(tmp_path)
    try:
        with pytest.raises(DeviceError) as refused, lock.hold(tmp_path, "run", "qemu:rpi5"):
            pass
        assert refused.value.exit_code == 6
        assert str(refused.value).startswith(f"qemu:rpi5 is busy: held by pid {holder.pid} (flash since ")
    finally:
        holder.kill()
        holder.wait()
    with lock.hold(tmp_path, "run"), lock.hold(tmp_path, "stop"):  # nested jobs in one process
        pass


@pytest.mark.parametrize("where", ["a file", "a name too long"])
def test_a_state_folder_that_cannot_be_made_is_one_line(tmp_path, where):
    if where == "a file":
        (tmp_path / "workdir").write_text("not a folder")  # --workdir given a file, or a read-only place
        state = tmp_path / "workdir" / "targets" / "local-host"
    else:
        state = tmp_path / "targets" / ("ssh-" + "u" * 300 + "@rpi5-22-rpi5")  # a long user name in the spec
    with pytest.raises(DeviceError, match="cannot keep the target's state in") as err:
        with lock.hold(state, "flash", "x"):
            pass
    assert "\n" not in str(err.value)
