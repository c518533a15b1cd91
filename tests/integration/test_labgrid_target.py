"""labgrid://: a board in a real labgrid farm on 127.0.0.1 (tests/labgrid_farm.py: labgrid-coordinator,
labgrid-exporter, Debian's ser2net, the test sshd behind a gate, a power switch stub): the place is
acquired, the release deployed over its NetworkService, the link opened on its NetworkSerialPort
through ser2net, a hung board power-cycled, and the place released however the job ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from labgrid_farm import exporter_config, make_board, start_farm

from toolchain import api
from toolchain.deploy.registry import TargetOptions
from toolchain.errors import DeviceError

pytestmark = pytest.mark.slow
BOARD = "host"
STOP_DEADLINE_S = 60.0


def edgelm(*args):
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    f = start_farm(tmp_path_factory.mktemp("farm"))
    yield f
    f.stop()


def _ssh_config(sshd_server, board, folder):
    """A client config for the sshd as reached through the board's gate (its host key, on the gate's port)."""
    key = sshd_server.host_key_line.split(" ", 1)[1]
    cfg, _ = sshd_server.client_config(folder, known_hosts=f"[127.0.0.1]:{board.gate.port} {key}\n")
    return cfg


@pytest.fixture(scope="module")
def place(farm, sshd_server, tmp_path_factory):
    """Place edgelm-host: the host board behind exporter exp1 (its UART, its SSH, its power switch)."""
    folder = tmp_path_factory.mktemp("board1")
    board = make_board(folder, sshd_server.port, sshd_server.user)
    farm.start_exporter("exp1", exporter_config("host-1", board, sshd_server.user))
    farm.add_place("edgelm-host", "exp1/host-1/*")
    yield board, _ssh_config(sshd_server, board, folder)
    board.close()


def run_args(farm, place_name, cfg, board_end, workdir, *more):
    return ("run", "--board", BOARD, "--model", "tiny", "--tokens", "12",
            "--target", f"labgrid://{farm.coordinator}/{place_name}", "--ssh-config", str(cfg),
            "--board-port", board_end, "--workdir", str(workdir), "--json", *more)


def test_run_on_a_labgrid_place(farm, place, host_bundle, hil_workdir):
    board, cfg = place
    out = edgelm(*run_args(farm, "edgelm-host", cfg, board.board_end, hil_workdir))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["validation"]["verdict"] == "PASS" and len(report["generated_token_ids"]) >= 1
    assert report["target"] == f"labgrid://{farm.coordinator}/edgelm-host"
    assert farm.acquired_by("edgelm-host") is None  # released at the end
    assert board.power.log[0] == "get" and "off" not in board.power.log  # it was on and answered: left alone
    out = edgelm("power", "status", "--board", BOARD, "--target", f"labgrid://{farm.coordinator}/edgelm-host",
                 "--workdir", str(hil_workdir), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) | {"switch": None} == {"board": BOARD, "target": f"labgrid://{farm.coordinator}/"
                                                         "edgelm-host", "action": "status", "changed": None,
                                                         "on": True, "place": "edgelm-host", "switch": None}
    assert farm.acquired_by("edgelm-host") is None


def test_a_hung_board_is_power_cycled(farm, place, host_bundle, hil_workdir):
    board, cfg = place
    board.power.hang()
    board.power.log.clear()
    out = edgelm(*run_args(farm, "edgelm-host", cfg, board.board_end, hil_workdir))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["validation"]["verdict"] == "PASS"
    assert board.power.log[:3] == ["get", "off", "on"], board.power.log
    assert farm.acquired_by("edgelm-host") is None


def test_a_place_someone_else_holds_is_refused_and_left_to_them(farm, place, hil_workdir):
    board, cfg = place
    farm.client("-p", "edgelm-host", "acquire", env={"LG_USERNAME": "somebody"})
    try:
        out = edgelm(*run_args(farm, "edgelm-host", cfg, board.board_end, hil_workdir))
        assert out.returncode != 0
        assert "labgrid place edgelm-host is acquired by" in out.stderr and "/somebody" in out.stderr
        assert "Traceback" not in out.stderr
        assert farm.acquired_by("edgelm-host").endswith("/somebody")
    finally:
        farm.client("-p", "edgelm-host", "release", env={"LG_USERNAME": "somebody"})


def test_ctrl_c_releases_the_place(farm, place, host_bundle, hil_workdir):
    """SIGINT (Ctrl-C) once the place is acquired: edgelm stops, says so, and the place is free again. The
    board's SSH stalls meanwhile, so the run is still at work on the place when the signal comes (a warm
    run on this host board is over in about a second, sooner than the test sees the place taken)."""
    board, cfg = place
    board.gate.stalled = True
    proc = subprocess.Popen([sys.executable, "-m", "toolchain.cli",
                             *run_args(farm, "edgelm-host", cfg, board.board_end, hil_workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while farm.acquired_by("edgelm-host") is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the run never acquired the place"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        board.gate.stalled = False
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err
    assert farm.acquired_by("edgelm-host") is None


def test_an_unknown_place_or_a_silent_coordinator_is_one_line(farm, tmp_path):
    out = edgelm("flash", "--board", BOARD, "--rollback", "--target", f"labgrid://{farm.coordinator}/nowhere",
                 "--workdir", str(tmp_path))
    assert out.returncode != 0 and "has no place 'nowhere'" in out.stderr and "edgelm-host" in out.stderr
    out = edgelm("flash", "--board", BOARD, "--rollback", "--target", "labgrid://127.0.0.1:1/edgelm-host",
                 "--workdir", str(tmp_path))
    assert out.returncode != 0 and "coordinator at 127.0.0.1:1 does not answer" in out.stderr
    assert "Traceback" not in out.stderr


def test_stopping_the_exporter_mid_run_fails_clearly_and_releases(farm, sshd_server, host_bundle, hil_workdir,
                                                                   tmp_path):
    """The exporter is stopped (SIGTERM: it ends its ser2net) once the board serves and the request
    is about to go: the run fails within the deadline, naming the serial port, and the place is free."""
    board = make_board(tmp_path / "board2", sshd_server.port, sshd_server.user)
    try:
        farm.start_exporter("exp2", exporter_config("host-2", board, sshd_server.user))
        farm.add_place("edgelm-host-2", "exp2/host-2/*")
        cfg = _ssh_config(sshd_server, board, tmp_path / "ssh2")
        req = api.RunRequest(board=BOARD, model="tiny", prompt="Once upon a time", tokens=12,
                             target=f"labgrid://{farm.coordinator}/edgelm-host-2", workdir=hil_workdir,
                             target_options=TargetOptions(ssh_config=cfg, board_port=board.board_end))
        stopped = []

        def progress(step, detail):
            if step == "stream" and not stopped:
                farm.stop_exporter("exp2")
                stopped.append(time.monotonic())

        with pytest.raises(DeviceError) as caught:
            api.run_job(req, progress=progress)
        assert stopped, "the run never reached the stream"
        assert time.monotonic() - stopped[0] < STOP_DEADLINE_S
        msg = caught.value.message
        assert "serial port of labgrid place" in msg and "exporter" in msg, msg
        assert farm.acquired_by("edgelm-host-2") is None
    finally:
        board.close()


def test_the_shipped_environment_files_bind_to_a_farm_place(farm, sshd_server, tmp_path):
    """boards/labgrid/*.yaml are labgrid environment files: each one's drivers bind to the resources of
    a place of that name exported like the farm's (a console, an SSH login, a power switch)."""
    from labgrid import Environment
    from labgrid.remote.config import ResourceConfig

    from toolchain.paths import REPO

    folder = REPO / "boards" / "labgrid"
    assert set(ResourceConfig(str(folder / "exporter.example.yaml")).data) == {"rpi5", "jetson-orin-nano"}
    files = sorted(f for f in folder.glob("*.yaml") if not f.name.startswith("exporter"))
    assert {f.name for f in files} == {"rpi5.yaml", "jetson-orin-nano.yaml"}
    roles = [(f, role, Environment(str(f)).config.get_targets()[role]["resources"]["RemotePlace"]["name"])
             for f in files for role in Environment(str(f)).config.get_targets()]
    boards_, places = [], []
    try:  # every place exists before labgrid's client (one session for the process) first looks
        for i, (_, _, place_name) in enumerate(roles):
            boards_.append(make_board(tmp_path / f"env{i}", sshd_server.port, sshd_server.user))
            farm.start_exporter(f"envexp{i}", exporter_config(f"g{i}", boards_[-1], sshd_server.user))
            farm.add_place(place_name, f"envexp{i}/g{i}/*")
            farm.client("-p", place_name, "acquire")
            places.append(place_name)
        os.environ["LG_COORDINATOR"] = farm.coordinator
        for env_file, role, _ in roles:
            target = Environment(str(env_file)).get_target(role)
            for driver in ("SerialDriver", "SSHDriver", "NetworkPowerDriver"):
                assert target.get_driver(driver, activate=False) is not None, (env_file.name, driver)
            target.cleanup()
    finally:
        os.environ.pop("LG_COORDINATOR", None)
        for place_name in places:
            farm.client("-p", place_name, "release")
        for i in range(len(boards_)):
            farm.stop_exporter(f"envexp{i}")
        for b in boards_:
            b.close()
