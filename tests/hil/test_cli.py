"""`edgelm run` through the command line: JSON report, and bad input ending in one clear line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.hil, pytest.mark.slow]


def edgelm(*args, workdir, **kw):
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args, "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=1200, **kw)


def one_error_line(proc, needle):
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout


def test_run_json_prints_one_report_object(hil_board, hil_workdir):
    proc = edgelm("run", "--board", hil_board.board, "--target", hil_board.target, "--model", "tiny",
                  "--prompt", "Twinkle", "--tokens", "16", "--json", workdir=hil_workdir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("prompt_token_ids", "generated_token_ids", "board_stats", "validation", "text", "firmware_version"):
        assert key in report
    assert report["validation"]["verdict"] == "PASS"
    assert report["prompt_token_ids"][0] == 1  # BOS


def test_unknown_board(hil_workdir):
    one_error_line(edgelm("run", "--board", "rpi9", workdir=hil_workdir), "unknown board 'rpi9'; known boards")


def test_more_tokens_than_the_program_holds(hil_board, hil_workdir):
    proc = edgelm("run", "--board", hil_board.board, "--target", hil_board.target, "--model", "tiny",
                  "--max-seq-len", "64", "--tokens", "100", workdir=hil_workdir)
    one_error_line(proc, "exceed the program's max sequence length 64")
    assert proc.returncode == 4


def test_build_of_a_pte_that_is_not_a_program(tmp_path, hil_workdir):
    bogus = tmp_path / "model.pte"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a program" * 10)
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "build", "--board", "rpi5", "--pte", str(bogus),
                           "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    one_error_line(proc, "is not an ExecuTorch program")
    assert proc.returncode == 3


def test_killing_the_runner_mid_stream(hil_board, hil_workdir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "toolchain.cli", "run", "--board", hil_board.board, "--target", hil_board.target,
           "--model", "tiny", "--tokens", "400", "--ignore-eos", "--workdir", str(hil_workdir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    running = hil_workdir / "targets" / f"{hil_board.target}-{hil_board.board}" / "running.json"
    deadline = time.monotonic() + 600
    killed = None
    while time.monotonic() < deadline and proc.poll() is None:
        if running.exists():
            info = json.loads(running.read_text())
            if time.time() - info["started"] > 0 and os.path.exists(f"/proc/{info['runner_pid']}"):
                # wait until tokens flow: the runner's log says it received the request
                log = running.parent / "runner.log"
                if log.exists() and "request" in log.read_text(errors="replace"):
                    os.kill(info["runner_pid"], signal.SIGKILL)
                    killed = info["runner_pid"]
                    break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=300)
    assert killed, f"never saw the runner start streaming: {err}"
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 6, err
    assert len(lines) == 1 and lines[0].startswith("error:") and "signal 9" in lines[0], err


def test_flash_then_monitor_then_stop(hil_board, hil_workdir):
    from toolchain import api

    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    bundle, _ = api.cached_build(hil_board.board, exported.pte, hil_workdir)
    proc = edgelm("flash", str(bundle.root), "--target", hil_board.target, "--json", workdir=hil_workdir)
    assert proc.returncode == 0, proc.stderr
    flashed = json.loads(proc.stdout)
    assert flashed["verified"] is True and flashed["port"]
    try:
        proc = edgelm("monitor", "--board", hil_board.board, "--target", hil_board.target, "--prompt-ids",
                      "1,82,111,110", "--tokens", "6", "--seconds", "20", "--json", workdir=hil_workdir)
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(x) for x in proc.stdout.splitlines()]
        types = [e["type"] for e in events]
        assert types.count("TOKEN") == 6 and types[-1] == "STATS", types
    finally:
        proc = edgelm("stop", "--board", hil_board.board, "--target", hil_board.target, workdir=hil_workdir)
        assert proc.returncode == 0, proc.stderr


def test_run_with_a_relative_workdir(hil_board, hil_workdir, tmp_path):
    """What `make demo` does: the default workdir `out` is relative to the current folder, and holds only
    what belongs to the run (the target's state): exports and builds are in edgelm's cache."""
    from toolchain import api

    api.cached_export("tiny", hil_workdir, quant="8da4w")  # in the cache: the run in another folder reuses it
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "run", "--board", hil_board.board, "--target",
                           hil_board.target, "--tokens", "8"], capture_output=True, text=True, timeout=1200,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout and (tmp_path / "out" / "targets").is_dir()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["targets"]  # only the run's: no exports, builds


def _stat(pid):
    """(state, start time) of ``pid``, or None."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # the name (field 2) may hold spaces and ')'
    return fields[0].decode(), int(fields[19])


def _identity(pid):
    return {"pid": pid, "start_time": (_stat(pid) or ("", -1))[1]}


def _runs(record):
    """Whether that process still runs (not ended, not a zombie, its pid not handed on)."""
    now = _stat(record["pid"])
    return now is not None and now[0] != "Z" and now[1] == record["start_time"]


def _sigint_by_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job may have been started with it ignored


@pytest.mark.parametrize(("sig", "code", "line"), [(signal.SIGTERM, 143, "error: terminated by SIGTERM"),
                                                   (signal.SIGINT, 130, "error: interrupted")],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_stream_stops_every_process(sig, code, line, hil_board, hil_workdir):
    """timeout, CI cancellation and systemd send SIGTERM: the runner (qemu) and socat run in sessions of
    their own and do not get it, so edgelm stops them, then exits 128 + the signal with one line."""
    cmd = [sys.executable, "-m", "toolchain.cli", "run", "--board", hil_board.board, "--target", hil_board.target,
           "--model", "tiny", "--tokens", "480", "--ignore-eos", "--json", "--workdir", str(hil_workdir)]
    t_start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_by_default)
    state = hil_workdir / "targets" / f"{hil_board.target}-{hil_board.board}"
    deadline = time.monotonic() + 900
    started = None
    try:
        while started is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                info = json.loads((state / "running.json").read_text())
                streaming = "request" in (state / "runner.log").read_text(errors="replace")
            except (FileNotFoundError, ValueError):
                info, streaming = {}, False
            if streaming and info.get("started", 0) > t_start and info.get("runner_pid"):
                # freeze edgelm mid-stream: until it goes on, it stops nothing, whatever the speed of the board
                os.kill(proc.pid, signal.SIGSTOP)
                now = {role: _identity(info[f"{role}_pid"]) for role in ("runner", "socat")}
                if (state / "running.json").exists() and all(_runs(r) for r in now.values()):
                    started = now
                else:  # it had finished the stream already
                    break
            time.sleep(0.01)
        proc.send_signal(sig if started else signal.SIGTERM)  # delivered when it goes on
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    if not started:
        proc.communicate(timeout=120)
        pytest.fail("never caught edgelm mid-stream")
    t_signal = time.monotonic()
    out, err = proc.communicate(timeout=120)
    try:
        assert time.monotonic() - t_signal < 15
        assert proc.returncode == code, err
        lines = [x for x in err.splitlines() if x.strip()]
        assert lines == [line] and out == ""
        deadline = time.monotonic() + 5  # a child edgelm did not wait for is reaped by init
        while time.monotonic() < deadline and any(_runs(r) for r in started.values()):
            time.sleep(0.05)
        assert not [r for r in started.values() if _runs(r)], f"still running: {started}"
        assert not (state / "running.json").exists()
    finally:
        for record in started.values():
            if _runs(record):
                os.kill(record["pid"], signal.SIGKILL)
