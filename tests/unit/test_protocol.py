import pytest

from toolchain.link import protocol as P


def test_round_trips():
    msgs = [
        (P.HELLO, P.Hello(1, "0.1.0+abc", "rpi5", "ab" * 32, 512, 259, 4, 12.5)),
        (P.TOKEN, P.Token(3, 70000, 123456789012)),
        (P.STATS, P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456)),
        (P.STATS, P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 9, 30, 23)),
        (P.STATS, P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 9, 30, 23, 61)),
        (P.REQUEST, P.Request((1, 2), 8, draft=False)),
        (P.ERROR, P.Error(P.ERR_SEQ_TOO_LONG, "prompt 10 + 600 > 512")),
        (P.REQUEST, P.Request((1, 2, 3), 64, 0.75, 40, 0.5, 1234, (2, 7), True)),
    ]
    for msg_type, msg in msgs:
        assert P.parse(msg_type, msg.pack()) == msg


def test_truncated_and_trailing_bodies_are_refused():
    body = P.Token(1, 2, 3).pack()
    with pytest.raises(P.ProtocolError, match="truncated"):
        P.parse(P.TOKEN, body[:-1])
    with pytest.raises(P.ProtocolError, match="truncated"):
        P.parse(P.TOKEN, body + b"\x00")  # the start of a logits report, cut short
    with_logits = P.Token(1, 2, 3, 0.5, ((2, 0.5), (9, 0.25))).pack()
    assert P.parse(P.TOKEN, with_logits).top == ((2, 0.5), (9, 0.25))
    with pytest.raises(P.ProtocolError, match="trailing"):
        P.parse(P.TOKEN, with_logits + b"\x00")


def test_stats_in_four_forms_and_no_other():
    old = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456)
    mid = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 9, 30, 23)
    drafts = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 9, 30, 23, 61)
    new = P.Stats(5, 64, P.STOP_CANCELLED, 10.0, 20.0, 300.0, 50.0, 123456, 40, 9, 30, 23, 61, 4)
    assert len(new.pack()) == len(drafts.pack()) + 4 == len(mid.pack()) + 8 == len(old.pack()) + 24
    assert P.parse(P.STATS, old.pack()).drafted is None  # a board from before the draft counters
    assert P.parse(P.STATS, mid.pack()).draft_model_calls is None  # ... and from before draft models
    assert P.parse(P.STATS, drafts.pack()).kept is None  # ... and from before chat turns kept the state
    assert P.parse(P.STATS, new.pack()) == new
    for body in (mid.pack()[:-1], mid.pack() + b"\x00", drafts.pack()[:-1], drafts.pack() + b"\x00",
                 new.pack()[:-1]):
        with pytest.raises(P.ProtocolError, match="truncated"):
            P.parse(P.STATS, body)
    with pytest.raises(P.ProtocolError, match="trailing"):
        P.parse(P.STATS, new.pack() + b"\x00")
    with pytest.raises(P.ProtocolError, match="5 of 5 prompt tokens were already in the state"):
        P.parse(P.STATS, P.Stats(5, 64, 1, 1.0, 1.0, 1.0, 1.0, 1, 40, 9, 30, 23, 61, 5).pack())
    lying = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 2, 3, 7)
    with pytest.raises(P.ProtocolError, match="7 of 3 draft tokens"):
        P.parse(P.STATS, lying.pack())
    for calls, draft_calls, drafted in ((40, 41, 50), (40, 9, 5), (40, 0, 5)):
        with pytest.raises(P.ProtocolError, match="calls verified"):
            P.parse(P.STATS, P.Stats(5, 64, 1, 1.0, 1.0, 1.0, 1.0, 1, calls, draft_calls, drafted, 0).pack())


def test_keep_state_is_bit_3_and_cancel_is_0x83():
    req = P.Request((1, 2), 4, keep_state=True)
    assert int.from_bytes(req.pack()[4:8], "little") == P.FLAG_KEEP_STATE == 8
    assert P.parse(P.REQUEST, req.pack()).keep_state and not P.parse(P.REQUEST, P.Request((1,), 4).pack()).keep_state
    assert P.CANCEL == 0x83 and P.NAMES[P.CANCEL] == "CANCEL" and P.STOP_CANCELLED == 2


def test_the_no_draft_flag_is_bit_2():
    flags = int.from_bytes(P.Request((1,), 4, draft=False).pack()[4:8], "little")
    assert flags == P.FLAG_NO_DRAFT == 4
    assert int.from_bytes(P.Request((1,), 4).pack()[4:8], "little") == 0


def test_request_with_a_lying_prompt_count_is_refused():
    body = bytearray(P.Request((1, 2, 3), 4).pack())
    body[28:32] = (10**6).to_bytes(4, "little")  # n_prompt
    with pytest.raises(P.ProtocolError):
        P.parse(P.REQUEST, bytes(body))


def test_unknown_type():
    with pytest.raises(P.ProtocolError, match="unknown message type 0x7f"):
        P.parse(0x7F, b"")
