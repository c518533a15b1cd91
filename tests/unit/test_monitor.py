"""`edgelm monitor` reads as text: a board's frames arrive on a pseudo-terminal; the tokens print with
the text the program's tokenizer gives them (a character split across tokens prints once, whole), the
STATS line with the reply's whole text, and --log keeps every frame as a JSON line."""

import hashlib
import json
import os
import select
import subprocess
import sys
import threading
import tty

import pytest

from toolchain.link import framing
from toolchain.link import protocol as P

REPLY = "héllo wörld"  # the preset's byte tokenizer: id = byte + 3, so é and ö are two tokens each


@pytest.fixture
def board_link():
    """``answer(frames)``: a pseudo-terminal for the monitor (its path); the board at its far end sends
    ``frames`` once the monitor's REQUEST arrives (pyserial empties what came before it opened the port)."""
    opened, threads = [], []

    def answer(frames):
        master, slave = os.openpty()
        opened.extend([master, slave])
        tty.setraw(slave)  # a serial line: no line discipline between the board's bytes and the monitor

        def board():
            got = b""
            while b"\x00" not in got.lstrip(b"\x00"):  # one whole frame: the monitor's REQUEST
                ready, _, _ = select.select([master], [], [], 30)
                if not ready:
                    return
                got += os.read(master, 4096)
            for seq, (kind, body) in enumerate(frames):
                os.write(master, framing.encode(kind, seq, body))

        threads.append(threading.Thread(target=board, daemon=True))
        threads[-1].start()
        return os.ttyname(slave)

    yield answer
    for fd in opened:
        os.close(fd)


def stream(program_sha256):
    ids = [b + 3 for b in REPLY.encode()]
    hello = P.Hello(P.PROTOCOL_VERSION, "edgelm-runner 0.1", "host", program_sha256, 64, 259, 1, 3.0)
    tokens = [(P.TOKEN, P.Token(i, t, 1000 * i).pack()) for i, t in enumerate(ids)]
    stats = P.Stats(4, len(ids), P.STOP_LIMIT, 3.0, 1.5, 400.0, 120.0, 2048)
    return [(P.HELLO, hello.pack()), *tokens, (P.STATS, stats.pack())]


def an_export(workdir, fakes):
    """What `edgelm export` leaves under the workdir: a program and its manifest (the tiny preset)."""
    folder = workdir / "exports" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "model.pte").write_bytes(fakes.FAKE_PTE)
    (folder / "manifest.json").write_text(json.dumps(fakes.full_manifest()))
    return folder / "model.pte"


def monitor(*args):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "monitor", "--seconds", "2", "--prompt-ids",
                           "1,104", "--tokens", "13", *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_monitor_prints_each_token_s_text_and_logs_every_frame(tmp_path, board_link, fakes):
    an_export(tmp_path / "work", fakes)
    port = board_link(stream(hashlib.sha256(fakes.FAKE_PTE).hexdigest()))  # the HELLO names the program
    log = tmp_path / "frames.jsonl"
    proc = monitor("--port", port, "--workdir", str(tmp_path / "work"), "--log", str(log))
    print(proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    assert "text decoded with the bytes tokenizer of tiny" in proc.stderr
    tokens = [line for line in lines if " TOKEN " in line]
    assert len(tokens) == len(REPLY.encode())
    assert tokens[0].split()[1:] == ["TOKEN", "#0", "id", str(ord("h") + 3), '"h"']
    assert tokens[1].endswith('""') and tokens[2].endswith('"é"')  # é's first byte prints nothing, its second é
    assert "{" not in proc.stdout  # no Python dicts
    stats = next(i for i, line in enumerate(lines) if " STATS " in line)
    assert "4 prompt + 13 generated tokens (max tokens)" in lines[stats] and lines[stats + 1] == f"text: {REPLY}"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["type"] for e in logged] == ["HELLO", *["TOKEN"] * 13, "STATS"]
    assert "".join(e["text"] for e in logged if e["type"] == "TOKEN") == REPLY
    assert logged[-1]["stream_text"] == REPLY and all("at" in e for e in logged)


def test_monitor_decodes_with_the_program_given_and_says_when_it_cannot(tmp_path, board_link, fakes):
    pte = an_export(tmp_path / "elsewhere", fakes)
    port = board_link(stream("cd" * 32)[1:])  # no HELLO: the runner started before the monitor attached
    proc = monitor("--port", port, "--workdir", str(tmp_path / "work"), "--pte", str(pte))
    assert f"text: {REPLY}" in proc.stdout

    port = board_link(stream("cd" * 32))  # a program nobody exported here: ids only, and a note says so
    proc = monitor("--port", port, "--workdir", str(tmp_path / "work"))
    assert "token ids only" in proc.stderr and "give --pte" in proc.stderr
    assert "text:" not in proc.stdout and len([x for x in proc.stdout.splitlines() if " TOKEN " in x]) == 13


def test_an_unwritable_log_is_one_line_before_the_port_opens(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolchain.cli", "monitor", "--port", "/dev/nonexistent-port",
                           "--log", str(tmp_path / "no" / "such" / "folder.jsonl")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"error: --log {tmp_path / 'no' / 'such' / 'folder.jsonl'}: No such file or directory"]


def test_special_tokens_print_only_with_show_special(tmp_path, board_link, fakes):
    from toolchain.model.tokenizer import BYTE_SPECIALS

    pte = an_export(tmp_path / "work", fakes)
    frames = stream(hashlib.sha256(fakes.FAKE_PTE).hexdigest())
    frames.insert(-1, (P.TOKEN, P.Token(len(REPLY.encode()), 2, 99_000).pack()))  # then EOS (id 2)
    proc = monitor("--port", board_link(frames), "--pte", str(pte), "--workdir", str(tmp_path / "work"))
    assert f"text: {REPLY}\n" in proc.stdout + "\n"
    proc = monitor("--port", board_link(frames), "--pte", str(pte), "--workdir", str(tmp_path / "work"),
                   "--show-special")
    assert f"text: {REPLY}{BYTE_SPECIALS[2]}" in proc.stdout
