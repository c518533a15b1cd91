"""A real labgrid farm on 127.0.0.1 for tests: ``labgrid-coordinator``, ``labgrid-exporter`` (which
starts Debian's ser2net for each serial port when its place is acquired), and a board made of parts
of this machine:

- its UART: a pseudo-terminal pair (socat); the exporter exports the host's end, the runner opens
  the board's end;
- its network: a TCP gate in front of the test sshd (tests/sshd.py), forwarding while the board is
  on and hanging up on every connection while it is off or hung;
- its power switch: an HTTP stub of labgrid's ``simplerest`` power model, which opens and closes
  the gate.

ser2net listens on every interface when the exporter writes ``tcp,PORT``; a wrapper on the
exporter's PATH rewrites that to ``tcp,127.0.0.1,PORT``. A part that does not come up raises
RuntimeError with its log: a test that needs the farm fails, it is never skipped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sshd import null_modem

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 30.0
SER2NET_LOOPBACK = """#!/bin/sh
# ser2net bound to loopback: the exporter writes its accepter as "tcp,PORT"; make it "tcp,127.0.0.1,PORT".
for a in "$@"; do shift; set -- "$@" "$(printf '%s' "$a" | sed 's/,tcp,\\([0-9]\\)/,tcp,127.0.0.1,\\1/')"; done
exec /usr/sbin/ser2net "$@"
"""


class Gate:
    """127.0.0.1:port forwarding to ``to_port`` while open; closing every connection while shut."""

    def __init__(self, to_port: int):
        self.to_port = to_port
        self.open = True
        self.stalled = False  # accept, then say nothing (a board whose sshd hangs): the client waits
        self._held: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                conn.close()
                continue
            if self.stalled:
                self._held.append(conn)
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.to_port))
            except OSError:
                conn.close()
                continue
            self._conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def shut(self) -> None:
        """The board stops answering: new connections are hung up, open ones cut."""
        self.open = False
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conns.clear()

    def close(self) -> None:
        self.shut()
        self.sock.close()


class PowerStub:
    """labgrid's ``simplerest`` power model: GET /power/INDEX/1 (on), /0 (off), /power/INDEX (state:
    the body "1" or "0"). Switching the board off (or on) shuts (or opens) its gate; every request is
    recorded in ``log`` as "on", "off" or "get"."""

    def __init__(self, gate: Gate):
        self.gate = gate
        self.on = True
        self.hung = False
        self.log: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                m = re.fullmatch(r"/power/0(/([01]))?", self.path)
                if m is None:
                    self.send_error(404)
                    return
                if m.group(2) is None:
                    stub.log.append("get")
                    body = b"1" if stub.on else b"0"
                else:
                    stub.switch(m.group(2) == "1")
                    body = b""
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/power/{{index}}/{{value}}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def switch(self, on: bool) -> None:
        self.log.append("on" if on else "off")
        self.on = on
        if on:
            self.hung = False  # a power cycle cures a hang
            self.gate.open = True
        else:
            self.gate.shut()

    def hang(self) -> None:
        """The board is on but answers nothing (a kernel that hung)."""
        self.on, self.hung = True, True
        self.gate.shut()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Board:
    """A board of this machine in the farm: its UART ends, gate and power switch."""

    host_end: str  # /dev/pts/N: what the exporter exports
    board_end: str  # /dev/pts/M: what the runner opens (the board user's)
    gate: Gate
    power: PowerStub
    socat: subprocess.Popen[bytes]

    def close(self) -> None:
        self.power.close()
        self.gate.close()
        self.socat.terminate()
        self.socat.wait()


def make_board(folder: Path, ssh_port: int, board_user: str) -> Board:
    proc, host_end, board_end = null_modem(folder, board_user)
    gate = Gate(ssh_port)
    return Board(host_end, board_end, gate, PowerStub(gate), proc)


def exporter_config(group: str, board: Board, user: str) -> str:
    return (f"## exported by tests/labgrid_farm.py\n{group}:\n"
            f"  console:\n    cls: RawSerialPort\n    port: \"{board.host_end}\"\n    speed: 921600\n"
            f"  NetworkService:\n    address: 127.0.0.1\n    username: {user}\n    port: {board.gate.port}\n"
            f"  NetworkPowerPort:\n    model: simplerest\n    host: '{board.power.url}'\n    index: 0\n")


def _wait_line(proc: subprocess.Popen[str], log: Path, pattern: str, what: str) -> re.Match[str]:
    """Read ``proc``'s output (also written to ``log``) until a line matches ``pattern``."""
    found: list[re.Match[str]] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        with log.open("a") as f:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if not found:
                    m = re.search(pattern, line)
                    if m:
                        found.append(m)
                        done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(START_TIMEOUT_S)
    if not found:
        proc.kill()
        raise RuntimeError(f"{what} did not come up within {START_TIMEOUT_S:g} s: {log.read_text()[-2000:]}")
    return found[0]


@dataclass
class Farm:
    folder: Path
    coordinator: str  # 127.0.0.1:PORT
    process: subprocess.Popen[str]
    exporters: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def client(self, *args: str, env: dict[str, str] | None = None, check: bool = True) \
            -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(BIN / "labgrid-client"), "-x", self.coordinator, *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc

    def start_exporter(self, name: str, config: str) -> subprocess.Popen[str]:
        (self.folder / "bin").mkdir(exist_ok=True)
        wrapper = self.folder / "bin" / "ser2net"
        wrapper.write_text(SER2NET_LOOPBACK)
        wrapper.chmod(0o755)
        cfg = self.folder / f"{name}.yaml"
        cfg.write_text(config)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
        proc = subprocess.Popen([str(BIN / "labgrid-exporter"), "--coordinator", self.coordinator, "--name", name,
                                 "--hostname", "127.0.0.1", str(cfg)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        _wait_line(proc, self.folder / f"{name}.log", r"Exporter ready", f"labgrid-exporter {name}")
        self.exporters[name] = proc
        return proc

    def add_place(self, place: str, pattern: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        prefix = pattern.rsplit("/", 1)[0]
        while prefix not in self.client("resources").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no resources {prefix} at the coordinator")
            time.sleep(0.2)
        self.client("-p", place, "create")
        self.client("-p", place, "add-match", pattern)

    def acquired_by(self, place: str) -> str | None:
        out = self.client("-p", place, "show").stdout
        m = re.search(r"^\s*acquired: (\S+)", out, re.M)
        return None if m is None or m.group(1) == "None" else m.group(1)

    def stop_exporter(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.exporters.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for name in list(self.exporters):
            self.stop_exporter(name)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_farm(folder: Path) -> Farm:
    """A coordinator on 127.0.0.1 (a free port), its state in ``folder``/state."""
    state = folder / "state"
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(BIN / "labgrid-coordinator"), "-l", "127.0.0.1:0"], cwd=state,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    m = _wait_line(proc, folder / "coordinator.log", r"listening on (127\.0\.0\.1:\d+)", "labgrid-coordinator")
    return Farm(folder, m.group(1), proc)
