"""The runner as a serial peer: several requests per session, state reset, sampling, bad frames."""

import pytest

from toolchain import api
from toolchain.link import framing
from toolchain.link import protocol as P
from toolchain.link.session import Timeouts
from toolchain.link.transport import Deadline

pytestmark = [pytest.mark.hil, pytest.mark.slow]


@pytest.fixture()
def session(hil_board, hil_workdir, hil_up):
    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    bundle, _ = api.cached_build(hil_board.board, exported.pte, hil_workdir)
    with hil_up(bundle, timeouts=Timeouts(hello_s=60, first_token_s=60, token_s=30)) as up:
        up.session.target = up.target
        yield up.session


def _tokens(session, request):
    return [m.token for m in session.generate(request) if isinstance(m, P.Token)]


def test_requests_reset_the_state(session):
    a = P.Request(prompt=(1, 82, 114, 103), max_new_tokens=12, ignore_eos=True)
    b = P.Request(prompt=(1, 87, 104, 101, 110), max_new_tokens=12, ignore_eos=True)
    first = _tokens(session, a)
    _tokens(session, b)
    assert _tokens(session, a) == first


def test_seeded_sampling_is_reproducible(session):
    req = P.Request(prompt=(1, 82, 114, 103), max_new_tokens=16, temperature=0.9, top_k=20, top_p=0.9, seed=42,
                    ignore_eos=True)
    assert _tokens(session, req) == _tokens(session, req)
    other = P.Request(**{**req.__dict__, "seed": 43})
    assert len(_tokens(session, other)) == 16


def test_stops_at_a_stop_token(session):
    first = _tokens(session, P.Request(prompt=(1, 82), max_new_tokens=10, ignore_eos=True))
    stop_at = first[3]
    got = _tokens(session, P.Request(prompt=(1, 82), max_new_tokens=10, stop=(stop_at,)))
    assert got == first[:first.index(stop_at) + 1]


def _next_error(session):
    for frame, msg in session.frames(Deadline(30)):
        if isinstance(msg, P.Error):
            return msg
    raise AssertionError("no ERROR frame came back")


def test_garbled_and_oversized_frames_get_error_frames_and_the_runner_keeps_serving(session):
    wire = bytearray(framing.encode(P.REQUEST, 99, P.Request((1, 2), 4).pack()))
    wire[5] ^= 0xFF
    session.transport.write(bytes(wire))
    assert _next_error(session).code in (P.ERR_BAD_CRC, P.ERR_BAD_FRAME)
    session.transport.write(b"\x01" * (framing.MAX_WIRE + 100) + b"\x00")
    assert _next_error(session).code == P.ERR_TOO_LONG
    session.transport.write(framing.encode(P.REQUEST, 100, b"\x01\x02"))
    assert _next_error(session).code == P.ERR_BAD_REQUEST
    session._rx_seq = None  # error frames advanced the board's counter; resynchronise
    session._tx_seq = 101
    assert len(_tokens(session, P.Request((1, 82), max_new_tokens=5, ignore_eos=True))) == 5
    assert session.target.alive() is None


def test_a_request_longer_than_the_program_is_refused_by_the_board(session):
    session.hello = None  # skip the host-side check: the board must refuse on its own
    session.send(P.REQUEST, P.Request(tuple(range(1, 11)), 600).pack())
    err = _next_error(session)
    assert err.code == P.ERR_SEQ_TOO_LONG


def _stream(session, request):
    got = list(session.generate(request))
    return [m.token for m in got if isinstance(m, P.Token)], got[-1]


def test_cancel_stops_the_generation_and_the_runner_serves_on(session):
    req = P.Request(prompt=(1, 82, 114, 103), max_new_tokens=100, ignore_eos=True)
    full, _ = _stream(session, req)
    # REQUEST and CANCEL in one write: the CANCEL waits in the runner's input while it prefills,
    # and stops it before its second token (however fast the board)
    seq = session._tx_seq
    session.transport.write(framing.encode(P.REQUEST, seq, req.pack()) + framing.encode(P.CANCEL, seq + 1, b""))
    session._tx_seq = seq + 2
    tokens, stats = [], None
    for _, msg in session.frames(Deadline(120)):
        if isinstance(msg, P.Token):
            tokens.append(msg.token)
        elif isinstance(msg, P.Stats):
            stats = msg
            break
    session._rx_seq = None  # frames() does not count: take the board's numbering as it comes
    assert stats.stop == P.STOP_CANCELLED and stats.generated == len(tokens)
    assert tokens == full[:1]
    # a CANCEL with nothing under way is ignored, and the next request is served in full
    session.send(P.CANCEL)
    again, stats = _stream(session, req)
    assert again == full and stats.stop == P.STOP_LIMIT


def test_a_chat_turn_keeps_the_state_it_extends(session):
    first = P.Request(prompt=(1, 82, 114, 103), max_new_tokens=10, ignore_eos=True, keep_state=True)
    reply, stats = _stream(session, first)
    assert stats.kept == 0
    turn = P.Request(prompt=(*first.prompt, *reply, 32, 87, 104), max_new_tokens=10, ignore_eos=True,
                     keep_state=True)
    kept, stats = _stream(session, turn)
    assert stats.kept == len(first.prompt) + len(reply) - 1  # all it fed: the last token never was
    fresh, fresh_stats = _stream(session, P.Request(**{**turn.__dict__, "keep_state": False}))
    assert fresh_stats.kept == 0 and kept == fresh  # the same tokens as feeding it all
    # a prompt that does not extend the state exactly is fed whole
    other = P.Request(prompt=(1, 82, 114, 104, 5, 6), max_new_tokens=4, ignore_eos=True, keep_state=True)
    _, stats = _stream(session, other)
    assert stats.kept == 0
