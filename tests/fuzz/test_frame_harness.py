"""The C framing and REQUEST parser (firmware/) under ASan/UBSan, and against the Python twin."""

import random
import subprocess
from pathlib import Path

import pytest

from toolchain.link import framing
from toolchain.link import protocol as P

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "frame_harness"
    subprocess.run(["bash", str(HERE / "build_harness.sh"), str(out)], check=True, timeout=300)
    return out


def run(harness, *args):
    proc = subprocess.run([str(harness), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_fuzzing_finds_no_crash_or_undefined_behaviour(harness):
    summary = run(harness, "fuzz", 1, 20000)
    assert summary.endswith("ok"), summary
    assert "frames=" in summary


def test_c_and_python_encode_the_same_bytes(harness):
    rng = random.Random(3)
    for n in [0, 1, 5, 253, 254, 255, 600]:
        body = bytes(rng.choice([0, 1, 255, rng.randrange(256)]) for _ in range(n))
        msg_type, seq = rng.randrange(256), rng.randrange(2**32)
        assert run(harness, "encode", msg_type, seq, body.hex() or "-") == framing.encode(msg_type, seq, body).hex()


def _python_events(wire: bytes) -> list[str]:
    names = {1: "BAD_FRAME", 2: "BAD_CRC", 3: "TOO_LONG"}
    out = []
    for item in framing.FrameReader().feed(wire):
        if isinstance(item, framing.FrameError):
            out.append(f"error {names[item.code]}")
        else:
            out.append(f"frame {item.type} {item.seq} {item.body.hex() or '-'}")
    return out


def test_c_and_python_read_the_same_frames_from_a_damaged_stream(harness):
    rng = random.Random(4)
    for trial in range(40):
        parts = []
        for i in range(rng.randrange(1, 5)):
            wire = bytearray(framing.encode(rng.choice([1, 2, 0x81]), i, bytes(rng.randrange(256)
                                                                                for _ in range(rng.randrange(40)))))
            if rng.random() < 0.3:
                wire[rng.randrange(len(wire) - 1)] ^= 1 << rng.randrange(8)
            parts.append(bytes(wire))
        if trial % 10 == 0:
            parts.insert(1, b"\x07" * (framing.MAX_WIRE + 5) + b"\x00")
        stream = b"".join(parts)
        assert run(harness, "decode", stream.hex()).splitlines() == _python_events(stream)


def test_c_parses_the_requests_python_builds(harness):
    req = P.Request(prompt=(1, 2, 300), max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.75, seed=9,
                    stop=(2, 7), ignore_eos=True)
    line = run(harness, "request", req.pack().hex())
    assert line == "ok max_new_tokens=7 flags=1 temperature=0.5 top_k=3 top_p=0.75 seed=9 prompt=1,2,300 stop=2,7"
    assert run(harness, "request", req.pack()[:-1].hex()) == "error"
