"""A seeded, reproducible man-in-the-middle for a serial link: what a bad cable, a flaky USB adapter
or a lying board would do to the stream, for fault-injection tests (a fake, and so product code).

Two layers:

- :class:`Mangler` is pure: frames in, wire bytes out. It re-encodes what the board sends (its own
  sequence numbers, so that it can tell protocol-valid *lies*: an early STATS, extra tokens, a
  swapped token, a wrong stop reason, NaN logits, logits left out) and then damages the bytes (flip
  a bit, drop, insert, duplicate, truncate). Each :class:`Fault` is armed once and hits one frame.
- :class:`PtyRelay` is the I/O: it opens the board's end of the link, makes a pseudo-terminal for
  the host at ``host_path`` and relays both ways through the mangler; it also *delays* frames and
  *cuts* the link (the host's port vanishes and comes back, as a re-enumerating adapter does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import selectors
import struct
import threading
import time
import tty
from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.link import framing, protocol

log = logging.getLogger(__name__)

TO_HOST, TO_BOARD = "to_host", "to_board"
BYTE_FAULTS = ("flip", "drop", "insert", "duplicate", "truncate", "delay", "cut")
LIES = ("early_stats", "extra_tokens", "swap_token", "wrong_stop", "nan_logits", "drop_logits")
KINDS = BYTE_FAULTS + LIES
TOKEN_LIES = ("swap_token", "nan_logits", "drop_logits")  # told in a TOKEN frame, or not at all
RELAY_CHUNK = 4096
RELAY_POLL_S = 0.05


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` hits frame ``at`` of ``direction`` counted from when it is armed (for the lies:
    the TOKEN with index ``at``, or the STATS when there are fewer tokens). ``size`` scales it (bytes
    dropped or inserted, tokens added, milliseconds of delay or of a cut)."""

    kind: str
    at: int = 0
    direction: str = TO_HOST
    size: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(KINDS)}")
        if self.direction not in (TO_HOST, TO_BOARD):
            raise ValueError(f"direction {self.direction!r}")
        if self.kind in LIES and self.direction != TO_HOST:
            raise ValueError(f"{self.kind} is a lie the board tells: direction {TO_HOST} only")

    @property
    def is_lie(self) -> bool:
        return self.kind in LIES


@dataclass
class Action:
    """What the relay does with one frame: send ``wire`` after ``delay_s``; ``cut_s`` > 0 cuts the link."""

    wire: bytes
    delay_s: float = 0.0
    cut_s: float = 0.0


class Mangler:
    """Frames of one request stream in, what reaches the host out. Pure apart from its seeded RNG."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)  # noqa: S311 - reproducible faults, not secrets
        self._armed: dict[str, Fault | None] = {TO_HOST: None, TO_BOARD: None}
        self._count = {TO_HOST: 0, TO_BOARD: 0}
        self._tx_seq = 0  # what the host sees: our own count, so lies can add and remove frames
        self._swallow = False  # after an early STATS: drop the rest of the real stream
        self.vocab_size = 2
        self.fired: list[Fault] = []  # told or done
        self.missed: list[Fault] = []  # a lie about a token the stream never reached

    def arm(self, fault: Fault) -> None:
        self._armed[fault.direction] = fault
        self._count[fault.direction] = 0
        self._swallow = False

    @property
    def pending(self) -> bool:
        return any(f is not None for f in self._armed.values())

    def _take(self, direction: str, frame: framing.Frame | None) -> Fault | None:
        """The armed fault if it hits this frame (each fault hits once)."""
        fault = self._armed[direction]
        if fault is None:
            return None
        if fault.is_lie:
            assert frame is not None
            due = (frame.type == protocol.TOKEN and struct.unpack_from("<I", frame.body)[0] >= fault.at) \
                or frame.type == protocol.STATS
            if fault.kind in ("wrong_stop", "extra_tokens"):
                due = frame.type == protocol.STATS
            if not due:
                return None
            if frame.type == protocol.STATS and fault.kind in TOKEN_LIES:  # the stream ended first: not told
                self._armed[direction] = None
                self.missed.append(fault)
                return None
        else:
            n = self._count[direction]
            self._count[direction] += 1
            if n < fault.at:
                return None
        self._armed[direction] = None
        self.fired.append(fault)
        return fault

    # Board -> host -------------------------------------------------------------------------------

    def from_board(self, frame: framing.Frame) -> list[Action]:
        if frame.type == protocol.HELLO:
            with contextlib.suppress(protocol.ProtocolError):
                self.vocab_size = protocol.Hello.parse(frame.body).vocab_size
            self._tx_seq = frame.seq  # a (re)started runner counts from 0 again
        if self._swallow:
            if frame.type == protocol.STATS:
                self._swallow = False
            return []
        fault = self._take(TO_HOST, frame)
        frames = [(frame.type, frame.body)]
        if fault is not None and fault.is_lie:
            frames = self._lie(fault, frame)
        actions = []
        for msg_type, body in frames:
            wire = framing.encode(msg_type, self._tx_seq, body)
            self._tx_seq = (self._tx_seq + 1) & 0xFFFFFFFF
            actions.append(Action(wire))
        if fault is not None and not fault.is_lie:
            actions = self._damage(fault, actions)
        return actions

    def _lie(self, fault: Fault, frame: framing.Frame) -> list[tuple[int, bytes]]:
        kind = fault.kind
        if frame.type == protocol.STATS:
            stats = protocol.Stats.parse(frame.body)
            if kind == "wrong_stop":
                stats = replace(stats, stop=protocol.STOP_LIMIT if stats.stop == protocol.STOP_EOS
                                else protocol.STOP_EOS)
                return [(protocol.STATS, stats.pack())]
            if kind == "extra_tokens":
                extra = []
                for k in range(max(1, fault.size)):
                    tok = protocol.Token(index=stats.generated + k, token=self.rng.randrange(self.vocab_size),
                                         t_us=0, logit=1.0, top=((0, 1.0),))
                    extra.append((protocol.TOKEN, tok.pack()))
                return [*extra, (protocol.STATS, replace(stats, generated=stats.generated + len(extra)).pack())]
            if kind == "early_stats":  # due at a token the stream never reached: a wrong stop reason instead
                flipped = protocol.STOP_LIMIT if stats.stop == protocol.STOP_EOS else protocol.STOP_EOS
                return [(protocol.STATS, replace(stats, stop=flipped).pack())]
            return [(frame.type, frame.body)]
        token = protocol.Token.parse(frame.body)
        if kind == "early_stats":  # STATS in place of token ``index`` (index 0: a stream with no token)
            self._swallow = True
            stats = protocol.Stats(prompt_tokens=0, generated=token.index, stop=protocol.STOP_EOS, load_ms=0.0,
                                   ttft_ms=0.0, prefill_tok_s=0.0, decode_tok_s=0.0, peak_rss_kb=0)
            return [(protocol.STATS, stats.pack())]
        if kind == "swap_token":
            other = (token.token + 1 + self.rng.randrange(max(1, self.vocab_size - 1))) % self.vocab_size
            return [(protocol.TOKEN, replace(token, token=other).pack())]
        if kind == "nan_logits":
            top = tuple((i, float("inf") if j == 0 else x) for j, (i, x) in enumerate(token.top))
            return [(protocol.TOKEN, replace(token, logit=float("nan"), top=top).pack())]
        if kind == "drop_logits":
            return [(protocol.TOKEN, replace(token, logit=None, top=()).pack())]
        return [(frame.type, frame.body)]

    # Host -> board -------------------------------------------------------------------------------

    def from_host(self, frame_wire: bytes) -> list[Action]:
        """``frame_wire``: one frame as the host sent it, delimiter included (passed on unparsed)."""
        fault = self._take(TO_BOARD, None)
        actions = [Action(frame_wire)]
        if fault is not None:
            actions = self._damage(fault, actions)
        return actions

    # Bytes ---------------------------------------------------------------------------------------

    def _damage(self, fault: Fault, actions: list[Action]) -> list[Action]:
        first = actions[0]
        wire = bytearray(first.wire)
        body = len(wire) - 1  # the damage falls inside the frame; the delimiter keeps the next one whole
        rng, kind = self.rng, fault.kind
        if kind == "flip":
            bit = rng.randrange(8 * body)
            wire[bit // 8] ^= 1 << (bit % 8)  # a flip that makes a 0x00 splits the frame: damage all the same
        elif kind == "drop":
            n = min(max(1, fault.size), body)
            at = rng.randrange(body - n + 1)
            del wire[at:at + n]
        elif kind == "insert":
            at = rng.randrange(body + 1)
            wire[at:at] = bytes(rng.randrange(1, 256) for _ in range(max(1, fault.size)))
        elif kind == "duplicate":
            return [first, Action(bytes(first.wire)), *actions[1:]]
        elif kind == "truncate":
            keep = rng.randrange(body)
            wire = wire[:keep] + b"\x00"
        elif kind == "delay":
            return [Action(bytes(wire), delay_s=fault.size / 1000.0), *actions[1:]]
        elif kind == "cut":
            return [Action(bytes(wire), cut_s=fault.size / 1000.0), *actions[1:]]
        return [Action(bytes(wire)), *actions[1:]]


class PtyRelay:
    """Relays between the board's port (``board_port``, opened here) and a pseudo-terminal made for the
    host at ``host_path`` (a symlink, like the links ``socat`` makes), through a :class:`Mangler`."""

    def __init__(self, board_port: str, host_path: Path, seed: int = 0):
        self.board_port = board_port
        self.host_path = Path(host_path)
        self.mangler = Mangler(seed)
        self.cuts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._board_fd = os.open(board_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._board_fd)
        self._master = self._slave = -1
        self._generation = 0  # +1 per host pty made: fd numbers are reused, so they cannot tell
        self._open_host()
        self._thread = threading.Thread(target=self._loop, name="fault-relay", daemon=True)
        self._thread.start()

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self.mangler.arm(fault)

    def _open_host(self) -> None:
        self._master, self._slave = os.openpty()
        self._generation += 1
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        tmp = self.host_path.with_name(self.host_path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(self._slave))
        tmp.replace(self.host_path)

    def _close_host(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.host_path.unlink()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 5.0
        while view and time.monotonic() < deadline:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                return  # the other side is gone: the bytes are lost, as on a cut cable

    def _send(self, fd_of: str, actions: list[Action]) -> None:
        for act in actions:
            if act.delay_s:
                time.sleep(act.delay_s)
            if act.cut_s:
                log.info("cutting the link for %.0f ms", act.cut_s * 1e3)
                self._close_host()
                self.cuts += 1
                time.sleep(act.cut_s)
                self._open_host()
                continue  # what was in flight is lost
            fd = self._master if fd_of == TO_HOST else self._board_fd
            if fd >= 0:
                self._write(fd, act.wire)

    def _loop(self) -> None:
        from_board, from_host = bytearray(), bytearray()
        sel = selectors.DefaultSelector()
        registered, generation = -1, -1
        sel.register(self._board_fd, selectors.EVENT_READ, TO_HOST)
        while not self._stop.is_set():
            if generation != self._generation:
                if registered >= 0:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        sel.unregister(registered)
                sel.register(self._master, selectors.EVENT_READ, TO_BOARD)
                registered, generation = self._master, self._generation
                from_host.clear()
            for key, _ in sel.select(RELAY_POLL_S):
                try:
                    data = os.read(key.fd, RELAY_CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    if key.data == TO_HOST:
                        time.sleep(RELAY_POLL_S)  # the board's end closed (runner restarting)
                    continue
                buf = from_board if key.data == TO_HOST else from_host
                buf += data
                while (end := buf.find(0)) >= 0:
                    wire = bytes(buf[:end + 1])
                    del buf[:end + 1]
                    with self._lock:
                        actions = self._route(key.data, wire)
                    self._send(key.data, actions)
        sel.close()

    def _route(self, direction: str, wire: bytes) -> list[Action]:
        if direction == TO_BOARD:
            return self.mangler.from_host(wire)
        if len(wire) <= 1:
            return [Action(wire)]
        try:
            frame = framing.decode_payload(wire[:-1])
        except framing.FrameError:
            return [Action(wire)]  # not ours to judge: pass it on as it came
        return self.mangler.from_board(frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close_host()
        with contextlib.suppress(OSError):
            os.close(self._board_fd)


class RelayedLink:
    """``open_transport`` for :func:`toolchain.deploy.bringup.bring_up`: the host's end of the link
    goes through one :class:`PtyRelay` (made on first use, reused when the session reopens the port)."""

    def __init__(self, folder: Path, seed: int = 0):
        self.folder, self.seed = Path(folder), seed
        self.relay: PtyRelay | None = None

    def __call__(self, port: str):
        from toolchain.link.transport import SerialTransport

        if self.relay is None or self.relay.board_port != port:
            self.close()
            self.relay = PtyRelay(port, self.folder / "host-port", seed=self.seed)
        return SerialTransport(str(self.relay.host_path))

    def arm(self, fault: Fault) -> None:
        if self.relay is None:
            raise RuntimeError("the link is not open yet")
        self.relay.arm(fault)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
