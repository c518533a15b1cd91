"""ssh:// against a board that lies: its remote scripts run by sh on this machine (a stand-in for ssh that
runs the remote command line here), the board's files edited behind edgelm's back. Whatever the board
says or leaves, the host changes nothing outside its folders and ends in one line, never a traceback."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from toolchain import api, boards
from toolchain.bundle import package
from toolchain.deploy import ssh
from toolchain.deploy.sshclient import Ssh, SshSpec
from toolchain.errors import DeviceError

BOARD = "host"
LOCAL_SSH = """#!/bin/sh
# A board on this machine: ssh's options are ignored, the last argument is the remote command line
# (run by sh, as sshd runs it by the login shell), after what the login shell prints first.
for last; do :; done
printf '%s' "$EDGELM_TEST_BANNER"
exec sh -c "$last"
"""
MV_WITHOUT_T = """#!/bin/sh
# mv as BusyBox has it: -T refused (older versions), or a link to a folder taken for the folder (newer)
case "$1" in -*T*) echo "mv: invalid option -- 'T'" >&2; exit 1 ;; esac
exec /bin/mv "$@"
"""


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def board(tmp_path, monkeypatch):
    """(Ssh to the stand-in board, its data folder for the host board); XDG_DATA_HOME is the board user's."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "board-data"))
    monkeypatch.delenv("EDGELM_TEST_BANNER", raising=False)
    program = _script(tmp_path / "bin" / "ssh", LOCAL_SSH)
    return Ssh(SshSpec("board"), multiplex=False, program=str(program)), tmp_path / "board-data" / "edgelm" / BOARD


def store_on(board_ssh: Ssh, tmp_path: Path) -> ssh.SshStore:
    return ssh.SshStore(board_ssh, boards.get(BOARD), "board:host")


def two_bundles(tmp_path, fakes):
    return (fakes.write_bundle(tmp_path / "one"),
            fakes.write_bundle(tmp_path / "two", runner=b"#!/bin/sh\nexit 1\n"))


def test_a_bundle_json_edited_on_the_board_is_read_not_crashed_on(tmp_path, fakes, board):
    one, two = two_bundles(tmp_path, fakes)
    store = store_on(board[0], tmp_path)
    store.deploy(one)
    store.deploy(two)
    info_path = board[1] / "releases" / one.release_id / package.BUNDLE_FILE
    info = json.loads(info_path.read_text())
    del info["model_sha256"]  # optional in bundle.json: the program's hash is in the file map
    info_path.write_text(json.dumps(info))
    previous = store.previous()
    assert previous.id == one.release_id and previous.model_sha256 == one.files["model.pte"]
    store.activate(previous)  # its files still verify: the id is the hash of the file map
    assert store.current().id == one.release_id


def test_the_switch_works_where_mv_has_no_T(tmp_path, fakes, board, monkeypatch):
    one, two = two_bundles(tmp_path, fakes)
    bin_dir = _script(tmp_path / "busybox" / "mv", MV_WITHOUT_T).parent
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    store = store_on(board[0], tmp_path)
    store.deploy(one)
    store.deploy(two)
    data = board[1]
    assert os.readlink(data / "current") == f"releases/{two.release_id}"
    assert os.readlink(data / "previous") == f"releases/{one.release_id}"
    assert not (data / "releases" / one.release_id / ".current.tmp").exists()  # not moved into the old release


def test_a_release_folder_left_as_a_dangling_link_is_replaced(tmp_path, fakes, board):
    one, _ = two_bundles(tmp_path, fakes)
    store = store_on(board[0], tmp_path)
    (board[1] / "releases").mkdir(parents=True)
    (board[1] / "releases" / one.release_id).symlink_to(tmp_path / "gone")
    release = store.deploy(one)
    assert (board[1] / "releases" / one.release_id).is_dir() and not (board[1] / "releases" / one.release_id)\
        .is_symlink()
    assert store.current() == release


def test_a_login_shell_that_prints_junk_is_one_line(tmp_path, board, monkeypatch):
    monkeypatch.setenv("EDGELM_TEST_BANNER", "\udcff\udcfe welcome\n")  # bytes ff fe: a .bashrc echoing a banner
    board_ssh, _ = board
    service = ssh.SshService(board_ssh, store_on(board_ssh, tmp_path), boards.get(BOARD), "/dev/null",
                             "/dev/ttyS0", [])
    assert service.systemd is False  # "yes" it did not say
    with pytest.raises(DeviceError, match="not a plain absolute path"):
        service.store.data


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _own_process() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]


@pytest.mark.parametrize("record", [
    "{pid} {st} [/]\x1b[2Jr-0123456789abcdef",  # a release id that is not one, with markup and an escape
    "1/task/1 {init} r-0123456789abcdef",  # a pid that is a path under /proc
])
def test_a_runner_pid_file_written_by_the_board_is_not_taken_at_its_word(tmp_path, board, record):
    board_ssh, data = board
    data.mkdir(parents=True)
    proc = _own_process()
    try:
        (data / ssh.RUNNER_PID).write_text(record.format(pid=proc.pid, st=_start_time(proc.pid),
                                                         init=_start_time(1)) + "\n")
        daemon = ssh.SshDaemon(board_ssh, store_on(board_ssh, tmp_path), boards.get(BOARD), "/dev/null",
                               "/dev/ttyS0")
        info = daemon.running()
        assert info is None or (info["release"] is None and info["pid"].isdigit())
    finally:
        proc.kill()
        proc.wait()


def test_the_ssh_channel_stops_a_runner_an_earlier_flash_left_in_the_background(tmp_path, board, monkeypatch):
    _, data = board
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")  # `ssh` is the stand-in board
    note = api.stop(BOARD, "ssh://board", tmp_path / "work")
    assert note is not None and "nothing runs there" in note
    data.mkdir(parents=True, exist_ok=True)  # the stop took the board's lock there
    proc = _own_process()
    try:
        (data / ssh.RUNNER_PID).write_text(f"{proc.pid} {_start_time(proc.pid)} r-0123456789abcdef\n")
        target = api.target_for(BOARD, "ssh://board", tmp_path / "work")
        assert target.runner.running()["release"] == "r-0123456789abcdef"  # bring_up sees it, and says it stops it
        assert api.stop(BOARD, "ssh://board", tmp_path / "work") is None
        assert proc.wait(timeout=10) is not None and target.runner.running() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_rollback_to_a_release_no_trusted_key_signed_is_refused(tmp_path, fakes, board):
    from toolchain.bundle import signing

    board_ssh, data = board
    store = store_on(board_ssh, tmp_path)
    one, two = two_bundles(tmp_path, fakes)
    first = store.deploy(one)  # before any key was trusted: unsigned
    private, public, _ = signing.generate(tmp_path / "key")
    package.sign_bundle(two, signing.load_private_key(private))
    store.trust(Path(public).read_bytes())
    second = store.deploy(two)
    assert store.previous().id == first.id
    with pytest.raises(Exception, match="accepts only signed releases"):
        store.activate(first)
    assert store.current().id == second.id
    store.activate(second)  # its own signature verifies on the board


FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl as a board with the unit installed has it: active while $UNIT_STATE exists
case "$1" in
  is-active) [ -e "$UNIT_STATE" ] ;;
  stop) rm -f "$UNIT_STATE" ;;
  *) exit 1 ;;
esac
"""
FAKE_SUDO = """#!/bin/sh
[ "$1" = -n ] && shift
[ -e "$SUDO_REFUSES" ] && { echo "sudo: a password is required" >&2; exit 1; }
exec "$@"
"""


def test_a_service_an_earlier_flash_installed_is_seen_and_stopped(tmp_path, fakes, board, monkeypatch):
    from toolchain.deploy import service

    board_ssh, _ = board
    bin_dir = tmp_path / "bin"
    _script(bin_dir / "systemctl", FAKE_SYSTEMCTL)
    _script(bin_dir / "sudo", FAKE_SUDO)
    state = tmp_path / "unit-active"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("UNIT_STATE", str(state))
    monkeypatch.setenv("SUDO_REFUSES", str(tmp_path / "sudo-refuses"))
    store = store_on(board_ssh, tmp_path)
    release = store.deploy(two_bundles(tmp_path, fakes)[0])
    daemon = ssh.SshDaemon(board_ssh, store, boards.get(BOARD), "/dev/null", "/dev/ttyS0")
    assert daemon.running() is None
    state.touch()  # the unit serves the current release
    info = daemon.running()
    assert info["service"] == service.UNIT_NAME and info["release"] == release.id
    (tmp_path / "sudo-refuses").touch()
    with pytest.raises(DeviceError, match="stopping it failed: sudo: a password is required"):
        daemon.stop()
    (tmp_path / "sudo-refuses").unlink()
    assert daemon.stop() is None and not state.exists() and daemon.running() is None


def test_a_board_that_floods_its_answer_is_cut_off_in_one_line(board, monkeypatch):
    from toolchain.deploy import sshclient

    board_ssh, _ = board
    monkeypatch.setattr(sshclient, "MAX_OUTPUT_BYTES", 1 << 20)
    with pytest.raises(DeviceError, match=r"sent more than 1,048,576 bytes; stopped it"):
        board_ssh.run(["sh", "-c", "yes flood; true"])  # never ends by itself; `; true`: sh forks yes
    deadline = time.monotonic() + 5  # SIGKILLed: gone once the kernel has scheduled it (slow on a loaded host)
    while True:
        left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == b"yes\0flood\0"]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, "the flooding command was left running (it would fill the disk)"
    assert board_ssh.check(["printf", "%s", "fine"]).stdout == b"fine"
    with pytest.raises(DeviceError, match="did not finish within 0.3 s"):
        board_ssh.run(["sleep", "5"], timeout_s=0.3)


# Issue 23: trusted keys, the security counter and the lock live on the board ------------------------------

@pytest.fixture
def reach(tmp_path, board, monkeypatch):
    """`ssh` on PATH is the stand-in board: api calls reach it as ssh://board."""
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return board[1]


def _keys(tmp_path):
    from toolchain.bundle import signing

    return signing.generate(tmp_path / "keys" / "release")


def test_trust_lives_on_the_board_and_binds_every_workdir(tmp_path, fakes, reach):
    from toolchain.bundle import signing
    from toolchain.errors import InputError

    private, public, fp = _keys(tmp_path)
    api.trust(public, BOARD, "ssh://board", tmp_path / "work-a")
    assert (reach / "trusted_keys" / f"{fp[:16]}.pub").read_bytes() == public.read_bytes()  # beside releases/
    unsigned = fakes.write_bundle(tmp_path / "unsigned")
    for work in ("work-b", "work-a"):
        with pytest.raises(InputError, match="accepts only signed bundles"):
            api.flash(unsigned.root, "ssh://board", tmp_path / work, start=False)
    assert not (reach / "current").exists() and not (reach / "releases" / unsigned.release_id).exists()
    package.sign_bundle(unsigned, signing.load_private_key(private), security_counter=4)
    assert api.flash(unsigned.root, "ssh://board", tmp_path / "work-c", start=False)["release"] == unsigned.release_id
    listed = api.trusted(BOARD, "ssh://board", tmp_path / "work-d")
    assert [k["fingerprint"] for k in listed["keys"]] == [fp] and listed["security_counter"] == 4
    assert (reach / "security_counter").read_text().strip() == "4"
    lower = fakes.write_bundle(tmp_path / "lower", runner=b"#!/bin/sh\nexit 1\n")
    package.sign_bundle(lower, signing.load_private_key(private), security_counter=3)
    with pytest.raises(InputError, match=r"security counter 3.*4|4.*security counter 3"):
        api.flash(lower.root, "ssh://board", tmp_path / "work-e", start=False)
    removed = api.untrust(None, BOARD, "ssh://board", tmp_path / "work-f", all_keys=True, allow_unsigned=True)
    assert removed["removed"] == [fp] and removed["accepts_unsigned"]
    assert list((reach / "trusted_keys").iterdir()) == []


def test_a_trusted_key_the_board_garbles_is_one_line(tmp_path, fakes, reach):
    from toolchain.errors import InputError

    (reach / "trusted_keys").mkdir(parents=True)
    (reach / "trusted_keys" / "0123456789abcdef.pub").write_bytes(b"\x1b[2J not a key\n")
    with pytest.raises(InputError, match="0123456789abcdef.pub on ssh://board:host is not a PEM public key") as err:
        api.flash(fakes.write_bundle(tmp_path / "b").root, "ssh://board", tmp_path / "work", start=False)
    assert "\n" not in str(err.value)


def _hold_board(work):
    """A process that holds the stand-in board's lock (as `edgelm flash` from ``work`` would) until a
    line is written to it."""
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom pathlib import Path\n"
                               "from toolchain import api\n"
                               f"t = api.target_for('host', 'ssh://board', Path({str(work)!r}))\n"
                               "with t.lock('flash'):\n    print('held', flush=True)\n    sys.stdin.readline()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_job_from_another_workdir_is_refused_while_the_first_holds_the_board(tmp_path, fakes, reach):
    bundle = fakes.write_bundle(tmp_path / "b")
    holder = _hold_board(tmp_path / "work-a")
    try:
        incoming = reach / "releases" / ".incoming-r-0123456789abcdef"
        incoming.mkdir(parents=True)  # the holder's upload, under way
        (incoming / "runner").write_bytes(b"half")
        jobs = {"the board's lock": lambda: api.flash(bundle.root, "ssh://board", tmp_path / "work-b", start=False),
                "the board's lock, for a stop": lambda: api.stop(BOARD, "ssh://board", tmp_path / "work-c"),
                "this machine's lock": lambda: api.flash(bundle.root, "ssh://board", tmp_path / "work-a",
                                                         start=False)}
        for which, job in jobs.items():
            with pytest.raises(DeviceError) as err:
                job()
            line = str(err.value)
            on = " on " if which.startswith("the board's") else " "  # the board's lock names the holder's host
            assert line.startswith(f"ssh://board:host is busy: held by pid {holder.pid}{on}"), (which, line)
            assert "(flash since " in line and "\n" not in line
        assert (incoming / "runner").read_bytes() == b"half"  # never deleted by a refused flash
        assert not (reach / "current").exists()
    finally:
        holder.communicate("\n", timeout=30)  # it ends its job: the lock is released
    assert holder.returncode == 0 and not (reach / "lock").exists()
    target = api.target_for(BOARD, "ssh://board", tmp_path / "work-b")
    with target.lock("flash"), target.lock("flash"):  # a job may take its own lock again
        pass
    assert api.flash(bundle.root, "ssh://board", tmp_path / "work-b", start=False)["release"] == bundle.release_id


def test_a_board_lock_whose_holder_died_on_this_machine_is_broken(tmp_path, fakes, reach):
    holder = _hold_board(tmp_path / "work-a")
    try:
        with pytest.raises(DeviceError, match=f"busy: held by pid {holder.pid} on "):
            api.flash(fakes.write_bundle(tmp_path / "a").root, "ssh://board", tmp_path / "work-b", start=False)
    finally:
        holder.kill()  # SIGKILL: nothing of it cleans up; its lock stays on the board
        holder.wait()
    assert (reach / "lock").is_dir()
    result = api.flash(fakes.write_bundle(tmp_path / "b").root, "ssh://board", tmp_path / "work-b", start=False)
    assert any(f"that pid {holder.pid} on " in n and "its process on this machine is gone" in n
               for n in result["notes"]), result["notes"]
    assert not (reach / "lock").exists()


def _foreign_lock(data, age_s):
    lock_dir = data / "lock"
    lock_dir.mkdir(parents=True)
    note = {"host": "elsewhere", "machine": "0" * 16, "pid": 4242, "start": "1", "what": "flash",
            "command": "edgelm flash out/b", "since": time.time() - age_s}
    (lock_dir / "holder").write_text("feedfacefeedface\n" + json.dumps(note) + "\n")
    os.utime(lock_dir / "holder", (time.time() - age_s, time.time() - age_s))


def test_a_board_lock_from_another_host_is_broken_only_once_its_lease_ran_out(tmp_path, fakes, reach):
    _foreign_lock(reach, 30)
    with pytest.raises(DeviceError, match=r"busy: held by pid 4242 on elsewhere \(flash since .*edgelm flash out/b"):
        api.flash(fakes.write_bundle(tmp_path / "a").root, "ssh://board", tmp_path / "work", start=False)
    os.utime(reach / "lock" / "holder", (time.time() - ssh.LOCK_LEASE_S - 60,) * 2)  # no refresh for too long
    result = api.flash(fakes.write_bundle(tmp_path / "b").root, "ssh://board", tmp_path / "work", start=False)
    assert any("that pid 4242 on elsewhere (flash since" in n and "not heard of" in n
               for n in result["notes"]), result["notes"]
    assert not (reach / "lock").exists()
