"""PipeTransport: frames over a child's stdin/stdout, with deadlines; end of file is a lost link."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolchain.errors import DeviceError
from toolchain.link import framing, protocol
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import PIPE_WRITE_TIMEOUT_S, Deadline, PipeTransport

REPO = Path(__file__).resolve().parents[2]

# A board on stdio: HELLO, then answers each REQUEST with max_new_tokens TOKENs (token = index) and STATS.
STDIO_BOARD = """
import os, sys
sys.path.insert(0, {repo!r})
from toolchain.link import framing, protocol as P
out = sys.stdout.buffer
seq = 0
def send(t, body):
    global seq
    out.write(framing.encode(t, seq, body)); out.flush(); seq += 1
send(P.HELLO, P.Hello(P.PROTOCOL_VERSION, "0.0+test", "stdio-board", "ab" * 32, 64, 259, 1, 1.0).pack())
reader = framing.FrameReader()
while True:
    data = os.read(0, 4096)
    if not data:
        sys.exit(6)
    for f in reader.feed(data):
        if f.type == P.QUIT:
            sys.exit(0)
        req = P.Request.parse(f.body)
        for i in range(req.max_new_tokens):
            send(P.TOKEN, P.Token(i, i, i).pack())
        send(P.STATS, P.Stats(len(req.prompt), req.max_new_tokens, P.STOP_LIMIT, 1, 1, 1, 1, 1).pack())
"""


def test_read_returns_nothing_within_the_deadline_then_data_then_refuses_after_end_of_file():
    r, w = os.pipe()
    r2, w2 = os.pipe()
    t = PipeTransport("pipes", r, w2)
    started = time.monotonic()
    assert t.read(Deadline(0.02)) == b""
    assert time.monotonic() - started < 0.5
    os.write(w, b"abc")
    assert t.read(Deadline(1)) == b"abc"
    os.close(w)
    with pytest.raises(DeviceError, match="end of file"):
        t.read(Deadline(1))
    t.write(b"xyz")
    assert os.read(r2, 10) == b"xyz"
    os.close(r2)
    with pytest.raises(DeviceError, match="broken pipe"):
        t.write(b"more")
    t.close()
    with pytest.raises(DeviceError, match="closed"):
        t.read(Deadline(1))


def test_a_peer_that_reads_nothing_fails_the_write_after_the_write_timeout(monkeypatch):
    from toolchain.link import transport
    monkeypatch.setattr(transport, "PIPE_WRITE_TIMEOUT_S", 0.2)
    r, w = os.pipe()
    t = PipeTransport("pipes", r, w)  # our own reader: nobody drains it
    with pytest.raises(DeviceError, match="read nothing"):
        t.write(b"x" * (1 << 20))
    t.close()
    assert PIPE_WRITE_TIMEOUT_S >= 1


def test_a_session_over_a_child_process_and_its_exit_status_on_a_lost_link():
    proc = subprocess.Popen([sys.executable, "-c", STDIO_BOARD.format(repo=str(REPO))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    t = PipeTransport.of(proc, "stdio board")
    s = BoardSession(t, Timeouts(hello_s=20, first_token_s=5, token_s=5))
    assert s.wait_hello().board == "stdio-board"
    got = list(s.generate(protocol.Request((1, 2), 5)))
    assert [m.token for m in got if isinstance(m, protocol.Token)] == [0, 1, 2, 3, 4]
    s.quit()
    with pytest.raises(DeviceError, match="exited with status 0"):
        while True:
            t.read(Deadline(5))
    t.close()
    assert proc.returncode == 0


def test_close_ends_the_process_it_owns_even_one_that_ignores_end_of_file(monkeypatch):
    from toolchain.link import transport
    monkeypatch.setattr(transport, "PIPE_CLOSE_WAIT_S", 0.2)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    t = PipeTransport.of(proc, "sleeper")
    t.write(framing.encode(protocol.QUIT, 0, b""))
    t.close()
    assert proc.returncode is not None
    t.close()  # twice is fine
