"""Commands and files to a board over SSH, through the system's OpenSSH client (``ssh``), so that
``~/.ssh/config``, keys and the agent work as they do in a terminal.

The remote side always gets an argv list joined with :func:`shlex.quote`, never a caller's string:
``Ssh.run(["sha256sum", "--", path])``. Small remote scripts are constants of this package, run as
``sh -c SCRIPT sh ARG...`` (:func:`sh`), their arguments quoted like any other. The board user's login
shell must be a POSIX shell (sh, dash, bash, ash, zsh): it parses that one command line.

Connections are multiplexed (OpenSSH's ControlMaster): the first command opens a master connection in
the background, later ones reuse it (a few milliseconds instead of a handshake). The master ends on
:meth:`Ssh.close` (which also ends every channel still open on it), when the ``Ssh`` is collected, and
in any case ``CONTROL_PERSIST_S`` after its last channel closed, so none outlives us for long.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from toolchain.errors import DeviceError, UsageError

SCHEME = "ssh://"
CONNECT_TIMEOUT_S = 10  # TCP connect + SSH handshake (ConnectTimeout takes whole seconds)
SERVER_ALIVE_INTERVAL_S = 5  # a silent connection is probed this often...
SERVER_ALIVE_COUNT = 3  # ...and given up after this many unanswered probes (15 s)
CONTROL_PERSIST_S = 30  # an idle master connection ends this long after its last channel closed
RUN_TIMEOUT_S = 30.0  # a small remote command (mkdir, sha256sum of a bundle, readlink)
MAX_OUTPUT_BYTES = 16 << 20  # what a small remote command may print (a bundle's sha256sum: under 1 KiB)
OUTPUT_POLL_S = 0.005  # how often a running command's output size and deadline are looked at
PUT_TIMEOUT_S = 900.0  # a whole upload (a 350M program over a slow Wi-Fi link)
CLOSE_TIMEOUT_S = 5.0  # `ssh -O exit`
PUT_CHUNK = 1 << 20  # bytes read from a local file at a time
SSH_FAILED = 255  # ssh's own exit status when it could not run the command

USAGE_HINT = "expected ssh://[user@]host[:port], e.g. ssh://pi@rpi5.local or ssh://root@[fe80::1%eth0]:2222"
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*\Z")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_PORT = re.compile(r"[1-9][0-9]{0,4}\Z")
_SCOPE = re.compile(r"[A-Za-z0-9._-]+\Z")
_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*\Z")  # a plain file name put() accepts
_SHA256_LINE = re.compile(r"([0-9a-f]{64}) [ *](.*)\Z")

# Remote scripts: constants, run as `sh -c SCRIPT sh ARG...`.
UNTAR_SCRIPT = 'mkdir -p -- "$1" && exec tar -x -f - -C "$1"'


def sh(script: str, *args: str) -> list[str]:
    """The argv that runs ``script`` (a constant of ours) with ``args`` as ``$1``... under ``sh -c``."""
    return ["sh", "-c", script, "sh", *args]


# ----------------------------------------------------------------------------------------------
# The target's address


def _check_host(host: str) -> str | None:
    """Why ``host`` is not a DNS name, an IPv4 address or an IPv6 address (unbracketed); None if it is."""
    if not host:
        return "the host is empty"
    if ":" in host:
        addr, _, scope = host.partition("%")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        if "%" in host and not _SCOPE.match(scope):
            return f"the IPv6 zone {scope!r} is not an interface name"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
        return None
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        return (f"{host!r} is not a host name (letters, digits and '-' in dot-separated labels, "
                "not starting or ending with '-')")
    return None


@dataclass(frozen=True)
class SshSpec:
    """Where a board is: ``ssh://[user@]host[:port]``. ``host`` is a DNS name (or a ``Host`` alias of
    ``~/.ssh/config``), an IPv4 address or an IPv6 address (unbracketed here, bracketed in the text).
    ``user`` and ``port`` None: ssh's own defaults (the config, then the local user and 22)."""

    host: str
    user: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        why = _check_host(self.host)
        if why is None and self.user is not None and not _USER.match(self.user):
            why = f"the user {self.user!r} is not a user name (letters, digits, '.', '_', '-'; not starting with '-')"
        if why is None and self.port is not None and not (isinstance(self.port, int) and 1 <= self.port <= 65535):
            why = f"the port {self.port!r} is not in 1..65535"
        if why is not None:
            raise UsageError(f"bad SSH target {str(self)!r}: {why}", hint=USAGE_HINT)

    @classmethod
    def parse(cls, text: str) -> SshSpec:
        """``ssh://[user@]host[:port]`` and nothing else (no path, query, spaces or options)."""
        def bad(why: str) -> UsageError:
            return UsageError(f"bad SSH target {text!r}: {why}", hint=USAGE_HINT)

        if not text.startswith(SCHEME):
            raise bad(f"it does not start with {SCHEME}")
        rest = text[len(SCHEME):]
        odd = sorted({c for c in rest if not (c.isascii() and c.isprintable()) or c in " /?#\\"})
        if odd:
            raise bad("it holds " + ", ".join(repr(c) for c in odd) + " (only user, host and port may be given)")
        user: str | None = None
        if "@" in rest:
            user, _, rest = rest.partition("@")
            if not _USER.match(user):
                raise bad(f"the user {user!r} is not a user name (letters, digits, '.', '_', '-'; "
                          "not starting with '-')")
        port_text: str | None = None
        if rest.startswith("["):
            host, close, after = rest[1:].partition("]")
            if not close:
                raise bad("'[' without a closing ']'")
            if ":" not in host:
                raise bad(f"[{host}] is not an IPv6 address (brackets are for IPv6 only)")
            if after:
                if not after.startswith(":"):
                    raise bad(f"{after!r} after the address (expected :port)")
                port_text = after[1:]
        else:
            host, colon, port_part = rest.partition(":")
            if colon:
                if ":" in port_part:
                    raise bad("an IPv6 address must be in brackets, e.g. ssh://[::1]:22")
                port_text = port_part
        port: int | None = None
        if port_text is not None:
            if not _PORT.match(port_text) or int(port_text) > 65535:
                raise bad(f"the port {port_text!r} is not a number in 1..65535")
            port = int(port_text)
        why = _check_host(host)
        if why is not None:
            raise bad(why)
        return cls(host, user, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{SCHEME}{user}{host}{port}"


# ----------------------------------------------------------------------------------------------
# ssh's own failures (exit status 255), one line each


_SSH_CONNECT = re.compile(r"ssh: connect to host \S+ port \d+: (.*)")
_SSH_DENIED = re.compile(r"\S*: ?Permission denied \(([^)]*)\)")
_SSH_OTHER = ("ssh: ", "kex_exchange_identification:", "Connection closed by", "Connection reset by",
              "banner exchange:", "Bad owner or permissions", "Can't open user config file", "Load key ")


def ssh_failure(spec: SshSpec, stderr: str, connect_timeout_s: float) -> DeviceError | None:
    """ssh's own failure to reach or log in to the board, told by its stderr (exit status 255), as one
    line; None when no line is one of ssh's (then the remote command itself exited 255). Only whole
    lines in ssh's own wording count, so a remote program's message cannot pass for one."""
    host, port = spec.host, spec.port or 22
    lines = [x.strip() for x in stderr.splitlines()]
    if any("REMOTE HOST IDENTIFICATION HAS CHANGED" in x for x in lines):
        return DeviceError(f"the host key of {host} (port {port}) has changed: REMOTE HOST IDENTIFICATION HAS "
                           "CHANGED; refusing to connect",
                           hint="if the board was reinstalled, check its new key and remove the old one "
                                f"(ssh-keygen -R '[{host}]:{port}'); otherwise someone may be intercepting")
    if "Host key verification failed." in lines or any(re.match(r"No \S+ host key is known for ", x) for x in lines):
        return DeviceError(f"the host key of {host} is not in known_hosts; check it "
                           f"(ssh-keyscan -p {port} {host} | ssh-keygen -lf -) and pass --accept-new-host-key",
                           hint="or add the key to ~/.ssh/known_hosts yourself")
    for line in lines:
        denied = _SSH_DENIED.fullmatch(line.rstrip("."))
        if denied:
            who = f"{spec.user}@{host}" if spec.user else host
            return DeviceError(f"{who} refused our keys (Permission denied ({denied.group(1)}))",
                               hint="install your public key on the board (ssh-copy-id), or name the right one "
                                    "(IdentityFile) in ~/.ssh/config; edgelm never asks for a password")
        connect = _SSH_CONNECT.fullmatch(line)
        why = connect.group(1) if connect else ""
        if why == "Connection refused":
            return DeviceError(f"{host} refused the connection on port {port}",
                               hint="is sshd running on the board, and on this port?")
        if line.startswith("ssh: Could not resolve hostname "):
            return DeviceError(f"cannot resolve the host name {host}",
                               hint="check the name, your DNS or mDNS (.local), or use the board's IP address")
        if "timed out" in why or line.startswith(("Connection timed out during banner exchange", "Timeout, server ")):
            return DeviceError(f"{host} (port {port}) did not answer within {connect_timeout_s:g} s "
                               "(connection timed out)",
                               hint="is the board on and on this network? check the address and any firewall")
        if why in ("No route to host", "Network is unreachable"):
            return DeviceError(f"{host} is unreachable ({why.lower()})", hint="is the board on and on this network?")
    for line in reversed(lines):
        if line.startswith(_SSH_OTHER):
            return DeviceError(f"ssh to {spec} failed: {line}")
    return None


def last_line(data: bytes | str) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1] if lines else "(no message)"


def parse_sha256sum(output: str, paths: Sequence[str]) -> dict[str, str]:
    """``sha256sum -- PATH...``'s output, one line per path in order: ``HEX  PATH`` (or ``HEX *PATH``)."""
    lines = output.splitlines()
    if len(lines) != len(paths):
        raise DeviceError(f"sha256sum printed {len(lines)} lines for {len(paths)} files")
    out: dict[str, str] = {}
    for path, line in zip(paths, lines, strict=True):
        m = _SHA256_LINE.match(line)
        if not m or m.group(2) != path:
            raise DeviceError(f"unexpected sha256sum line for {path}: {line[:120]!r}")
        out[path] = m.group(1)
    return out


# ----------------------------------------------------------------------------------------------
# Uploads: a tar stream built here (plain names, regular files, modes kept)


class _Counted:
    """A file read by tarfile, reporting bytes as they go."""

    def __init__(self, f: IO[bytes], tick: Callable[[int], None]):
        self._f = f
        self._tick = tick

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(min(n, PUT_CHUNK) if n > 0 else PUT_CHUNK)
        self._tick(len(data))
        return data


def _check_put(files: Mapping[str, Path]) -> dict[str, os.stat_result]:
    if not files:
        raise UsageError("nothing to upload")
    stats: dict[str, os.stat_result] = {}
    for name, path in files.items():
        if not _NAME.match(name) or name in (".", "..") or len(name) > 100:
            raise UsageError(f"cannot upload {name!r}: not a plain file name (letters, digits, '.', '_', '-')")
        try:
            st = path.stat()
        except OSError as exc:
            raise UsageError(f"cannot upload {path}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"cannot upload {path}: not a regular file")
        stats[name] = st
    return stats


# ----------------------------------------------------------------------------------------------
# The client


_MASTER_PID = re.compile(rb"Master running \(pid=(\d+)\)")


def _end_master(base: list[str], state: str) -> None:
    """Ends the master connection (if one runs), waits until its process is gone, and removes its socket
    folder. Also a finalizer. ``base``: the ssh command line with ``--`` and the host last."""
    if os.path.exists(state) and any(True for _ in os.scandir(state)):
        def control(op: str) -> bytes:
            argv = [*base[:-2], "-O", op, *base[-2:]]
            return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=CLOSE_TIMEOUT_S, check=False).stderr
        try:
            found = _MASTER_PID.search(control("check"))
            control("exit")
        except (OSError, subprocess.TimeoutExpired):
            found = None  # it ends by itself CONTROL_PERSIST_S after its last channel
        # `-O exit` only asks: the master (a daemon, not our child) ends a moment later.
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while found is not None and _alive(int(found.group(1))) and time.monotonic() < deadline:
            time.sleep(0.01)
    shutil.rmtree(state, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended): :func:`toolchain.procinfo.look`."""
    from toolchain import procinfo

    seen = procinfo.look(pid)
    return seen is not None and seen.state != "Z"


class Ssh:
    """Runs commands on, and copies files to, one board. ``config``: an ssh config file used instead of
    ``~/.ssh/config``. ``accept_new_host_key``: trust (and record) the key of a host known_hosts does not
    know yet; a *changed* key is always refused. ``multiplex``: share one connection (see the module)."""

    def __init__(self, spec: SshSpec, *, config: Path | None = None, accept_new_host_key: bool = False,
                 connect_timeout_s: int = CONNECT_TIMEOUT_S, multiplex: bool = True, program: str = "ssh"):
        if connect_timeout_s < 1:
            raise UsageError(f"connect timeout {connect_timeout_s} s: must be at least 1 s")
        self.spec = spec
        self.config = config
        self.accept_new_host_key = accept_new_host_key
        self.connect_timeout_s = int(connect_timeout_s)
        self.program = program
        self._state: str | None = None
        if multiplex:
            # A fresh 0700 folder. Socket paths are short (108 bytes), %C is 40 hex: /tmp, not a long $TMPDIR.
            short = "/tmp" if os.path.isdir("/tmp") else None  # noqa: S108 - mkdtemp makes a private folder
            self._state = tempfile.mkdtemp(prefix="edgelm-ssh-", dir=short)
            self._finalizer = weakref.finalize(self, _end_master, self._base([]), self._state)

    def __repr__(self) -> str:
        return f"Ssh({self.spec})"

    def __enter__(self) -> Ssh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # argv ---------------------------------------------------------------------------------------

    def _base(self, extra: list[str]) -> list[str]:
        argv = [self.program]
        if self.config is not None:
            argv += ["-F", str(self.config)]
        checking = "accept-new" if self.accept_new_host_key else "yes"
        argv += ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={checking}",
                 "-o", f"ConnectTimeout={self.connect_timeout_s}",
                 "-o", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}",
                 "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
                 "-o", "LogLevel=ERROR", "-o", "ClearAllForwardings=yes",
                 "-a", "-x", "-T", "-e", "none"]  # no agent or X11 forwarding, no tty, no escape character
        if self._state is not None:
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._state}/%C",
                     "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
        if self.spec.port is not None:
            argv += ["-p", str(self.spec.port)]
        if self.spec.user is not None:
            argv += ["-l", self.spec.user]
        return [*argv, *extra, "--", self.spec.host]

    def argv(self, remote: Sequence[str]) -> list[str]:
        """The local command line that runs ``remote`` (an argv list) on the board, each word quoted."""
        if isinstance(remote, str) or not remote or not all(isinstance(a, str) for a in remote):
            raise TypeError("remote must be a non-empty list of strings (an argv, never a shell string)")
        if any("\0" in a for a in remote):
            raise UsageError("a remote argument holds a NUL byte")
        return [*self._base([]), shlex.join(remote)]

    # commands -----------------------------------------------------------------------------------

    def _what(self, remote: Sequence[str]) -> str:
        text = shlex.join(remote)
        return text if len(text) <= 80 else text[:77] + "..."

    def _raise_for_ssh(self, returncode: int, stderr: bytes) -> None:
        if returncode == SSH_FAILED:
            err = ssh_failure(self.spec, stderr.decode(errors="replace"), self.connect_timeout_s)
            if err is not None:
                raise err

    def run(self, remote: Sequence[str], *, input: bytes | None = None,
            timeout_s: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[bytes]:
        """Runs ``remote`` and returns its exit status, stdout and stderr (bytes). DeviceError when ssh
        itself fails (host key, login, network: one line each) or the command outlives ``timeout_s``."""
        argv = self.argv(remote)
        deadline = time.monotonic() + timeout_s
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
            except FileNotFoundError:
                raise DeviceError(f"cannot run {self.program}: not found",
                                  hint="install the OpenSSH client (apt install openssh-client)") from None
            try:
                if input is not None and proc.stdin is not None:
                    try:
                        proc.stdin.write(input)
                    except BrokenPipeError:
                        pass  # it did not read it all: its status and stderr say why
                    finally:
                        with contextlib.suppress(OSError):
                            proc.stdin.close()
                while True:  # a board may answer with more than any command of ours prints: it is cut off
                    try:
                        proc.wait(timeout=OUTPUT_POLL_S)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    sent = os.fstat(out.fileno()).st_size + os.fstat(err.fileno()).st_size
                    if sent > MAX_OUTPUT_BYTES:
                        raise DeviceError(f"`{self._what(remote)}` on {self.spec} sent more than "
                                          f"{MAX_OUTPUT_BYTES:,} bytes; stopped it",
                                          hint="a board that answers like this is not running what edgelm expects")
                    if time.monotonic() > deadline:
                        raise DeviceError(f"`{self._what(remote)}` on {self.spec} did not finish within "
                                          f"{timeout_s:g} s", hint="is the board overloaded, or the network down?")
            except BaseException:
                with contextlib.suppress(ProcessLookupError):  # the whole group: what ssh started goes too
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(MAX_OUTPUT_BYTES + 1), err.read(MAX_OUTPUT_BYTES + 1)
        if len(stdout) + len(stderr) > MAX_OUTPUT_BYTES:
            raise DeviceError(f"`{self._what(remote)}` on {self.spec} sent more than {MAX_OUTPUT_BYTES:,} bytes")
        self._raise_for_ssh(proc.returncode, stderr)
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    def check(self, remote: Sequence[str], *, input: bytes | None = None,
              timeout_s: float = RUN_TIMEOUT_S, what: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """:meth:`run`, and DeviceError with the remote stderr's last line unless it exited 0."""
        proc = self.run(remote, input=input, timeout_s=timeout_s)
        if proc.returncode != 0:
            raise DeviceError(f"{what or '`' + self._what(remote) + '`'} failed on {self.spec} "
                              f"(exit status {proc.returncode}): {last_line(proc.stderr)}")
        return proc

    def script(self, text: str, args: Sequence[str] = (), *, input: bytes | None = None,
               timeout_s: float = RUN_TIMEOUT_S, what: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """:meth:`check` of ``sh -c TEXT sh ARGS...``: ``text`` is a constant of ours, ``args`` anything."""
        return self.check(sh(text, *args), input=input, timeout_s=timeout_s, what=what)

    def popen(self, remote: Sequence[str], *, stderr: int | IO[Any] | None = subprocess.DEVNULL,
              ) -> subprocess.Popen[bytes]:
        """Starts ``remote`` with its stdin and stdout as pipes (a long-running channel: the runner
        serving on stdio, wrapped in a :class:`toolchain.link.transport.PipeTransport`). The channel
        ends when the pipes close; ssh's exit status 255 means the connection failed (see
        :func:`ssh_failure` for its stderr, best sent to a file)."""
        try:
            return subprocess.Popen(self.argv(remote), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=stderr, start_new_session=True)
        except FileNotFoundError:
            raise DeviceError(f"cannot run {self.program}: not found",
                              hint="install the OpenSSH client (apt install openssh-client)") from None

    # files --------------------------------------------------------------------------------------

    def put(self, files: Mapping[str, Path], remote_dir: str, *,
            progress: Callable[[int, int], None] | None = None, timeout_s: float = PUT_TIMEOUT_S) -> int:
        """Uploads ``files`` (plain name -> local regular file) into ``remote_dir`` (created if missing)
        in one connection, as a tar stream, modes kept. ``progress(done, total)`` in bytes of file data.
        Returns the bytes of file data sent. A transfer that stops halfway raises DeviceError and leaves
        a partial ``remote_dir``: upload into a staging folder and rename it when verified."""
        if not remote_dir or "\0" in remote_dir:
            raise UsageError(f"bad remote folder {remote_dir!r}")
        stats = _check_put(files)
        total = sum(st.st_size for st in stats.values())
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total)

        with tempfile.TemporaryFile() as errf:
            try:
                proc = subprocess.Popen(self.argv(sh(UNTAR_SCRIPT, remote_dir)), stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
            except FileNotFoundError:
                raise DeviceError(f"cannot run {self.program}: not found",
                                  hint="install the OpenSSH client (apt install openssh-client)") from None
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                proc.kill()

            timer = threading.Timer(timeout_s, expire)  # a write blocked on a stalled link ends here too
            timer.start()
            try:
                stopped = self._send_tar(proc, files, stats, tick)
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                timer.cancel()
            errf.seek(0)
            stderr = errf.read()
        if timed_out.is_set():
            raise DeviceError(f"upload to {remote_dir} on {self.spec} did not finish within {timeout_s:g} s "
                              f"({done} of {total} bytes sent)", hint="the folder there is incomplete; upload again")
        self._raise_for_ssh(rc, stderr)
        if stopped is not None or rc != 0:
            if stopped is not None and stopped[0] == "local":
                why = stopped[1]  # the board merely saw the stream end early
            elif rc > 0 and stderr.strip():
                why = f"{last_line(stderr)} (exit status {rc})"
            elif stopped is not None:
                why = stopped[1]
            else:
                why = f"the upload channel ended with status {rc}"
            raise DeviceError(f"upload to {remote_dir} on {self.spec} failed after {done} of {total} bytes: {why}",
                              hint="the folder there is incomplete; upload again")
        return done

    @staticmethod
    def _send_tar(proc: subprocess.Popen[bytes], files: Mapping[str, Path], stats: Mapping[str, os.stat_result],
                  tick: Callable[[int], None]) -> tuple[str, str] | None:
        """Writes the tar stream into ``proc``'s stdin and closes it. Returns None, or why it stopped early:
        ("connection", text) when the other end went away, ("local", text) when a local file failed."""
        assert proc.stdin is not None
        try:
            with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                for name, path in files.items():
                    st = stats[name]
                    info = tarfile.TarInfo(name)
                    info.size = st.st_size
                    info.mode = stat.S_IMODE(st.st_mode)
                    info.mtime = int(st.st_mtime)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(path, "rb") as f:
                        tar.addfile(info, _Counted(f, tick))  # type: ignore[arg-type]
            return None
        except (BrokenPipeError, ConnectionResetError):
            return "connection", "the connection closed during the upload"
        except OSError as exc:  # the local file changed or vanished while it was being sent
            return "local", f"reading a local file failed: {exc}"
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass  # the pipe broke: the status and stderr say why

    def sha256(self, remote_paths: Sequence[str], *, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, str]:
        """The sha256 (hex) of each file on the board, by ``sha256sum``. DeviceError naming the first
        path that cannot be read."""
        paths = list(remote_paths)
        if not paths:
            return {}
        for p in paths:
            if not p or any(c in p for c in "\\\n\r\0"):
                raise UsageError(f"cannot hash {p!r} on the board: a path with a backslash or a line break")
        proc = self.run(["sha256sum", "--", *paths], timeout_s=timeout_s)
        if proc.returncode != 0:
            raise DeviceError(f"cannot hash files on {self.spec}: {last_line(proc.stderr)}")
        return parse_sha256sum(proc.stdout.decode(errors="replace"), paths)

    def close(self) -> None:
        """Ends the shared connection, and with it every channel still open on it."""
        if self._state is not None:
            self._finalizer()
