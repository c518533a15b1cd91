"""``api.serve_and_validate`` against scripted boards: what the host does while a board is silent."""

import time
from types import SimpleNamespace

import pytest

from toolchain import api
from toolchain.link import framing
from toolchain.link import protocol as P
from toolchain.link.session import BoardSession, LinkError, Timeouts
from toolchain.link.transport import MemoryTransport

HELLO = P.Hello(1, "fw", "host", "cd" * 32, 64, 259, 2, 5.0)


def _silent_board():
    tr = MemoryTransport()
    tr.inject(framing.encode(P.HELLO, 0, HELLO.pack()))
    s = BoardSession(tr, Timeouts(hello_s=1, first_token_s=60, token_s=60), tx_seq=0)
    s.wait_hello()
    return SimpleNamespace(session=s), tr


def test_ctrl_c_abandons_a_silent_board_within_a_second():
    """A board that says nothing (a hung prefill): Ctrl-C sends CANCEL at once, and a board that does
    not end the request within CANCEL_GRACE_S is abandoned, not waited for until the prefill deadline."""
    up, tr = _silent_board()
    start = time.monotonic()
    with pytest.raises(LinkError, match="did not end the request within 1 s of CANCEL"):
        api.serve_and_validate(up, P.Request((1, 2, 3), 8), None, cancel=lambda: True, retries=3)
    assert time.monotonic() - start < api.CANCEL_GRACE_S + 1.0
    sent = [f.type for f in framing.FrameReader().feed(bytes(tr.sent))]
    assert sent == [P.REQUEST, P.CANCEL]  # asked once, cancelled once, not asked again
    assert up.session.on_idle is None  # the hook does not outlive the request


def test_a_board_that_answers_cancel_is_judged_as_cancelled():
    up, tr = _silent_board()
    tr.inject(framing.encode(P.TOKEN, 1, P.Token(0, 7, 10).pack())
              + framing.encode(P.STATS, 2, P.Stats(3, 1, P.STOP_CANCELLED, 5.0, 0.01, 1.0, 0.0, 1).pack()))
    served = api.serve_and_validate(up, P.Request((1, 2, 3), 8), None, cancel=lambda: True)
    assert served.collected.tokens == [7] and served.collected.stats.stop == P.STOP_CANCELLED
