"""A conversation with a board over frames: HELLO, then requests answered by TOKEN... STATS.

Every wait has a deadline; the first token of a request gets the prefill's deadline, each later
token a decode step's. A CRC failure, a sequence gap, an ERROR frame or a silent board ends the
session with a DeviceError that names the last good sequence number and shows the raw tail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from toolchain.errors import CapacityError, DeviceError
from toolchain.link import framing, protocol
from toolchain.link.transport import Deadline, Transport

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 120.0  # loading a 350M program under emulation takes a while


@dataclass
class Timeouts:
    hello_s: float = HELLO_TIMEOUT_S
    first_token_s: float = 60.0  # the prefill
    token_s: float = 10.0  # one decode step


class LinkError(DeviceError):
    pass


class BoardSession:
    def __init__(self, transport: Transport, timeouts: Timeouts | None = None,
                 alive: Callable[[], str | None] | None = None):
        """``alive`` returns None while the board runs, else why it stopped (checked while waiting)."""
        self.transport = transport
        self.timeouts = timeouts or Timeouts()
        self._alive = alive or (lambda: None)
        self._reader = framing.FrameReader()
        self._pending: list[framing.Frame | framing.FrameError] = []
        self._rx_seq: int | None = None  # next expected sequence number from the board
        self._tx_seq = 0
        self.hello: protocol.Hello | None = None

    # Frames ------------------------------------------------------------------------------------

    def _fail(self, what: str) -> LinkError:
        last = "none yet" if self._rx_seq is None else str(self._rx_seq - 1)
        tail = self._reader.tail.hex(" ")[-96:] or "(nothing)"
        return LinkError(f"{what} (last good frame seq {last}; raw tail {tail})")

    def _next_frame(self, deadline: Deadline, waiting_for: str) -> framing.Frame:
        while True:
            if self._pending:
                item = self._pending.pop(0)
                if isinstance(item, framing.FrameError):
                    raise self._fail(f"garbled frame from the board: {item}")
                if self._rx_seq is not None and item.seq != self._rx_seq:
                    raise self._fail(f"sequence gap: expected frame {self._rx_seq}, got {item.seq}")
                self._rx_seq = (item.seq + 1) & 0xFFFFFFFF
                return item
            if deadline.expired:
                raise self._fail(f"timed out after {deadline.seconds:.1f} s waiting for {waiting_for}")
            data = self.transport.read(deadline)
            if data:
                self._pending.extend(self._reader.feed(data))
            else:
                why = self._alive()
                if why is not None:
                    raise self._fail(f"the board stopped while we waited for {waiting_for}: {why}")

    def _expect(self, deadline: Deadline, waiting_for: str) -> object:
        frame = self._next_frame(deadline, waiting_for)
        try:
            msg = protocol.parse(frame.type, frame.body)
        except protocol.ProtocolError as exc:
            raise self._fail(f"bad {protocol.NAMES.get(frame.type, hex(frame.type))} frame: {exc}") from None
        if isinstance(msg, protocol.Error):
            if msg.code == protocol.ERR_SEQ_TOO_LONG:
                raise CapacityError(f"the board refused the request: {msg.message}")
            raise LinkError(f"the board answered {msg.name}: {msg.message}")
        return msg

    def send(self, msg_type: int, body: bytes = b"") -> None:
        self.transport.write(framing.encode(msg_type, self._tx_seq, body))
        self._tx_seq = (self._tx_seq + 1) & 0xFFFFFFFF

    # Messages ----------------------------------------------------------------------------------

    def wait_hello(self, expect_start: bool = True) -> protocol.Hello:
        if expect_start:
            self._rx_seq = 0
        msg = self._expect(Deadline(self.timeouts.hello_s), "HELLO")
        if not isinstance(msg, protocol.Hello):
            raise self._fail(f"expected HELLO, got {type(msg).__name__}")
        if msg.proto != protocol.PROTOCOL_VERSION:
            raise LinkError(f"board speaks protocol {msg.proto}, this host {protocol.PROTOCOL_VERSION}")
        self.hello = msg
        return msg

    def generate(self, request: protocol.Request) -> Iterator[protocol.Token | protocol.Stats]:
        """Send a request; yield each TOKEN as it arrives, then the STATS."""
        if self.hello is not None and len(request.prompt) + request.max_new_tokens > self.hello.max_seq_len:
            raise CapacityError(f"{len(request.prompt)} prompt tokens + {request.max_new_tokens} new tokens exceed "
                                f"the program's max sequence length {self.hello.max_seq_len}",
                                hint="ask for fewer tokens, or re-export with a larger --max-seq-len")
        self.send(protocol.REQUEST, request.pack())
        index = 0
        while True:
            timeout = self.timeouts.first_token_s if index == 0 else self.timeouts.token_s
            what = "the first token (prefill)" if index == 0 else f"token {index}"
            msg = self._expect(Deadline(timeout), what)
            if isinstance(msg, protocol.Token):
                if msg.index != index:
                    raise self._fail(f"token index {msg.index} where {index} was due")
                index += 1
                yield msg
            elif isinstance(msg, protocol.Stats):
                if msg.generated != index:
                    raise self._fail(f"STATS counts {msg.generated} tokens, {index} arrived")
                yield msg
                return
            else:
                raise self._fail(f"unexpected {type(msg).__name__} during generation")

    def frames(self, deadline: Deadline) -> Iterator[tuple[framing.Frame | framing.FrameError, object]]:
        """Monitor mode: every frame (or framing error) with its parsed message, until the deadline."""
        while not deadline.expired:
            data = self.transport.read(deadline)
            for item in self._reader.feed(data):
                if isinstance(item, framing.FrameError):
                    yield item, None
                    continue
                try:
                    yield item, protocol.parse(item.type, item.body)
                except protocol.ProtocolError as exc:
                    yield item, exc

    def quit(self) -> None:
        try:
            self.send(protocol.QUIT)
        except DeviceError as exc:
            log.info("QUIT not delivered: %s", exc)
