"""A real OpenSSH server on 127.0.0.1 for tests: a throwaway host key, a throwaway client key, and a
client config that trusts exactly that host key. It runs as an unprivileged user: as root (CI, this
machine) a system user ``edgelm-board`` is created once and sshd runs as it (an unprivileged sshd can
only log in its own user); otherwise as the current user.

``start_sshd(folder)`` returns a :class:`SshServer`; ``server.stop()`` ends it. A server that does not
come up raises RuntimeError with sshd's own log: a test that needs it fails, it is never skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
BOARD_USER = "edgelm-board"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
PORT_ATTEMPTS = 3  # another process may take the free port between our probe and sshd's bind

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {server}/host_ed25519
PidFile {server}/sshd.pid
AuthorizedKeysFile {server}/authorized_keys
AllowUsers {user}
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PermitUserEnvironment no
UseDNS no
PrintMotd no
MaxSessions 64
MaxStartups 64
LogLevel VERBOSE
Subsystem sftp internal-sftp
SetEnv XDG_DATA_HOME={data}
"""

CLIENT_CONFIG = """\
Host 127.0.0.1 edgelm-test-board
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {key}
  IdentitiesOnly yes
  IdentityAgent none
  PreferredAuthentications publickey
  UserKnownHostsFile {known_hosts}
  GlobalKnownHostsFile /dev/null
  UpdateHostKeys no
"""


@dataclass
class SshServer:
    """A running sshd. ``spec``: ``ssh://USER@127.0.0.1:PORT``; ``config``: an ssh client config for it
    (its ``known_hosts`` holds the server's key); ``home``: the board user's home; ``scratch``: an empty
    folder the board user owns (tests upload there, by absolute path), removed by ``stop``."""

    spec: str
    port: int
    user: str
    uid: int
    home: Path
    scratch: Path
    data: Path  # the board user's XDG_DATA_HOME (set by sshd): edgelm's data folder lives under it
    config: Path
    known_hosts: Path
    client_key: Path
    host_key_line: str  # the known_hosts line for this server
    log: Path  # sshd's stderr
    process: subprocess.Popen[bytes]
    _server_dir: Path

    def client_config(self, folder: Path, known_hosts: str = "") -> tuple[Path, Path]:
        """Another client config for this server, whose known_hosts holds ``known_hosts`` (default:
        nothing, so the server's key is unknown). Returns (config, known_hosts)."""
        folder.mkdir(parents=True, exist_ok=True)
        kh = folder / "known_hosts"
        kh.write_text(known_hosts)
        cfg = folder / "ssh_config"
        cfg.write_text(CLIENT_CONFIG.format(port=self.port, user=self.user, key=self.client_key, known_hosts=kh))
        return cfg, kh

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)
        shutil.rmtree(self._server_dir, ignore_errors=True)


def _board_user() -> pwd.struct_passwd:
    """As root: the unprivileged ``edgelm-board`` user, created if missing (twice at once is fine)."""
    try:
        return pwd.getpwnam(BOARD_USER)
    except KeyError:
        pass
    proc = subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/sh", "--password", "*",
                           "--comment", "edgelm test board", BOARD_USER], capture_output=True, text=True)
    try:
        return pwd.getpwnam(BOARD_USER)
    except KeyError:
        raise RuntimeError(f"cannot create the test user {BOARD_USER}: {proc.stderr.strip()}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def _wait_banner(port: int, proc: subprocess.Popen[bytes], log: Path) -> str | None:
    """None once sshd answers with its banner; else why not (it exited, or no answer in time)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"sshd exited with status {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return None
        except OSError:
            pass
        time.sleep(0.05)
    return f"no SSH banner on 127.0.0.1:{port} within {START_TIMEOUT_S:g} s"


def start_sshd(client_folder: Path) -> SshServer:
    """Starts sshd; client files (key, config, known_hosts) go into ``client_folder``."""
    if not os.access(SSHD, os.X_OK):
        raise RuntimeError(f"{SSHD} is missing: install openssh-server (make setup does)")
    if os.geteuid() == 0:
        pw = _board_user()
        drop = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    else:
        pw = pwd.getpwuid(os.geteuid())
        drop = []
    # The server's folder must be reachable by the board user: not under pytest's 0700 root-owned tmp.
    server = Path(tempfile.mkdtemp(prefix="edgelm-sshd-"))
    scratch = Path(tempfile.mkdtemp(prefix="edgelm-board-"))
    client_folder.mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(server / "host_ed25519", "edgelm-test-host")
    client_pub = _keygen(client_folder / "client_ed25519", "edgelm-test-client")
    (server / "authorized_keys").write_text(client_pub + "\n")
    _chown_tree(server, pw.pw_uid, pw.pw_gid)
    _chown_tree(scratch, pw.pw_uid, pw.pw_gid)
    why = "not started"
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        cfg = server / "sshd_config"
        cfg.write_text(SSHD_CONFIG.format(port=port, server=server, user=pw.pw_name, data=scratch / "data"))
        os.chown(cfg, pw.pw_uid, pw.pw_gid)
        log = server / f"sshd-{port}.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen([*drop, SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        why_not = _wait_banner(port, proc, log)
        if why_not is None:
            known_line = f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}"
            srv = SshServer(spec=f"ssh://{pw.pw_name}@127.0.0.1:{port}", port=port, user=pw.pw_name,
                            uid=pw.pw_uid, home=Path(pw.pw_dir), scratch=scratch, data=scratch / "data",
                            config=client_folder / "ssh_config",
                            known_hosts=client_folder / "known_hosts", client_key=client_folder / "client_ed25519",
                            host_key_line=known_line, log=log, process=proc, _server_dir=server)
            srv.client_config(client_folder, known_line + "\n")
            return srv
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        why = f"{why_not}: {log.read_text(errors='replace').strip()[-2000:]}"
        if "Address already in use" not in why:
            break
    shutil.rmtree(server, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    raise RuntimeError(f"sshd did not start ({why})")


def null_modem(folder: Path, board_user: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """A pseudo-terminal pair standing in for a USB-serial cable to the board's UART (socat): the
    process, the host's end and the board's end (owned by ``board_user``, as a UART belongs to the
    dialout group), both as the real /dev/pts paths."""
    folder.mkdir(parents=True, exist_ok=True)
    host, board_end = folder / "host-end", folder / "board-end"
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={host}",
                             f"pty,raw,echo=0,link={board_end},user={board_user},mode=660"],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (host.exists() and board_end.exists()):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("socat did not make the pty pair")
        time.sleep(0.02)
    return proc, os.path.realpath(host), os.path.realpath(board_end)
