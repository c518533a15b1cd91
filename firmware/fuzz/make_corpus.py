"""Writes the seed corpus of firmware/fuzz/fuzz_link.c into firmware/fuzz/corpus/ (deterministic).

Each file is one fuzz input (the format is in fuzz_link.c): a header (byte 0: how many chunk-size
bytes follow, and bit 3 for records), those bytes, then the bytes a host sends, built with
toolchain/link/framing.py and toolchain/link/protocol.py, or records (type, length, body) that the
harness frames itself. The seeds are named seed-*.bin; inputs added by hand after a fix (crash-*)
are left alone.

    python firmware/fuzz/make_corpus.py [OUT_DIR]
"""

from __future__ import annotations

import random
import struct
import sys
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's toolchain/, not an installed one

from toolchain.link import framing  # noqa: E402
from toolchain.link import protocol as P  # noqa: E402

CORPUS = REPO / "firmware" / "fuzz" / "corpus"
MAX_REQUEST_IDS = (framing.MAX_PAYLOAD - framing.MIN_PAYLOAD - 36) // 4  # protocol.h PROTO_MAX_REQUEST_IDS

WHOLE: tuple[int, ...] = ()  # one read of up to 4096 bytes at a time (the runner's rx buffer)
BYTEWISE = (0,)  # 1-byte reads
SPLIT = (2, 130, 9)  # 3, 96, 10 bytes, in turn


RECORDS = 0x08  # header byte 0: the stream is records to frame


def fuzz_input(stream: bytes, reads: tuple[int, ...] = WHOLE) -> bytes:
    assert len(reads) <= 7
    return bytes([len(reads), *reads]) + stream


def records_input(*records: tuple[int, bytes], reads: tuple[int, ...] = WHOLE) -> bytes:
    """Records type:u8 len:u16le body that fuzz_link.c frames (seq 0, 1, ...) before reading them."""
    assert len(reads) <= 7
    return bytes([RECORDS | len(reads), *reads]) + b"".join(struct.pack("<BH", t, len(b)) + b for t, b in records)


def frame(msg_type: int, seq: int, body: bytes) -> bytes:
    return framing.encode(msg_type, seq, body)


def frame_of_payload(payload: bytes) -> bytes:
    """A frame around any payload (wrong CRC, too short, too long): COBS + 0x00, nothing checked."""
    return framing.cobs_encode(payload) + b"\x00"


def request(seq: int = 0, **kw) -> bytes:
    kw.setdefault("prompt", (1, 2, 3))
    kw.setdefault("max_new_tokens", 4)
    return frame(P.REQUEST, seq, P.Request(**kw).pack())


def raw_request_body(max_new=4, flags=0, temperature=0.0, top_k=0, top_p=1.0, seed=0, prompt=(1,), stop=(),
                     n_prompt=None, n_stop=None, tail=b"") -> bytes:
    """A REQUEST body with any field, counts included, set to anything (for bodies that must not parse)."""
    n_prompt = len(prompt) if n_prompt is None else n_prompt
    n_stop = len(stop) if n_stop is None else n_stop
    return (struct.pack("<IIfIfQI", max_new, flags, temperature, top_k, top_p, seed, n_prompt)
            + struct.pack(f"<{len(prompt)}I", *prompt) + struct.pack("<I", n_stop)
            + struct.pack(f"<{len(stop)}I", *stop) + tail)


QUIT = frame(P.QUIT, 99, b"")


def short_form_frame() -> bytes:
    """A 254-byte payload without a zero, encoded without the final 0x01 code: the one shorter COBS form
    the decoder accepts (fuzz_link.c checks that re-encoding gives back the canonical form)."""
    rng = random.Random(254)  # noqa: S311 (deterministic test data)
    while True:
        head = bytes([P.REQUEST]) + bytes(rng.randrange(1, 256) for _ in range(4))
        body = bytes(rng.randrange(1, 256) for _ in range(254 - 9))
        payload = head + body + struct.pack("<I", zlib.crc32(head + body))
        if 0 not in payload:
            wire = framing.cobs_encode(payload)
            assert wire.endswith(b"\x01")
            return wire[:-1] + b"\x00"


def seeds() -> dict[str, bytes]:
    rng = random.Random(6)  # noqa: S311 (deterministic test data)
    typical = dict(prompt=tuple(range(1, 9)), max_new_tokens=16, temperature=0.8, top_k=40, top_p=0.95, seed=1234,
                   stop=(0, 2))
    two_requests = request(0, **typical) + request(1, prompt=(5,), max_new_tokens=1) + QUIT
    bad_crc = bytearray(P.Request(prompt=(1, 2), max_new_tokens=2).pack())
    head = struct.pack("<BI", P.REQUEST, 7)
    bad_crc_payload = head + bytes(bad_crc) + struct.pack("<I", zlib.crc32(head + bytes(bad_crc)) ^ 0x00010000)
    garbage = bytes(rng.randrange(1, 256) for _ in range(100))
    over_payload = bytes([P.REQUEST]) + b"\x11" * framing.MAX_PAYLOAD  # one byte over, no zero
    n_stop = 84
    max_ids = dict(prompt=tuple(rng.randrange(2**32) for _ in range(MAX_REQUEST_IDS - n_stop)), max_new_tokens=1,
                   stop=tuple(rng.randrange(2**32) for _ in range(n_stop)))
    out = {
        # requests that parse
        "request-min": fuzz_input(request(0, prompt=(1,), max_new_tokens=1)),
        "request-typical": fuzz_input(request(0, **typical)),
        "request-flags": fuzz_input(request(3, prompt=(7, 7), max_new_tokens=3, ignore_eos=True,
                                            report_logits=True)),
        "request-top-p-edges": fuzz_input(request(0, top_p=0.0) + request(1, top_p=1.0, temperature=0.0)),
        "request-ids-with-zeros": fuzz_input(request(0, prompt=(0, 0x100, 0x10000, 0x1000000), stop=(0,))),
        "request-long-run": fuzz_input(request(0, prompt=(0x01010101,) * 70, max_new_tokens=0x01010101,
                                               temperature=1.0, top_k=0x01010101, seed=0x0101010101010101)),
        "request-seq-too-long": fuzz_input(request(0, prompt=tuple(range(100)), max_new_tokens=100)),
        "request-token-over-vocab": fuzz_input(request(0, prompt=(1, 300, 2))),
        "request-max-ids": fuzz_input(request(0, **max_ids)),
        # several frames, several read patterns
        "requests-then-quit": fuzz_input(two_requests),
        "requests-then-quit-bytewise": fuzz_input(two_requests, BYTEWISE),
        "requests-then-quit-split": fuzz_input(two_requests, SPLIT),
        "requests-large-reads": fuzz_input(two_requests, (140, 250)),
        "requests-seq-jumps": fuzz_input(request(5) + request(4) + request(0xFFFFFFFF) + request(0), (60,)),
        "quit": fuzz_input(QUIT),
        "quit-with-body": fuzz_input(frame(P.QUIT, 0, b"x") + QUIT),
        "quit-then-request": fuzz_input(QUIT + request(1)),
        "unknown-types": fuzz_input(frame(P.HELLO, 0, b"") + frame(0x00, 1, b"\x00") + frame(0xFF, 2, b"\xff" * 3)
                                    + frame(P.ERROR, 3, P.Error(4, "x").pack())),
        # frames that do not decode
        "bad-crc": fuzz_input(frame_of_payload(bad_crc_payload) + request(8)),
        "bad-cobs": fuzz_input(b"\x05\x01\x02\x00" + b"\x02\x00\x00" + request(1)),
        "payload-too-short": fuzz_input(frame_of_payload(b"\x81\x00\x00\x00\x00\x00\x00\x00") + request(1)),
        "truncated-frame": fuzz_input(request(0)[:-6]),
        "empty-frames": fuzz_input(b"\x00\x00\x00" + request(0) + b"\x00\x00" + QUIT),
        "garbage-then-request": fuzz_input(garbage + b"\x00" + request(1), SPLIT),
        "short-form-cobs": fuzz_input(short_form_frame() + request(1)),
        "oversized": fuzz_input(b"\x07" * (framing.MAX_WIRE + 5) + b"\x00" + request(1) + QUIT, (255, 3)),
        "payload-over-limit": fuzz_input(frame_of_payload(over_payload) + request(1)),
        # request bodies that do not parse (good frames)
        "request-fixed-short": fuzz_input(frame(P.REQUEST, 0, raw_request_body()[:20])),
        "request-empty-body": fuzz_input(frame(P.REQUEST, 0, b"")),
        "request-n-prompt-zero": fuzz_input(frame(P.REQUEST, 0, raw_request_body(prompt=()))),
        "request-n-prompt-huge": fuzz_input(frame(P.REQUEST, 0, raw_request_body(n_prompt=0xFFFFFFFF))),
        "request-n-stop-huge": fuzz_input(frame(P.REQUEST, 0, raw_request_body(n_stop=0x40000000))),
        "request-no-n-stop": fuzz_input(frame(P.REQUEST, 0, raw_request_body(prompt=(1, 2))[:-4])),
        "request-trailing-bytes": fuzz_input(frame(P.REQUEST, 0, raw_request_body(stop=(2,), tail=b"\x00"))),
        "request-max-new-zero": fuzz_input(frame(P.REQUEST, 0, raw_request_body(max_new=0))),
        "request-temperature-nan": fuzz_input(frame(P.REQUEST, 0, raw_request_body(temperature=float("nan")))),
        "request-temperature-inf": fuzz_input(frame(P.REQUEST, 0, raw_request_body(temperature=float("inf")))),
        "request-temperature-negative": fuzz_input(frame(P.REQUEST, 0, raw_request_body(temperature=-0.5))),
        "request-top-p-over-one": fuzz_input(frame(P.REQUEST, 0, raw_request_body(top_p=1.5))),
        "request-top-p-nan": fuzz_input(frame(P.REQUEST, 0, raw_request_body(top_p=float("nan")))),
        "request-top-p-negative": fuzz_input(frame(P.REQUEST, 0, raw_request_body(top_p=-0.25))),
    }
    # records: bodies the harness frames, so that their mutations keep a good CRC
    body = P.Request(**typical).pack()
    out.update({
        "rec-request-typical": records_input((P.REQUEST, body)),
        "rec-request-min": records_input((P.REQUEST, P.Request(prompt=(1,), max_new_tokens=1).pack())),
        "rec-request-flags": records_input((P.REQUEST, P.Request(prompt=(3, 4), max_new_tokens=2, ignore_eos=True,
                                                                  report_logits=True, stop=(4,)).pack())),
        "rec-requests-then-quit": records_input((P.REQUEST, body), (P.REQUEST, P.Request((9,), 1).pack()),
                                                (P.QUIT, b""), reads=SPLIT),
        "rec-request-temperature-negative": records_input((P.REQUEST, raw_request_body(temperature=-0.5))),
        "rec-request-top-p-over-one": records_input((P.REQUEST, raw_request_body(top_p=1.5))),
        "rec-request-n-prompt-zero": records_input((P.REQUEST, raw_request_body(prompt=()))),
        "rec-request-trailing-bytes": records_input((P.REQUEST, raw_request_body(stop=(2,), tail=b"\x00"))),
        "rec-request-cut": records_input((P.REQUEST, body[:-3])),
        "rec-quit-with-body": records_input((P.QUIT, b"\x00"), (P.QUIT, b"")),
        "rec-unknown-types": records_input((P.HELLO, b""), (P.TOKEN, P.Token(0, 1, 2).pack()), (0x7F, b"\xff")),
        "rec-length-past-end": bytes([RECORDS, P.REQUEST]) + struct.pack("<H", 0xFFFF) + body,  # cut to the rest
    })
    return {f"seed-{name}.bin": data for name, data in out.items()}


def write(out_dir: Path = CORPUS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in seeds().items():
        path = out_dir / name
        path.write_bytes(data)
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS
    written = write(target)
    print(f"wrote {len(written)} seeds ({sum(p.stat().st_size for p in written)} bytes) to {target}")
