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


def test_stats_in_three_forms_and_no_other():
    old = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456)
    mid = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 9, 30, 23)
    new = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 9, 30, 23, 61)
    assert len(new.pack()) == len(mid.pack()) + 4 == len(old.pack()) + 20
    assert P.parse(P.STATS, old.pack()).drafted is None  # a board from before the draft counters
    assert P.parse(P.STATS, mid.pack()).draft_model_calls is None  # ... and from before draft models
    for body in (mid.pack()[:-1], mid.pack() + b"\x00", new.pack()[:-1]):
        with pytest.raises(P.ProtocolError, match="truncated"):
            P.parse(P.STATS, body)
    with pytest.raises(P.ProtocolError, match="trailing"):
        P.parse(P.STATS, new.pack() + b"\x00")
    lying = P.Stats(5, 64, P.STOP_LIMIT, 10.0, 20.0, 300.0, 50.0, 123456, 40, 2, 3, 7)
    with pytest.raises(P.ProtocolError, match="7 of 3 draft tokens"):
        P.parse(P.STATS, lying.pack())
    for calls, draft_calls, drafted in ((40, 41, 50), (40, 9, 5), (40, 0, 5)):
        with pytest.raises(P.ProtocolError, match="calls verified"):
            P.parse(P.STATS, P.Stats(5, 64, 1, 1.0, 1.0, 1.0, 1.0, 1, calls, draft_calls, drafted, 0).pack())


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
