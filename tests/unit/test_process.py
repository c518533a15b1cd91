"""running.json is trusted only while its pids are still the processes edgelm started."""

import json
import subprocess
import sys

import pytest
from standin import STATE, identity, one_error_line, proc_stat, run_edgelm, runs, wait_gone

from toolchain.deploy.process import ProcessRecord, stat_start_time

# /proc/PID/stat of a process named "a) b (c": the name is field 2, in parentheses
STAT = b"4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 2000000 300 18446744073709551615"


def test_the_start_time_is_field_22_even_with_parentheses_in_the_name():
    assert stat_start_time(STAT) == ("S", 987654)


def test_a_real_process_named_with_parentheses(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nopen('/proc/self/comm', 'w').write('x) y (z')\n"
                              "print('renamed', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "renamed\n"
        assert b"(x) y (z)" in open(f"/proc/{child.pid}/stat", "rb").read()
        rec = ProcessRecord.of(child.pid)
        assert rec is not None and rec.start_time == proc_stat(child.pid)[1]
        assert rec.changed() is None
    finally:
        child.kill()
        child.wait()
    assert rec.changed() == "has exited"



def _write_running(workdir, record):
    state = workdir / STATE
    state.mkdir(parents=True)
    # runner_pid as an older edgelm wrote it (which `stop` then killed unchecked), plus the identity
    (state / "running.json").write_text(json.dumps({"runner_pid": record["pid"], "socat_pid": None,
                                                    "port": str(state / "link" / "host"),
                                                    "processes": {"runner": record}}))
    return state / "running.json"


def _stop(workdir, *more):
    return run_edgelm("stop", "--board", "host", "--target", "local", "--workdir", str(workdir), *more)


@pytest.mark.parametrize("field", ["start_time", "cmdline"])
def test_stop_leaves_alone_a_pid_that_now_names_another_process(field, workdir, sleeper):
    record = identity(sleeper.pid)
    record[field] = record[field] + 1 if field == "start_time" else ["/opt/board/runner", "--model", "x"]
    running = _write_running(workdir, record)
    proc = _stop(workdir)
    assert proc.returncode == 0, proc.stderr
    assert "stale PID file" in proc.stdout and f"runner pid {sleeper.pid} is now another process" in proc.stdout
    assert sleeper.poll() is None and runs(identity(sleeper.pid))  # still alive: nothing was killed
    assert not running.exists()  # and the stale file is gone


def test_stop_does_not_trust_a_pid_without_an_identity(workdir, sleeper):
    running = _write_running(workdir, identity(sleeper.pid))
    info = json.loads(running.read_text())
    del info["processes"]  # as an older edgelm wrote it
    running.write_text(json.dumps(info))
    proc = _stop(workdir, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "records no process identity" in json.loads(proc.stdout)["stale_pid_file"]
    assert sleeper.poll() is None


def test_stop_stops_the_process_it_recorded(workdir, sleeper):
    record = identity(sleeper.pid)
    running = _write_running(workdir, record)
    proc = _stop(workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stopped the runner on host"
    assert sleeper.wait(timeout=5) == -15  # SIGTERM
    assert not running.exists()


def test_monitor_does_not_attach_to_a_stale_runner(workdir, sleeper):
    record = identity(sleeper.pid)
    record["start_time"] += 1
    _write_running(workdir, record)
    proc = run_edgelm("monitor", "--board", "host", "--target", "local", "--seconds", "1",
                      "--workdir", str(workdir))
    assert proc.returncode == 6
    one_error_line(proc, "no runner is running on local:host")


def test_flash_leaves_its_runner_running_and_stop_stops_it(workdir, standin_bundle):
    flashed = run_edgelm("flash", standin_bundle("good"), "--target", "local", "--workdir", str(workdir))
    assert flashed.returncode == 0, flashed.stderr
    info = json.loads((workdir / STATE / "running.json").read_text())
    started = [info["processes"]["runner"], info["processes"]["socat"]]
    assert all(runs(r) for r in started)
    assert info["processes"]["runner"]["cmdline"][-2:] == ["--serial", str(workdir.resolve() / STATE / "link/board")]
    stopped = _stop(workdir)  # another process: it goes by running.json, and the flock did not go to the runner
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "stopped the runner on host"
    assert wait_gone(started) == []
