"""The SSH client against a real OpenSSH server (tests/sshd.py): quoting, host keys, uploads, hashes,
and the runner serving over an SSH channel."""

import hashlib
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from toolchain.deploy.sshclient import Ssh, SshSpec
from toolchain.errors import DeviceError
from toolchain.link import protocol as P
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import PipeTransport

HOSTILE = ["; touch /tmp/pwned-edgelm", "$(touch /tmp/pwned-edgelm)", "`touch /tmp/pwned-edgelm`",
           "a\nb; touch /tmp/pwned-edgelm", "it's", '"double"', "two  spaces", "-n", "--help", "*", "~", "\\n",
           "${HOME}", "a|b&c>/tmp/pwned-edgelm<d", "\t", "é ü", "'", "x' ; touch /tmp/pwned-edgelm ; '"]
PWNED = Path("/tmp/pwned-edgelm")


@pytest.fixture(scope="module")
def ssh(sshd_server):
    with Ssh(SshSpec.parse(sshd_server.spec), config=sshd_server.config) as s:
        yield s


@pytest.fixture()
def board_dir(sshd_server):
    """A fresh folder path on the board (not created), inside the board user's scratch folder."""
    return f"{sshd_server.scratch}/t-{uuid.uuid4().hex[:8]}"


def test_a_command_runs_as_the_board_user(ssh, sshd_server):
    assert ssh.check(["true"]).returncode == 0
    assert ssh.check(["id", "-un"]).stdout.decode().strip() == sshd_server.user
    assert ssh.run(["sh", "-c", "exit 3"]).returncode == 3
    with pytest.raises(DeviceError, match=r"failed on .* \(exit status 2\): .*No such file"):
        ssh.check(["ls", "/nonexistent-edgelm"])


@pytest.mark.parametrize("arg", HOSTILE)
def test_hostile_arguments_arrive_byte_exact_and_run_nothing(ssh, arg):
    PWNED.unlink(missing_ok=True)
    assert ssh.check(["printf", "%s", arg]).stdout == arg.encode()
    assert ssh.script('printf "%s|%s" "$1" "$2"', [arg, arg]).stdout == f"{arg}|{arg}".encode()
    assert not PWNED.exists()


def test_stdin_is_passed_through(ssh):
    data = bytes(range(256)) * 100
    assert ssh.check(["cat"], input=data).stdout == data


def test_an_unknown_host_key_is_refused_then_accepted_on_request(sshd_server, tmp_path):
    cfg, known = sshd_server.client_config(tmp_path / "fresh")
    with Ssh(SshSpec.parse(sshd_server.spec), config=cfg) as s, pytest.raises(DeviceError) as err:
        s.run(["true"])
    msg = str(err.value)
    assert msg == (f"the host key of 127.0.0.1 is not in known_hosts; check it (ssh-keyscan -p {sshd_server.port} "
                   "127.0.0.1 | ssh-keygen -lf -) and pass --accept-new-host-key")
    assert known.read_text() == ""
    with Ssh(SshSpec.parse(sshd_server.spec), config=cfg, accept_new_host_key=True) as s:
        s.check(["true"])
    assert sshd_server.host_key_line.split()[2] in known.read_text()
    with Ssh(SshSpec.parse(sshd_server.spec), config=cfg) as s:  # now known: strict checking passes
        s.check(["true"])


def test_a_changed_host_key_is_refused_even_with_accept_new(sshd_server, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    line = f"[127.0.0.1]:{sshd_server.port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2]) + "\n"
    cfg, known = sshd_server.client_config(tmp_path / "changed", known_hosts=line)
    for accept in (False, True):
        with Ssh(SshSpec.parse(sshd_server.spec), config=cfg, accept_new_host_key=accept) as s, \
                pytest.raises(DeviceError, match="REMOTE HOST IDENTIFICATION HAS CHANGED") as err:
            s.run(["true"])
        assert "\n" not in str(err.value) and "accept-new" not in str(err.value)
    assert known.read_text() == line


def test_a_key_the_board_does_not_know_is_permission_denied(sshd_server, tmp_path):
    cfg, _ = sshd_server.client_config(tmp_path / "k", known_hosts=sshd_server.host_key_line + "\n")
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    cfg.write_text(cfg.read_text().replace(str(sshd_server.client_key), str(stranger)))
    with Ssh(SshSpec.parse(sshd_server.spec), config=cfg) as s, pytest.raises(DeviceError) as err:
        s.run(["true"])
    assert str(err.value) == f"{sshd_server.user}@127.0.0.1 refused our keys (Permission denied (publickey))"


def test_a_closed_port_is_connection_refused(sshd_server, tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Ssh(SshSpec("127.0.0.1", sshd_server.user, port), config=sshd_server.config) as s, \
            pytest.raises(DeviceError, match=f"127.0.0.1 refused the connection on port {port}"):
        s.run(["true"])


def _files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, size, mode in (("runner", 70_000, 0o755), ("model.pte", 3 * 1024 * 1024 + 7, 0o644),
                             ("empty.json", 0, 0o600)):
        p = tmp_path / "src" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(os.urandom(size))
        p.chmod(mode)
        out[name] = p
    return out


def test_put_uploads_files_with_their_modes_and_sha256_matches(ssh, sshd_server, board_dir, tmp_path):
    files = _files(tmp_path)
    seen = []
    sent = ssh.put(files, f"{board_dir}/.incoming-x", progress=lambda done, total: seen.append((done, total)))
    total = sum(p.stat().st_size for p in files.values())
    assert sent == total and seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    remote = {f"{board_dir}/.incoming-x/{n}": p for n, p in files.items()}
    hashes = ssh.sha256(list(remote))
    assert hashes == {r: hashlib.sha256(p.read_bytes()).hexdigest() for r, p in remote.items()}
    landed = Path(board_dir) / ".incoming-x"  # the board's disk, read directly
    assert sorted(x.name for x in landed.iterdir()) == sorted(files)
    for name, p in files.items():
        st = (landed / name).stat()
        assert st.st_mode & 0o777 == p.stat().st_mode & 0o777 and st.st_uid == sshd_server.uid
    with pytest.raises(DeviceError, match="cannot hash files on .*missing"):
        ssh.sha256([f"{board_dir}/missing"])


def test_a_put_whose_connection_is_killed_halfway_fails_and_leaves_a_partial_folder(ssh, board_dir, tmp_path):
    files = _files(tmp_path)
    ssh.check(["true"])  # the master connection exists: the child killed below is the upload's own channel

    def kill_the_channel(done, total):
        if done > 1024 * 1024:
            for pid in _children():
                if b"tar -x" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)

    with pytest.raises(DeviceError, match=r"upload to .* failed after \d+ of \d+ bytes: the connection closed") as err:
        ssh.put(files, f"{board_dir}/.incoming-y", progress=kill_the_channel)
    assert err.value.hint
    partial = Path(board_dir) / ".incoming-y" / "model.pte"  # the board's disk, read directly
    assert not partial.exists() or partial.stat().st_size < files["model.pte"].stat().st_size


def test_a_put_the_board_refuses_says_why(ssh, tmp_path):
    with pytest.raises(DeviceError, match=r"upload to /proc/edgelm-x on .* failed after \d+ of \d+ bytes: "
                                          r"mkdir: .*/proc/edgelm-x.* \(exit status 1\)"):
        ssh.put(_files(tmp_path), "/proc/edgelm-x")


def test_a_put_whose_local_file_shrinks_halfway_fails(ssh, board_dir, tmp_path):
    files = _files(tmp_path)

    def truncate(done, total):
        if done > 1024 * 1024:
            files["model.pte"].write_bytes(b"")

    with pytest.raises(DeviceError, match="reading a local file failed"):
        ssh.put(files, f"{board_dir}/.incoming-z", progress=truncate)


def _children() -> list[int]:
    out = []
    for task in Path("/proc/self/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def test_close_ends_the_master_connection(sshd_server):
    s = Ssh(SshSpec.parse(sshd_server.spec), config=sshd_server.config)
    s.check(["true"])
    folder = next(a for a in s.argv(["true"]) if a.startswith("ControlPath=")).split("=", 1)[1].rsplit("/", 1)[0]
    masters = [pid for pid in _all_pids() if folder.encode() in _cmdline(pid) and b"[mux]" in _cmdline(pid)]
    assert len(masters) == 1
    s.close()
    s.close()
    assert not [pid for pid in masters if _running(pid)]
    assert not Path(folder).exists()


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_the_runner_serves_over_an_ssh_channel(ssh, sshd_server, board_dir, host_bundle):
    files = {name: host_bundle.root / name for name in host_bundle.files}
    ssh.put(files, board_dir)
    assert ssh.sha256([f"{board_dir}/{n}" for n in files]) == {f"{board_dir}/{n}": h for n, h in
                                                               host_bundle.files.items()}
    log = (Path(board_dir).parent / "runner-ssh.log").open("wb")
    proc = ssh.popen(["exec", f"{board_dir}/runner", "--model", f"{board_dir}/model.pte", "--serial", "-"], stderr=log)
    link = PipeTransport.of(proc, f"{sshd_server.spec} runner")
    try:
        s = BoardSession(link, Timeouts(hello_s=60, first_token_s=60, token_s=30))
        assert s.wait_hello().model_sha256 == host_bundle.info["model_sha256"]
        tokens = [m.token for m in s.generate(P.Request((1, 82, 114), 8, ignore_eos=True)) if isinstance(m, P.Token)]
        assert len(tokens) == 8
        s.quit()
        assert proc.wait(30) == 0  # ssh passes on the runner's exit status
    finally:
        link.close()
        log.close()
