"""ssh://: a board reached over a real OpenSSH server (tests/sshd.py, an unprivileged user on
127.0.0.1): releases verified on the board, the runner on the SSH channel or on a serial line, the
service, rollback, and what a killed upload, a corrupted file, an unknown host key and a failed
preflight leave behind (nothing current changes)."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import sshd

from toolchain import api, boards
from toolchain.bundle import package
from toolchain.deploy import bringup, preflight, ssh
from toolchain.deploy.registry import TargetOptions
from toolchain.errors import DeviceError, InputError
from toolchain.export.manifest import sha256_file

pytestmark = pytest.mark.slow
BOARD = "host"
SLOW_SSH = """#!/bin/sh
# A slow network for uploads: the tar stream is fed to the real ssh 64 KiB every 50 ms.
case "$*" in
  *"tar -x"*) exec "{python}" -c '
import sys, time
i, o = sys.stdin.buffer, sys.stdout.buffer
while True:
    b = i.read(65536)
    if not b:
        break
    o.write(b); o.flush(); time.sleep(0.05)
' | /usr/bin/ssh "$@" ;;
  *) exec /usr/bin/ssh "$@" ;;
esac
"""


@pytest.fixture(scope="module")
def board(sshd_server):
    """The sshd board, its data folder for the host board emptied first."""
    data = sshd_server.data / "edgelm" / BOARD
    subprocess.run(["rm", "-rf", str(data)], check=True)
    return sshd_server


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("ssh-work")


@pytest.fixture(scope="module")
def two_releases(host_bundle, tmp_path_factory):
    """The host bundle and a second release of it (the runner with bytes appended: another id, same program)."""
    second = tmp_path_factory.mktemp("second") / "bundle"
    subprocess.run(["cp", "-a", str(host_bundle.root), str(second)], check=True)
    with open(second / package.RUNNER, "ab") as f:
        f.write(b"\0second release\0")
    info = json.loads((second / package.BUNDLE_FILE).read_text())
    info["files"][package.RUNNER] = sha256_file(second / package.RUNNER)
    (second / package.BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    two = package.read_bundle(second)
    assert two.release_id != host_bundle.release_id
    return host_bundle, two


def opts(server, **kw):
    return TargetOptions(ssh_config=server.config, **kw)


def on_board(server):
    data = server.data / "edgelm" / BOARD
    links = {n: os.readlink(data / n) for n in ("current", "previous") if (data / n).is_symlink()}
    return data, links


def edgelm(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True,
                          env=env, **kw)


@pytest.fixture()
def null_modem(board, tmp_path):
    """A pseudo-terminal pair standing in for a USB-serial cable: (host end, board end); the board
    end belongs to the board user, as a UART belongs to the dialout group."""
    try:
        proc, host, board_end = sshd.null_modem(tmp_path, board.user)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield host, board_end
    proc.terminate()
    proc.wait()


def test_flash_then_run_over_the_ssh_channel(board, work, host_bundle, hil_workdir):
    result = api.flash(host_bundle.root, board.spec, work, options=opts(board))
    assert result["release"] == host_bundle.release_id and result["started"] and not result["serving"]
    data, links = on_board(board)
    assert links["current"] == f"releases/{host_bundle.release_id}"
    for name, digest in host_bundle.files.items():
        assert sha256_file(data / "releases" / host_bundle.release_id / name) == digest
    out = edgelm("run", "--board", BOARD, "--model", "tiny", "--tokens", "12", "--target", board.spec,
                 "--ssh-config", str(board.config), "--workdir", str(hil_workdir), "--json")  # host_bundle's build
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["validation"]["verdict"] == "PASS" and report["target"] == board.spec
    assert len(report["generated_token_ids"]) >= 1


def test_the_link_on_a_serial_line_and_rollback(board, work, two_releases, null_modem):
    one, two = two_releases
    host_end, board_end = null_modem
    o = opts(board, port=host_end, board_port=board_end)
    first = api.flash(one.root, board.spec, work, options=o)
    assert first["serving"] and first["port"] == host_end
    target = api.target_for(BOARD, board.spec, work, o)
    assert target.runner.running()["release"] == one.release_id
    second = api.flash(two.root, board.spec, work, options=o)
    assert second["release"] == two.release_id and second["previous"] == one.release_id
    assert target.runner.running()["release"] == two.release_id
    back = api.flash(None, board.spec, work, board=BOARD, rollback=True, options=o)
    assert back["release"] == one.release_id and back["serving"]
    _, links = on_board(board)
    assert links == {"current": f"releases/{one.release_id}", "previous": f"releases/{two.release_id}"}
    assert target.runner.running()["release"] == one.release_id
    api.stop(BOARD, board.spec, work, o)
    assert target.runner.running() is None


def test_run_with_the_link_on_a_serial_line(board, host_bundle, hil_workdir, null_modem):
    host_end, board_end = null_modem
    out = edgelm("run", "--board", BOARD, "--model", "tiny", "--tokens", "12", "--target", board.spec,
                 "--ssh-config", str(board.config), "--port", host_end, "--board-port", board_end,
                 "--workdir", str(hil_workdir), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["validation"]["verdict"] == "PASS" and len(report["generated_token_ids"]) >= 1
    target = api.target_for(BOARD, board.spec, hil_workdir, opts(board, port=host_end, board_port=board_end))
    assert target.runner.running() is None  # `run` leaves nothing serving


def test_service_on_a_board_without_systemd_runs_in_the_background_and_says_so(board, work, host_bundle,
                                                                                  null_modem):
    host_end, board_end = null_modem
    o = opts(board, port=host_end, board_port=board_end)
    result = api.flash(host_bundle.root, board.spec, work, options=o, service=True)
    assert result["serving"] and any("has no systemd" in n for n in result["notes"])
    api.stop(BOARD, board.spec, work, o)
    with pytest.raises(Exception, match="--service serves on the board's serial device: give --port"):
        api.flash(host_bundle.root, board.spec, work, options=opts(board), service=True)


def test_an_upload_killed_halfway_leaves_the_first_release_serving(board, work, two_releases, null_modem, tmp_path):
    one, two = two_releases
    host_end, board_end = null_modem
    o = opts(board, port=host_end, board_port=board_end)
    api.flash(one.root, board.spec, work, options=o)
    releases = board.data / "edgelm" / BOARD / "releases"
    subprocess.run(["rm", "-rf", str(releases / two.release_id)], check=True)  # so that it is uploaded again
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "ssh").write_text(SLOW_SSH.format(python=sys.executable))
    (slow / "ssh").chmod(0o755)
    env = os.environ | {"PATH": f"{slow}:{os.environ['PATH']}"}
    flash = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "flash", str(two.root), "--target", board.spec,
                              "--ssh-config", str(board.config), "--port", host_end, "--board-port", board_end,
                              "--workdir", str(work)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    incoming = releases / f".incoming-{two.release_id}"
    deadline = time.monotonic() + 60
    while not (incoming.is_dir() and any(incoming.iterdir())):
        assert flash.poll() is None, flash.stderr.read().decode()
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.01)
    time.sleep(0.5)
    flash.send_signal(signal.SIGKILL)  # halfway: no cleanup of any kind runs
    flash.wait()
    _, links = on_board(board)
    assert links["current"] == f"releases/{one.release_id}"
    assert not (releases / two.release_id).exists() and incoming.is_dir()  # half a copy, never renamed
    target = api.target_for(BOARD, board.spec, work, o)
    assert target.runner.running()["release"] == one.release_id  # still serving the first release
    again = api.flash(two.root, board.spec, work, options=o)  # and the next flash goes through
    assert again["release"] == two.release_id and not incoming.exists()
    api.stop(BOARD, board.spec, work, o)


def test_a_file_corrupted_after_upload_makes_the_switch_refuse(board, work, two_releases):
    one, two = two_releases
    api.flash(one.root, board.spec, work, options=opts(board), start=False)
    target = api.target_for(BOARD, board.spec, work, opts(board))
    staged = target.store.deploy(two, activate=False)
    path = Path(staged.path) / package.RUNNER
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="runner does not match its sha256"):
        target.store.activate(staged)
    assert on_board(board)[1]["current"] == f"releases/{one.release_id}"


def test_an_unknown_host_key_is_refused_without_the_flag(board, work, host_bundle, tmp_path):
    config, known = board.client_config(tmp_path / "fresh")
    before = on_board(board)[1]
    with pytest.raises(DeviceError, match="not in known_hosts") as err:
        api.flash(host_bundle.root, board.spec, work, options=TargetOptions(ssh_config=config), start=False)
    assert "--accept-new-host-key" in (err.value.hint or "") + err.value.message
    assert on_board(board)[1] == before and known.read_text() == ""
    out = edgelm("flash", str(host_bundle.root), "--target", board.spec, "--ssh-config", str(config), "--no-start",
                 "--workdir", str(work))
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "known_hosts" in out.stderr
    api.flash(host_bundle.root, board.spec, work, options=TargetOptions(ssh_config=config, accept_new_host_key=True),
              start=False)
    assert "ssh-ed25519" in known.read_text()


def test_a_failed_preflight_switches_nothing(board, work, two_releases, tmp_path):
    one, two = two_releases
    api.flash(one.root, board.spec, work, options=opts(board), start=False)
    before = sorted(p.name for p in (board.data / "edgelm" / BOARD / "releases").iterdir())
    # a board profile with too little RAM for the model
    small = replace(boards.get(BOARD), ram_mb=64)
    target = ssh.create(board.spec, small, work / "targets", opts(board))
    with pytest.raises(preflight.DoesNotFit, match=r"RAM: .* needs [\d,]+ bytes"):
        with bringup.bring_up(target, two):
            pass
    # a bundle that needs a newer glibc than the board has
    newer = tmp_path / "newer"
    subprocess.run(["cp", "-a", str(two.root), str(newer)], check=True)
    info = json.loads((newer / package.BUNDLE_FILE).read_text())
    info["glibc_required"] = "2.99"
    (newer / package.BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    target = api.target_for(BOARD, board.spec, work, opts(board))
    with pytest.raises(DeviceError, match=r"glibc.*2\.99"):
        with bringup.bring_up(target, package.read_bundle(newer)):
            pass
    assert on_board(board)[1]["current"] == f"releases/{one.release_id}"
    assert sorted(p.name for p in (board.data / "edgelm" / BOARD / "releases").iterdir()) == before


def test_trust_and_the_lock_live_on_the_board(board, tmp_path, fakes):
    """Issue 23 over a real sshd: a key trusted from one workdir binds a flash from another, and a job
    that holds the board (from another process, another workdir) refuses a second one, naming it."""
    from toolchain.bundle import signing

    data = board.data / "edgelm" / BOARD
    private, public, fp = signing.generate(tmp_path / "keys" / "release")
    unsigned = fakes.write_bundle(tmp_path / "unsigned", runner=b"#!/bin/sh\nexit 9\n")
    try:
        api.trust(public, BOARD, board.spec, tmp_path / "work-a", opts(board))
        assert (data / "trusted_keys" / f"{fp[:16]}.pub").is_file()  # on the board
        with pytest.raises(InputError, match="accepts only signed bundles") as err:
            api.flash(unsigned.root, board.spec, tmp_path / "work-b", options=opts(board), start=False)
        assert "--sign-key" in (err.value.hint or "")
        assert not (data / "releases" / unsigned.release_id).exists()
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys\nfrom pathlib import Path\nfrom toolchain import api\n"
             "from toolchain.deploy.registry import TargetOptions\n"
             f"t = api.target_for({BOARD!r}, {board.spec!r}, Path({str(tmp_path / 'work-c')!r}), "
             f"TargetOptions(ssh_config=Path({str(board.config)!r})))\n"
             "with t.lock('flash'):\n    print('held', flush=True)\n    sys.stdin.readline()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline() == "held\n"
            with pytest.raises(DeviceError, match=f"is busy: held by pid {holder.pid} on .*\\(flash since "):
                api.flash(unsigned.root, board.spec, tmp_path / "work-b", options=opts(board), start=False)
        finally:
            holder.communicate("\n", timeout=60)
        assert holder.returncode == 0 and not (data / "lock").exists()
        package.sign_bundle(unsigned, signing.load_private_key(private), security_counter=2)
        result = api.flash(unsigned.root, board.spec, tmp_path / "work-b", options=opts(board), start=False)
        assert result["release"] == unsigned.release_id and result["security_counter"] == 2
        assert api.trusted(BOARD, board.spec, tmp_path / "work-d", opts(board))["security_counter"] == 2
    finally:
        api.untrust(None, BOARD, board.spec, tmp_path / "work-a", opts(board), all_keys=True, allow_unsigned=True)
        subprocess.run(["rm", "-f", str(data / "security_counter")], check=True)
