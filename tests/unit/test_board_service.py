"""What serves on the board by itself: the board image's ``edgelm-service`` and the systemd unit's
``edgelm-serve``, run here by sh on a data folder of this machine. A hold the host leaves runs out
(a host killed mid-flash never leaves the board held), and a release whose files do not match its
bundle.json (a power cut just after a flash) is refused and the previous one served. Also the host's
side of the leases (qemu-system's service, the systemd unit over SSH) and the syncs of the SSH switch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from toolchain import boards
from toolchain.deploy import service, ssh
from toolchain.deploy.base import Release
from toolchain.deploy.sshclient import Ssh, SshSpec
from toolchain.image import builder

LOCAL_SSH = """#!/bin/sh
for last; do :; done
exec sh -c "$last"
"""


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def releases(tmp_path: Path, fakes, data: Path, *names: str) -> dict[str, str]:
    """Releases ``names`` in ``data`` whose runner writes where it ran (``ran``) and its arguments;
    current -> the last, previous -> the one before. name -> release id."""
    ids = {}
    for name in names:
        runner = f'#!/bin/sh\necho "{name} $*" >"{tmp_path}/ran"\n'.encode()
        bundle = fakes.write_bundle(tmp_path / "bundles" / name, runner=runner)
        shutil.copytree(bundle.root, data / "releases" / bundle.release_id)
        ids[name] = bundle.release_id
    (data / "current").symlink_to(f"releases/{ids[names[-1]]}")
    if len(names) > 1:
        (data / "previous").symlink_to(f"releases/{ids[names[-2]]}")
    return ids


def ran(tmp_path: Path) -> str | None:
    path = tmp_path / "ran"
    return path.read_text().strip() if path.exists() else None


# The image's edgelm-service ------------------------------------------------------------------------

@pytest.fixture
def image_service(tmp_path):
    """The rendered edgelm-service for a data folder here, its /run in tmp_path; run(verb, *args)."""
    data, run_dir = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    text = builder._render("edgelm-service.in", {"@DATA@": str(data), "@UART@": "/dev/null"})
    assert "RUN=/run/edgelm\n" in text
    assert "CONSOLE=/dev/console\n" in text
    text = text.replace("RUN=/run/edgelm\n", f"RUN={run_dir}\n")
    text = text.replace("CONSOLE=/dev/console\n", f"CONSOLE={tmp_path}/console\n")
    script = _script(tmp_path / "edgelm-service", text)

    def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """The script's answer; its console lines (the kernel console's, on the board) as stderr."""
        console = tmp_path / "console"
        console.unlink(missing_ok=True)
        proc = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=timeout)
        proc.stderr += console.read_text() if console.exists() else ""
        return proc

    run.data = data  # type: ignore[attr-defined]
    run.run_dir = run_dir  # type: ignore[attr-defined]
    return run


def test_a_hold_for_a_switch_runs_out_by_itself(image_service):
    """A host killed between `stop` and `start` (SIGKILL mid-flash) must not leave the board held."""
    assert image_service("stop", "1").stdout.strip() == "idle"
    assert image_service("status").stdout.strip() == "held"
    deadline = time.monotonic() + 5
    while image_service("status").stdout.strip() == "held":
        assert time.monotonic() < deadline, "the hold never ran out"
        time.sleep(0.2)
    assert image_service("status").stdout.strip() == "starting"


def test_a_stop_without_a_lease_holds_until_start(image_service):
    assert image_service("stop").stdout.strip() == "idle"
    assert (image_service.run_dir / "hold").read_text().strip() == "forever"
    assert image_service("status").stdout.strip() == "held"
    assert image_service("start").stdout.strip() == "started"
    assert image_service("status").stdout.strip() == "starting"
    assert image_service("stop", "x").returncode == 2


def test_the_service_serves_a_current_release_that_verifies(tmp_path, fakes, image_service):
    ids = releases(tmp_path, fakes, image_service.data, "a", "b")
    proc = image_service("run")
    assert ran(tmp_path) == "b --model ./model.pte --serial /dev/null", proc.stderr
    assert f"starting runner of {ids['b']}" in proc.stderr


@pytest.mark.parametrize("damage", ["manifest zero-filled", "bundle.json zero-filled", "program cut",
                                    "file map edited"])
def test_the_service_refuses_a_current_release_that_does_not_verify_and_serves_the_previous(tmp_path, fakes,
                                                                                            image_service, damage):
    """A power cut just after a flash came back with bundle.json and manifest.json zero-filled."""
    ids = releases(tmp_path, fakes, image_service.data, "a", "b")
    _damage(image_service.data / "releases" / ids["b"], damage)
    proc = image_service("run")
    assert ran(tmp_path) == "a --model ./model.pte --serial /dev/null", proc.stderr
    assert f"release {ids['b']} (current) does not match its bundle.json: refused" in proc.stderr
    assert f"serving the previous release {ids['a']} instead" in proc.stderr
    (tmp_path / "ran").unlink()
    image_service("run")  # checked once per boot: the refusal is remembered
    assert ran(tmp_path).startswith("a ")


def test_a_release_the_host_just_verified_is_not_hashed_again(tmp_path, fakes, image_service):
    ids = releases(tmp_path, fakes, image_service.data, "a", "b")
    assert image_service("start", ids["b"]).stdout.strip() == "started"
    assert (image_service.run_dir / f"ok-{ids['b']}").exists()
    image_service("start", "../../etc/passwd")  # only a release id is taken
    assert sorted(p.name for p in image_service.run_dir.iterdir()) == [f"ok-{ids['b']}"]


def test_the_service_serves_nothing_when_no_release_verifies(tmp_path, fakes, image_service):
    ids = releases(tmp_path, fakes, image_service.data, "a", "b")
    for rid in ids.values():
        _damage(image_service.data / "releases" / rid, "manifest zero-filled")
    proc = image_service("run")
    assert ran(tmp_path) is None and "no release in" in proc.stderr


def _damage(folder: Path, how: str) -> None:
    if how == "manifest zero-filled":
        path = folder / "manifest.json"
        path.write_bytes(b"\0" * path.stat().st_size)
    elif how == "bundle.json zero-filled":
        path = folder / "bundle.json"
        path.write_bytes(b"\0" * path.stat().st_size)
    elif how == "program cut":
        path = folder / "model.pte"
        path.write_bytes(path.read_bytes()[:10])
    else:  # a runner replaced and its hash in bundle.json with it: the id no longer matches the map
        import hashlib
        import json

        (folder / "runner").write_bytes(b"#!/bin/sh\necho evil\n")
        info = json.loads((folder / "bundle.json").read_text())
        info["files"]["runner"] = hashlib.sha256(b"#!/bin/sh\necho evil\n").hexdigest()
        (folder / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")


# The systemd unit's edgelm-serve -----------------------------------------------------------------------

@pytest.mark.parametrize("runtime", [True, False], ids=["runtime directory", "none"])
@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
def test_the_units_start_script_runs_the_release_that_verifies(tmp_path, fakes, runtime, damaged):
    data = tmp_path / "data"
    data.mkdir()
    ids = releases(tmp_path, fakes, data, "a", "b")
    if damaged:
        _damage(data / "releases" / ids["b"], "bundle.json zero-filled")
    script = _script(tmp_path / service.SERVE_SCRIPT, service.serve_script())
    env = dict(os.environ)
    env.pop("RUNTIME_DIRECTORY", None)
    if runtime:
        (tmp_path / "rt").mkdir()
        env["RUNTIME_DIRECTORY"] = str(tmp_path / "rt")
    proc = subprocess.run([str(script), str(data), "--serial", "/dev/ttyAMA0", "--baud", "921600"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert ran(tmp_path) == f"{'a' if damaged else 'b'} --model ./model.pte --serial /dev/ttyAMA0 --baud 921600"
    if runtime:
        assert (tmp_path / "rt" / f"{'bad' if damaged else 'ok'}-{ids['b']}").exists()


def test_the_units_start_script_fails_so_systemd_tries_again_when_nothing_verifies(tmp_path, fakes):
    data = tmp_path / "data"
    data.mkdir()
    ids = releases(tmp_path, fakes, data, "b")
    _damage(data / "releases" / ids["b"], "program cut")
    script = _script(tmp_path / service.SERVE_SCRIPT, service.serve_script())
    proc = subprocess.run([str(script), str(data)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and ran(tmp_path) is None and "no release" in proc.stderr


def test_both_scripts_check_a_release_the_same_way():
    image = (builder.FIRMWARE_DIR / "image" / "edgelm-service.in").read_text()
    serve = service.serve_script()
    for name in ("is_id", "check_release", "pick"):
        body = image[image.index(f"{name}() {{"):].split("\n}\n")[0]
        assert body in serve, name


# The host's side: leases and syncs ------------------------------------------------------------------------

@pytest.fixture
def board_ssh(tmp_path, monkeypatch):
    """An ssh that runs the remote command here, with logging stand-ins for sudo, systemctl and sync
    first on PATH; the log: one line per call."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "board-data"))
    bin_dir = tmp_path / "bin"
    log = tmp_path / "calls"
    _script(bin_dir / "sudo", f'#!/bin/sh\n[ "$1" = -n ] && shift\necho "sudo $*" >>"{log}"\n'
                              'case "$1 $2" in "systemctl is-active") exit 0 ;; esac\nexit 0\n')
    _script(bin_dir / "systemctl", f'#!/bin/sh\necho "systemctl $*" >>"{log}"\nexit 0\n')
    _script(bin_dir / "sync", f'#!/bin/sh\necho "sync $* | current=$(readlink current 2>/dev/null)" >>"{log}"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    program = _script(tmp_path / "ssh", LOCAL_SSH)
    return Ssh(SshSpec("board"), multiplex=False, program=str(program)), log


def test_the_ssh_switch_syncs_the_release_before_current_names_it_and_the_folder_after(tmp_path, fakes, board_ssh):
    board, log = board_ssh
    store = ssh.SshStore(board, boards.get("host"), "board:host")
    first = store.deploy(fakes.write_bundle(tmp_path / "a"))
    log.write_text("")
    second = store.deploy(fakes.write_bundle(tmp_path / "b", runner=b"#!/bin/sh\necho b\n"))
    calls = log.read_text().splitlines()
    before = f"sync -- releases/{second.id}/"
    synced = [c for c in calls if c.startswith(before)]
    assert synced and f"| current=releases/{first.id}" in synced[0], calls  # before the switch
    for name in [*fakes.write_bundle(tmp_path / "c").files, "bundle.json"]:
        assert f"releases/{second.id}/{name}" in synced[0], calls
    assert f" releases/{second.id} releases |" in synced[0], calls  # its folder, and releases/
    assert calls[-1] == f"sync -- . | current=releases/{second.id}", calls  # the switch, after it
    store.restore(first, None)
    assert store.current().id == first.id and store.previous() is None
    assert log.read_text().splitlines()[-1] == f"sync -- . | current=releases/{first.id}"


def test_a_stop_for_a_switch_arms_a_systemd_timer_that_starts_the_unit_again(tmp_path, board_ssh):
    board, log = board_ssh
    store = ssh.SshStore(board, boards.get("host"), "board:host")
    runner = ssh.SshService(board, store, boards.get("host"), "loop://", "/dev/ttyAMA0", [])
    runner._systemd = True
    runner.stop(lease_s=120)
    calls = log.read_text().splitlines()
    armed = [i for i, c in enumerate(calls) if c.startswith("sudo systemd-run")]
    stopped = calls.index("sudo systemctl stop edgelm-runner.service")
    assert armed and armed[0] < stopped, calls
    assert "--on-active=120s" in calls[armed[0]] and calls[armed[0]].endswith(
        "systemctl start edgelm-runner.service"), calls
    log.write_text("")
    runner.stop()  # `edgelm stop`, the end of a run: stopped until started again
    assert not any("systemd-run" in c for c in log.read_text().splitlines())


def test_starting_the_unit_installs_its_start_script_and_cancels_the_lease(tmp_path, board_ssh, monkeypatch):
    board, log = board_ssh
    monkeypatch.setattr(service, "_TMP_PREFIXES", ())  # the board's data folder is under this machine's /tmp
    _script(tmp_path / "bin" / "id", "#!/bin/sh\necho pi\n")  # the login user and the device's group
    _script(tmp_path / "bin" / "stat", "#!/bin/sh\necho dialout\n")
    store = ssh.SshStore(board, boards.get("host"), "board:host")
    Path(store.data).mkdir(parents=True)
    runner = ssh.SshService(board, store, boards.get("host"), "loop://", "/dev/ttyAMA0", [])
    runner._systemd = True
    runner.start(Release("r-0123456789abcdef", f"{store.data}/releases/r-0123456789abcdef", "host", "0" * 64),
                 device="/dev/ttyAMA0")
    serve = Path(store.data) / service.SERVE_SCRIPT
    assert serve.read_text() == service.serve_script() and os.access(serve, os.X_OK)
    unit = (Path(store.data) / service.UNIT_NAME).read_text()
    assert f"ExecStart={store.data}/{service.SERVE_SCRIPT} {store.data} --serial /dev/ttyAMA0" in unit
    calls = [c for c in log.read_text().splitlines() if c.startswith("sudo")]
    cancel = calls.index("sudo systemctl stop edgelm-runner-resume.timer")
    assert cancel < calls.index("sudo systemctl restart edgelm-runner.service"), calls


def test_the_image_service_is_held_for_a_lease_only_for_a_switch():
    from toolchain.deploy import qemu_system

    class FakeSsh:
        def __init__(self):
            self.argv = []

        def run(self, argv, timeout_s=None):
            self.argv.append(argv)
            return subprocess.CompletedProcess(argv, 0, b"stopped\n" if argv[1] == "stop" else b"started\n", b"")

    class On:
        console = Path("/nonexistent")

        def is_on(self):
            return True

    fake = FakeSsh()
    guest = qemu_system.GuestService(On(), fake, boards.get("rpi5"))
    guest.stop(lease_s=120)
    guest.stop()
    guest.start(Release("r-0123456789abcdef", "/x", "rpi5", "0" * 64), device=builder.UART)
    assert fake.argv == [["edgelm-service", "stop", "120"], ["edgelm-service", "stop"],
                         ["edgelm-service", "start", "r-0123456789abcdef"]]


def test_a_runner_in_the_background_is_started_again_when_the_lease_of_its_stop_runs_out(tmp_path, fakes, board_ssh):
    """ssh:// with --port and no service: an edgelm killed between its stop and its start (SIGKILL)
    left nothing serving; the guard the stop leaves on the board starts the current release again."""
    board, _ = board_ssh
    (tmp_path / "bin" / "systemctl").unlink()  # no unit on this board
    store = ssh.SshStore(board, boards.get("host"), "board:host")
    release = store.deploy(fakes.write_bundle(tmp_path / "a", runner=b"#!/bin/sh\nexec sleep 30\n"))
    daemon = ssh.SshDaemon(board, store, boards.get("host"), "loop://", "/dev/null")
    try:
        daemon.start(release, device="/dev/null")
        assert daemon.running()["release"] == release.id
        daemon.stop(lease_s=2)  # ... and edgelm is killed here
        assert daemon.running() is None
        deadline = time.monotonic() + 10
        while daemon.running() is None:
            assert time.monotonic() < deadline, "the guard never started the runner again"
            time.sleep(0.2)
        assert daemon.running()["release"] == release.id
        assert not (Path(store.data) / "lease").exists()

        daemon.stop(lease_s=2)
        daemon.start(release, device="/dev/null")  # edgelm started it itself: the lease is taken back
        first = daemon.running()["pid"]
        daemon.stop()  # for good (`edgelm stop`, the end of a run): nothing starts it again
        time.sleep(3)
        assert daemon.running() is None and first
    finally:
        daemon.stop()


def test_a_local_runner_stopped_for_a_switch_is_started_again_by_its_guard(workdir, standin_bundle):
    """The local target: no board-side service, so the stop for a switch leaves a guard process."""
    import json

    from standin import STATE, run_edgelm

    from toolchain import api

    flashed = run_edgelm("flash", str(standin_bundle("good")), "--target", "local", "--json", "--workdir", str(workdir))
    assert flashed.returncode == 0, flashed.stderr
    release = json.loads(flashed.stdout)["release"]
    target = api.target_for("host", "local", workdir)
    try:
        target.runner.stop(lease_s=1)  # ... and edgelm is killed here (SIGKILL)
        assert target.runner.running() is None and (workdir / STATE / "lease.json").exists()
        deadline = time.monotonic() + 20
        while target.runner.running() is None:
            assert time.monotonic() < deadline, "the guard never started the runner again"
            time.sleep(0.1)
        assert target.runner.running()["release"] == release
        assert not (workdir / STATE / "lease.json").exists()
        target.runner.stop()  # for good: no guard
        assert not (workdir / STATE / "lease.json").exists()
        time.sleep(1.5)
        assert target.runner.running() is None
    finally:
        target.runner.stop()


def test_a_local_start_cut_short_by_a_sigkill_leaves_the_lease_to_its_guard(workdir, standin_bundle, monkeypatch):
    """Killed (SIGKILL) inside the start, after the link was up and before the runner ran: the lease
    of the stop must still be there, so that its guard starts the current release (and ends the
    link the dead edgelm left). It was taken back first, and nothing ever served again (found by
    benchmarks/interrupted_flash.py --kind local: 1 of 12 trials)."""
    import json

    from standin import STATE, run_edgelm

    from toolchain import api
    from toolchain.deploy import process

    flashed = run_edgelm("flash", str(standin_bundle("good")), "--target", "local", "--json", "--workdir", str(workdir))
    assert flashed.returncode == 0, flashed.stderr
    release = json.loads(flashed.stdout)["release"]
    target = api.target_for("host", "local", workdir)
    try:
        target.runner.stop(lease_s=1)  # the stop for the switch
        dying = api.target_for("host", "local", workdir).runner  # the flash, after the switch
        dying.connect()
        socat = json.loads((workdir / STATE / "running.json").read_text())["processes"]["socat"]

        def killed(*args, **kwargs):
            raise SystemExit("SIGKILL: the process ends here, nothing unwinds")

        monkeypatch.setattr(process.subprocess, "Popen", killed)
        with pytest.raises(SystemExit):
            dying.start(target.store.current(), device=dying.board_device)
        monkeypatch.undo()
        assert (workdir / STATE / "lease.json").exists()
        deadline = time.monotonic() + 20
        while target.runner.running() is None:
            assert time.monotonic() < deadline, "the guard never started the runner again"
            time.sleep(0.1)
        assert target.runner.running()["release"] == release
        assert process.ProcessRecord.from_dict(socat).changed() is not None, "the dead flash's link still runs"
    finally:
        target.runner.stop()


REMOTE_SSH = """#!/bin/sh
# The remote command runs on "the board": in a session of its own, so killing this client (what
# edgelm does to the ssh it waits for when a signal ends the wait) does not end it there.
for last; do :; done
setsid sh -c "$last" &
wait $!
"""


@pytest.mark.parametrize("step", ["start", "stop"])
def test_a_sigterm_during_a_remote_start_or_stop_waits_for_the_board_to_finish_it(tmp_path, fakes, board_ssh, step):
    """ssh:// with --port: SIGTERM (or Ctrl-C) while the board runs START_SCRIPT or STOP_SCRIPT.
    Killing our ssh client does not end the script on the board: raised at once, the recovery's
    stop (or start) raced it, and the board ended with a runner no record names, holding the serial
    line (benchmarks/interrupted_flash.py --kind ssh-port: SIGTERM in the start step left nothing
    serving). The signal must wait for the board's answer, so what runs there is what is recorded."""
    from toolchain import interrupts

    board, _ = board_ssh
    (tmp_path / "bin" / "systemctl").unlink()  # no unit on this board
    release = ssh.SshStore(board, boards.get("host"), "board:host").deploy(
        fakes.write_bundle(tmp_path / "a", runner=b"#!/bin/sh\nexec sleep 47.25\n"))
    _script(tmp_path / "bin" / "rm", '#!/bin/sh\nsleep 0.6\nexec /bin/rm "$@"\n')  # a slow board from now on
    remote = Ssh(SshSpec("board"), multiplex=False, program=str(_script(tmp_path / "remote-ssh", REMOTE_SSH)))
    store = ssh.SshStore(remote, boards.get("host"), "board:host")
    daemon = ssh.SshDaemon(remote, store, boards.get("host"), "loop://", "/dev/null")

    def runners() -> list[int]:
        found = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and (d / "cmdline").read_bytes() == b"sleep\x0047.25\x00":
                    found.append(int(d.name))
            except OSError:
                pass
        return found

    try:
        if step == "stop":
            daemon.start(release, device="/dev/null")
            assert daemon.running()["release"] == release.id
        with interrupts.handled():
            timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                if step == "start":
                    daemon.start(release, device="/dev/null")
                else:
                    daemon.stop(lease_s=60)
                time.sleep(5)  # (not reached: the signal is raised once the board answered)
            timer.join()
        if step == "start":  # what the bring-up does next: stop what it started, for a switch
            daemon.stop(lease_s=60)
        else:  # the recovery starts the release again; a stop still running on the board must not undo it
            daemon.start(release, device="/dev/null")
        time.sleep(1.5)  # whatever was still running on the board has finished by now
        running = daemon.running()
        if step == "start":
            assert running is None and runners() == [], "the board runs a runner the stop did not stop"
        else:
            assert running is not None and running["release"] == release.id, "the recorded runner is gone"
            assert [int(running["pid"])] == runners(), "a runner runs that no record names"
    finally:
        daemon.stop()
        for pid in runners():
            os.kill(pid, signal.SIGKILL)
