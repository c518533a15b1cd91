"""SIGTERM and SIGHUP end edgelm like Ctrl-C: every cleanup runs, one line, exit 128 + signal."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from standin import REPO, STATE, edgelm_env, identity, one_error_line, run_edgelm, runs, sigint_by_default, wait_gone

from toolchain import interrupts


def _deliver(sig):
    os.kill(os.getpid(), sig)
    time.sleep(1)  # the handler runs (and raises) here


def test_sigterm_raises_inside_and_is_the_default_again_after():
    with pytest.raises(interrupts.Terminated) as caught, interrupts.handled():
        _deliver(signal.SIGTERM)
    assert caught.value.signum == signal.SIGTERM and caught.value.name == "SIGTERM"
    assert isinstance(caught.value, KeyboardInterrupt)  # every `finally` and `except BaseException` runs
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_ctrl_c_is_still_a_plain_keyboard_interrupt():
    # Python's own Ctrl-C handler, whatever this process inherited: a test run started in the
    # background by a non-interactive shell begins with SIGINT ignored (and edgelm keeps an
    # ignored signal ignored, see below).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as caught, interrupts.handled():
            _deliver(signal.SIGINT)
        assert type(caught.value) is KeyboardInterrupt
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_exit_codes_are_128_plus_the_signal():
    assert interrupts.exit_code(KeyboardInterrupt()) == 130
    assert interrupts.exit_code(interrupts.Terminated(signal.SIGTERM)) == 143
    assert interrupts.exit_code(interrupts.Terminated(signal.SIGHUP)) == 129


def test_a_signal_started_ignored_stays_ignored():
    """`nohup edgelm flash ...` must survive the terminal closing."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupts.handled():
            _deliver(signal.SIGHUP)
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_deferred_block_runs_to_its_end_first():
    done = []
    with pytest.raises(interrupts.Terminated), interrupts.handled():
        with interrupts.deferred():
            _deliver(signal.SIGTERM)
            done.append("recorded the child")
        done.append("after the block")
    assert done == ["recorded the child"]


# Through the command line, with a stand-in runner ---------------------------------------------------

SIGNALS = [(signal.SIGTERM, 143, "terminated by SIGTERM"), (signal.SIGHUP, 129, "terminated by SIGHUP"),
           (signal.SIGINT, 130, "interrupted")]


@pytest.mark.parametrize(("sig", "code", "line"), SIGNALS, ids=[s.name for s, _, _ in SIGNALS])
def test_a_signal_during_flash_stops_what_it_started(sig, code, line, workdir, standin_bundle):
    good, hangs = standin_bundle("good"), standin_bundle("hangs", serving=False)
    flashed = run_edgelm("flash", str(good), "--target", "local", "--json", "--workdir", str(workdir))
    assert flashed.returncode == 0, flashed.stderr
    state = workdir / STATE
    first = _started(json.loads((state / "running.json").read_text()))
    assert runs(first["runner"]) and runs(first["socat"])  # a normal flash exit leaves its runner running

    flash = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "flash", str(hangs), "--target", "local",
                              "--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO, env=edgelm_env(), preexec_fn=sigint_by_default)
    started = _wait_for_runner(flash, state, release_suffix=json.loads(flashed.stdout)["release"])
    assert runs(started["runner"]) and runs(started["socat"])
    flash.send_signal(sig)
    t0 = time.monotonic()
    _, err = flash.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert flash.returncode == code, err
    one_error_line(subprocess.CompletedProcess([], code, "", err), line)
    assert wait_gone([started["runner"], started["socat"]]) == []
    previous = json.loads(flashed.stdout)["release"]
    assert (state / "current").resolve().name == previous  # the previous release, current again
    again = json.loads((state / "running.json").read_text())  # and serving again: a flash leaves one serving
    assert again["release"] == previous and runs(_started(again)["runner"]) and runs(_started(again)["socat"])
    assert run_edgelm("stop", "--board", "host", "--target", "local", "--workdir", str(workdir)).returncode == 0


def _wait_for_runner(proc, state, release_suffix, timeout=30.0):
    """The processes a flash started, once its runner runs (the previous release is ``release_suffix``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            info = json.loads((state / "running.json").read_text())
        except (FileNotFoundError, ValueError):
            info = {}
        if info.get("release") not in (None, release_suffix) and info.get("runner_pid"):
            return _started(info)
        time.sleep(0.02)
    raise AssertionError("the flash never started its runner")


def _started(info):
    """The runner and socat running.json names, as /proc shows them now."""
    return {"runner": identity(info["runner_pid"]), "socat": identity(info["socat_pid"])}
