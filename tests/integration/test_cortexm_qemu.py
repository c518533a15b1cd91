"""The Cortex-M self-test firmware on an emulated Corstone-300 CPU (qemu-system-arm -M mps3-an547),
spoken to through the host's own link code (SerialTransport, framing, protocol, BoardSession).

It proves that frame.c, protocol.c and sampler.c built for the Cortex-M55 interoperate with
toolchain/link: HELLO (with the SHA-256 of the embedded program, hashed on the board), REQUESTs
answered by TOKEN... STATS, a garbled frame answered with ERROR, and QUIT starting a new session.
The "model" is selftest.c's toy function of the last token (not a language model); its twin is
below. QEMU has no Ethos-U: the NPU path is not exercised here. Missing qemu-system-arm or
arm-none-eabi-gcc fails the test (CI installs them)."""

from __future__ import annotations

import hashlib
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from toolchain import boards
from toolchain.bundle import cortexm
from toolchain.errors import DeviceError
from toolchain.link import framing, protocol
from toolchain.link.session import BoardSession, Timeouts
from toolchain.link.transport import Deadline, SerialTransport

QEMU = "qemu-system-arm"
CONNECT_S = 10.0  # QEMU listening on the UART's socket
TOY_VOCAB, TOY_MAX_SEQ_LEN, TOY_NEXT_LOGIT = 64, 96, 8.0


def toy_next(token: int, pos: int) -> int:
    """selftest.c's toy_next: the token its toy model favours after `token` at position `pos`."""
    return (token * 5 + pos + 1) % TOY_VOCAB


def toy_greedy(prompt: tuple[int, ...], n: int, stop: tuple[int, ...] = ()) -> list[int]:
    out, pos, tok = [], len(prompt) - 1, prompt[-1]
    while len(out) < n:
        tok = toy_next(tok, pos)
        out.append(tok)
        pos += 1
        if tok in stop:
            break
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int, qemu: subprocess.Popen) -> SerialTransport:
    """The UART's socket, once QEMU listens (it starts the CPU only when we are connected, so the
    HELLO is not lost)."""
    deadline = Deadline(CONNECT_S)
    while True:
        try:
            return SerialTransport(f"socket://127.0.0.1:{port}", 115200)
        except DeviceError:
            if qemu.poll() is not None:
                pytest.fail(f"{QEMU} exited with {qemu.returncode}: {qemu.stdout.read().decode()[-2000:]}")
            if deadline.expired:
                pytest.fail(f"{QEMU} did not listen on port {port} within {CONNECT_S:.0f} s")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    pte = tmp_path_factory.mktemp("cm") / "model.pte"
    pte.write_bytes(b"\x00\x00\x00\x00ET12" + hashlib.sha256(b"edgelm").digest() * 300)
    return pte


@pytest.fixture(scope="module")
def selftest_elf(program, tmp_path_factory) -> Path:
    board = boards.get("corstone-300")
    size = program.stat().st_size
    body = {"delegation": {"backend": "ethos-u"},
            "arm": {"target": board.npu, "board": board.name, "tokens_per_call": 1,
                    "budget": {"arena_bytes": 256 * 1024, "npu_scratch_bytes": 64 * 1024, "program_bytes": size,
                               "state_bytes": 0, "sram_bytes_needed": 320 * 1024}},
            "program": {"size_bytes": size, "max_seq_len": 128}, "model": {"config": {"vocab_size": 256}},
            "tokens": {"eos_token_ids": [2], "bos_token_id": 1}}
    result = cortexm.build(board, body, program, tmp_path_factory.mktemp("cm") / "project")
    assert not result.linked  # no ExecuTorch for Cortex-M here: only the self-test
    return result.selftest_elf


@pytest.fixture
def board_link(selftest_elf):
    machine = boards.get("corstone-300").qemu_machine
    assert machine == "mps3-an547"
    port = _free_port()
    qemu = subprocess.Popen([QEMU, "-M", machine, "-display", "none", "-monitor", "none",
                             "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on", "-kernel", str(selftest_elf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    transport = _connect(port, qemu)
    try:
        yield transport
    finally:
        transport.close()
        qemu.kill()
        qemu.wait()


def _frames(session: BoardSession, seconds: float, count: int) -> list:
    got = []
    for item, msg in session.frames(Deadline(seconds)):
        got.append((item, msg))
        if len(got) == count:
            break
    return got


def test_selftest_firmware_serves_the_protocol_on_qemu(board_link, program):
    session = BoardSession(board_link, Timeouts(hello_s=20, first_token_s=10, token_s=5, quiet_s=0.5))

    # HELLO: the self-tests passed, and the board hashed the program memory.ld placed in flash
    hello = session.wait_hello()
    assert hello.proto == protocol.PROTOCOL_VERSION and hello.board == "corstone-300"
    assert "checks passed" in hello.firmware and "edgelm-cm-selftest" in hello.firmware
    assert hello.model_sha256 == hashlib.sha256(program.read_bytes()).hexdigest()
    assert (hello.vocab_size, hello.max_seq_len) == (TOY_VOCAB, TOY_MAX_SEQ_LEN)

    # A greedy REQUEST: every token predicted by the toy model's twin
    got = session.collect(protocol.Request(prompt=(1, 2, 3), max_new_tokens=6))
    assert got.tokens == toy_greedy((1, 2, 3), 6)
    assert got.stats is not None and got.stats.generated == 6 and got.stats.stop == protocol.STOP_LIMIT
    assert got.stats.prompt_tokens == 3

    # A stop token ends it; reported logits are the toy model's; top-k 1 at a temperature is greedy
    expected = toy_greedy((9, 40), 10)
    got = session.collect(protocol.Request(prompt=(9, 40), max_new_tokens=10, stop=(expected[2],),
                                           report_logits=True, temperature=0.8, top_k=1, seed=7))
    assert got.tokens == expected[:3] and got.stats.stop == protocol.STOP_EOS
    logit, top = got.logits[0]
    assert logit == TOY_NEXT_LOGIT and top[0] == (expected[0], TOY_NEXT_LOGIT) and len(top) == 4

    # A garbled frame (bad CRC), a frame that is not COBS-shaped, an unknown type: three ERRORs
    frame = bytearray(framing.cobs_decode(framing.encode(protocol.REQUEST, 99, b"\x01\x02\x03")[:-1]))
    frame[-1] ^= 0xFF
    board_link.write(framing.cobs_encode(bytes(frame)) + b"\x00")
    board_link.write(b"\x03\x41\x42\x00")
    body = b"hi"
    payload = struct.pack("<BI", 0x77, 100) + body
    board_link.write(framing.cobs_encode(payload + struct.pack("<I", zlib.crc32(payload))) + b"\x00")
    errors = [msg for _item, msg in _frames(session, 10, 3)]
    assert [type(m) for m in errors] == [protocol.Error] * 3, errors
    assert [m.code for m in errors] == [protocol.ERR_BAD_CRC, protocol.ERR_BAD_FRAME, protocol.ERR_BAD_REQUEST]
    assert "unknown message type 0x77" in errors[2].message

    # ... and the board still serves
    session.resync()
    got = session.collect(protocol.Request(prompt=(5,), max_new_tokens=3))
    assert got.tokens == toy_greedy((5,), 3)

    # QUIT: nowhere to exit to, so the board starts a new session with a new HELLO (seq 0)
    session.quit()
    again = BoardSession(board_link, Timeouts(hello_s=10))
    assert again.wait_hello().model_sha256 == hello.model_sha256
    assert again.collect(protocol.Request(prompt=(1, 2, 3), max_new_tokens=2)).tokens == toy_greedy((1, 2, 3), 2)


def test_tools_are_installed():
    """CI installs them: their absence is a failure, not a skip."""
    import shutil

    assert shutil.which(QEMU), f"{QEMU} not found (Debian: qemu-system-arm)"
    assert shutil.which("arm-none-eabi-gcc"), "arm-none-eabi-gcc not found (Debian: gcc-arm-none-eabi)"
