import random
import zlib

import pytest

from toolchain.link import framing
from toolchain.link.framing import FrameError, FrameReader


@pytest.mark.parametrize("n", [0, 1, 2, 253, 254, 255, 256, 508, 509, 4000])
def test_cobs_round_trip_and_no_zero_bytes(n):
    rng = random.Random(n)
    for data in (bytes(rng.randrange(256) for _ in range(n)), b"\x00" * n, b"\x01" * n):
        enc = framing.cobs_encode(data)
        assert 0 not in enc
        assert framing.cobs_decode(enc) == data


def test_known_cobs_vectors():  # from the COBS paper / Wikipedia
    assert framing.cobs_encode(b"\x00") == b"\x01\x01"
    assert framing.cobs_encode(b"\x00\x00") == b"\x01\x01\x01"
    assert framing.cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert framing.cobs_encode(bytes(range(1, 255))) == b"\xff" + bytes(range(1, 255)) + b"\x01"


def test_frame_layout_is_type_seq_body_crc():
    wire = framing.encode(0x02, 7, b"abc")
    payload = framing.cobs_decode(wire[:-1])
    assert payload[:5] == b"\x02\x07\x00\x00\x00" and payload[5:8] == b"abc"
    assert int.from_bytes(payload[-4:], "little") == zlib.crc32(payload[:-4])
    assert wire.endswith(b"\x00")


def test_reader_splits_a_stream_and_resynchronises_after_garbage():
    frames = [framing.encode(1, i, bytes([i]) * i) for i in range(5)]
    stream = b"\x13\x37garbage" + b"\x00" + b"".join(frames[:2]) + b"\x00\x00" + b"".join(frames[2:])
    reader = FrameReader()
    out = []
    for i in range(0, len(stream), 3):  # arbitrary chunking
        out.extend(reader.feed(stream[i:i + 3]))
    errors = [x for x in out if isinstance(x, FrameError)]
    good = [x for x in out if not isinstance(x, FrameError)]
    assert len(errors) == 1 and [f.seq for f in good] == [0, 1, 2, 3, 4]
    assert good[3].body == b"\x03\x03\x03"


def test_flipped_bit_is_a_crc_error():
    wire = bytearray(framing.encode(2, 1, b"hello world"))
    wire[6] ^= 0x04
    (item,) = list(FrameReader().feed(bytes(wire)))
    assert isinstance(item, FrameError) and item.code in (FrameError.BAD_CRC, FrameError.BAD_FRAME)


def test_oversized_input_is_discarded_up_to_the_next_delimiter():
    reader = FrameReader()
    junk = b"\x01" * (framing.MAX_WIRE + 10)
    out = list(reader.feed(junk + b"\x00" + framing.encode(3, 9, b"ok")))
    assert isinstance(out[0], FrameError) and out[0].code == FrameError.TOO_LONG
    assert out[1].seq == 9 and out[1].body == b"ok" and len(out) == 2


def test_short_frame_is_rejected():
    (item,) = list(FrameReader().feed(framing.cobs_encode(b"\x01\x02\x03") + b"\x00"))
    assert isinstance(item, FrameError) and item.code == FrameError.BAD_FRAME


def test_encode_refuses_a_payload_over_the_limit():
    with pytest.raises(ValueError):
        framing.encode(1, 0, b"x" * framing.MAX_PAYLOAD)
