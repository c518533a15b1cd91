"""The host's side of a conversation, against scripted board bytes (faults injected)."""

import pytest

from toolchain.errors import CapacityError, DeviceError
from toolchain.link import framing
from toolchain.link import protocol as P
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import MemoryTransport

HELLO = P.Hello(1, "fw", "rpi5", "cd" * 32, 64, 259, 4, 5.0)
FAST = Timeouts(hello_s=0.5, first_token_s=0.5, token_s=0.3)


def board_frames(*msgs, start=0):
    out = b""
    for i, (t, m) in enumerate(msgs):
        out += framing.encode(t, start + i, m.pack())
    return out


def session_with(data: bytes, alive=None):
    tr = MemoryTransport()
    tr.inject(data)
    return BoardSession(tr, FAST, alive=alive, tx_seq=0), tr


def tokens_then_stats(n):
    msgs = [(P.HELLO, HELLO)] + [(P.TOKEN, P.Token(i, 10 + i, 1000 * i)) for i in range(n)]
    return msgs + [(P.STATS, P.Stats(3, n, P.STOP_LIMIT, 5.0, 1.0, 100.0, 50.0, 2048))]


def test_a_clean_request():
    s, tr = session_with(board_frames(*tokens_then_stats(4)))
    assert s.wait_hello().board == "rpi5"
    out = list(s.generate(P.Request((1, 2, 3), 4)))
    assert [m.token for m in out[:-1]] == [10, 11, 12, 13] and isinstance(out[-1], P.Stats)
    sent = list(framing.FrameReader().feed(bytes(tr.sent)))
    assert sent[0].type == P.REQUEST and sent[0].seq == 0
    assert P.parse(P.REQUEST, sent[0].body).prompt == (1, 2, 3)


def test_sequence_gap_fails_with_last_good_seq():
    msgs = tokens_then_stats(4)
    data = b"".join(framing.encode(t, i, m.pack()) for i, (t, m) in enumerate(msgs) if i != 3)
    s, _ = session_with(data)
    s.wait_hello()
    with pytest.raises(DeviceError, match=r"sequence gap: expected frame 3, got 4 \(last good frame seq 2"):
        list(s.generate(P.Request((1,), 4)))


def test_crc_failure_fails():
    data = bytearray(board_frames(*tokens_then_stats(2)))
    hello_len = len(framing.encode(P.HELLO, 0, HELLO.pack()))
    data[hello_len + 3] ^= 0x40  # inside the first TOKEN
    s, _ = session_with(bytes(data))
    s.wait_hello()
    with pytest.raises(DeviceError, match="garbled frame"):
        list(s.generate(P.Request((1,), 2)))


def test_per_token_deadline():
    s, _ = session_with(board_frames(*tokens_then_stats(3)[:3]))  # HELLO + 2 tokens, then silence
    s.wait_hello()
    got = []
    with pytest.raises(DeviceError, match="timed out after 0.3 s waiting for token 2"):
        for m in s.generate(P.Request((1,), 3)):
            got.append(m)
    assert len(got) == 2


def test_a_dead_board_is_reported_with_why():
    s, _ = session_with(board_frames((P.HELLO, HELLO)), alive=lambda: "runner killed by signal 9")
    s.wait_hello()
    with pytest.raises(DeviceError, match="board stopped while we waited for the first token.*signal 9"):
        list(s.generate(P.Request((1,), 3)))


def test_error_frames():
    s, _ = session_with(board_frames((P.HELLO, HELLO), (P.ERROR, P.Error(P.ERR_RUNTIME, "execute failed 0x12"))))
    s.wait_hello()
    with pytest.raises(DeviceError, match="RUNTIME: execute failed"):
        list(s.generate(P.Request((1,), 3)))


def test_too_long_request_is_refused_before_sending():
    s, tr = session_with(board_frames((P.HELLO, HELLO)))
    s.wait_hello()
    with pytest.raises(CapacityError, match="exceed the program's max sequence length 64"):
        list(s.generate(P.Request(tuple(range(10)), 60)))
    assert not tr.sent


class VanishingTransport(MemoryTransport):
    """Delivers its bytes, then the port is gone (a USB adapter unplugged)."""

    def read(self, deadline):
        if not self._rx:
            raise DeviceError(f"serial port {self.name} closed by the board (Input/output error)")
        return super().read(deadline)


def test_a_port_that_vanishes_and_stays_away_fails_naming_the_token():
    from toolchain.link.session import LinkError

    msgs = tokens_then_stats(6)[:4]  # HELLO, tokens 0..2, then the port goes away
    tr = VanishingTransport()
    tr.inject(board_frames(*msgs))
    tries = []

    def reopen():
        tries.append(1)
        raise DeviceError("cannot open serial port memory: No such file or directory")

    s = BoardSession(tr, FAST, reopen=reopen, reopen_s=0.3, tx_seq=0)
    s.wait_hello()
    with pytest.raises(LinkError, match=r"went away while we waited for token 3 and did not come back within 0.3 s"):
        list(s.generate(P.Request((1, 2, 3), 6)))
    assert len(tries) >= 2  # it kept trying until the deadline


def test_a_port_that_comes_back_is_reopened():
    msgs = tokens_then_stats(3)
    first = VanishingTransport()
    first.inject(board_frames(*msgs[:3]))  # HELLO, tokens 0 and 1
    second = MemoryTransport()
    second.inject(board_frames(*msgs[3:], start=3))  # token 2 and STATS, after the replug
    s = BoardSession(first, FAST, reopen=lambda: second, reopen_s=1.0, tx_seq=0)
    s.wait_hello()
    out = list(s.generate(P.Request((1, 2, 3), 3)))
    assert [m.token for m in out[:-1]] == [10, 11, 12] and s.reopened == 1 and s.transport is second


# What the board holds, by the host's count (KEEP_STATE) -----------------------------------------------------

def test_the_host_counts_what_the_board_holds():
    from toolchain.link.session import kept_of

    turn1 = [(P.HELLO, HELLO)] + [(P.TOKEN, P.Token(i, 10 + i, 1000 * i)) for i in range(3)]
    turn1 += [(P.STATS, P.Stats(3, 3, P.STOP_LIMIT, 5.0, 1.0, 100.0, 50.0, 2048))]
    s, tr = session_with(board_frames(*turn1))
    assert s.held is None
    s.wait_hello()
    assert s.held == ()  # a runner that just started holds nothing
    c = s.collect(P.Request((1, 2, 3), 3, keep_state=True))
    assert c.expected_kept == 0 and c.request.keep_state
    assert s.held == (1, 2, 3, 10, 11)  # the prompt and all but the last token (never fed)
    assert len(c.arrivals_s) == 3 and c.arrivals_s == sorted(c.arrivals_s)
    assert kept_of(P.Request((1, 2, 3, 10, 11, 12, 7), 1, keep_state=True), s.held) == 5
    assert kept_of(P.Request((1, 2, 3, 10, 11, 12, 7), 1, keep_state=False), s.held) == 0  # not asked
    assert kept_of(P.Request((1, 2, 3, 10, 99, 12, 7), 1, keep_state=True), s.held) == 0  # another conversation
    assert kept_of(P.Request((1, 2, 3, 10, 11), 1, keep_state=True), s.held) == 0  # does not go on past it
    assert kept_of(P.Request((1, 2, 3, 10, 11, 5), 1, keep_state=True), None) == 0  # unknown: nothing


def test_after_a_damaged_stream_the_state_is_unknown_and_the_next_turn_starts_afresh():
    s, tr = session_with(board_frames((P.HELLO, HELLO), (P.TOKEN, P.Token(0, 10, 0))))
    s.wait_hello()
    with pytest.raises(DeviceError):
        s.collect(P.Request((1, 2, 3), 3, keep_state=True))
    assert s.held is None
    sent = s.outgoing(P.Request((1, 2, 3, 10, 4), 3, keep_state=True))
    assert not sent.keep_state  # nothing the board then claims to keep could be checked
