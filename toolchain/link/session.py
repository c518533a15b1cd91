"""A conversation with a board over frames: HELLO, then requests answered by TOKEN... STATS.

Every wait has a deadline; the first token of a request gets the prefill's deadline, each later
token a decode step's. A CRC failure, a sequence gap, an ERROR frame or a silent board ends the
session with a DeviceError that names the last good sequence number and shows the raw tail.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from toolchain.errors import CapacityError, DeviceError
from toolchain.link import framing, protocol
from toolchain.link.transport import Deadline, Transport

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 120.0  # loading a 350M program under emulation takes a while
REOPEN_TIMEOUT_S = 10.0  # a port that disappears (a USB adapter re-enumerating) must be back within this
REOPEN_POLL_S = 0.1
QUIET_S = 1.0  # after a damaged stream: the board is done when it has said nothing for this long
EXTRA_TOKENS_READ = 16  # tokens read past max_new_tokens before giving up on a board that does not stop
LINK_ERROR_CODES = (protocol.ERR_BAD_FRAME, protocol.ERR_BAD_CRC, protocol.ERR_TOO_LONG)


@dataclass
class Timeouts:
    hello_s: float = HELLO_TIMEOUT_S
    first_token_s: float = 60.0  # the prefill
    token_s: float = 10.0  # one decode step
    quiet_s: float = QUIET_S  # after a damaged stream, silence this long means the board is done


class LinkError(DeviceError):
    """The link damaged the exchange (garbled or lost frames, a silent or vanished port): a request
    may be sent again (``--retries``)."""


class BoardError(DeviceError):
    """The board answered, clearly, that it could not serve the request: sending it again will not help."""


@dataclass
class Collected:
    """One request's stream as it arrived (validated elsewhere)."""

    tokens: list[int]
    logits: list[tuple[float, tuple[tuple[int, float], ...]] | None]
    stats: protocol.Stats | None
    times_us: list[int] = field(default_factory=list)  # each token's t_us: the board's clock since the request
    arrivals_s: list[float] = field(default_factory=list)  # each token's arrival: the host's clock since it sent
    request: protocol.Request | None = None  # the REQUEST as sent (KEEP_STATE dropped when the state was unknown)
    expected_kept: int = 0  # the prompt tokens the board must keep, by the host's count (kept_of)


def kept_of(request: protocol.Request, held: tuple[int, ...] | None) -> int:
    """How many prompt tokens a board holding ``held`` keeps for ``request`` (docs/protocol.md,
    KEEP_STATE): all it holds when the prompt starts with exactly that and goes on past it, else 0."""
    if not request.keep_state or not held or len(held) >= len(request.prompt):
        return 0
    return len(held) if tuple(request.prompt[:len(held)]) == held else 0


class BoardSession:
    def __init__(self, transport: Transport, timeouts: Timeouts | None = None,
                 alive: Callable[[], str | None] | None = None, reopen: Callable[[], Transport] | None = None,
                 reopen_s: float = REOPEN_TIMEOUT_S, tx_seq: int | None = None):
        """``alive`` returns None while the board runs, else why it stopped (checked while waiting).
        ``reopen`` opens the port again when it disappears; it must be back within ``reopen_s``."""
        self.transport = transport
        self._reopen = reopen
        self._reopen_s = reopen_s
        self.reopened = 0
        self.timeouts = timeouts or Timeouts()
        self._alive = alive or (lambda: None)
        self._reader = framing.FrameReader()
        self._pending: list[framing.Frame | framing.FrameError] = []
        self._pending_at: list[float] = []  # when each pending frame's last bytes were read (monotonic)
        self.frame_at = 0.0  # ... and that of the frame returned last: its arrival, not when it was handled
        self.on_idle: Callable[[], None] | None = None  # called after each read that brought nothing (may raise)
        self._rx_seq: int | None = None  # next expected sequence number from the board
        # A random start: the board drops a frame that repeats its last one (seq and body), which a
        # new session starting from 0 with the same request would otherwise look like.
        self._tx_seq = secrets.randbits(32) if tx_seq is None else tx_seq
        self.hello: protocol.Hello | None = None
        # What the board's model state holds, by the host's count: () for a runner that just said
        # HELLO, the last prompt and all but the last generated token after a clean request, None
        # (unknown: a damaged or refused stream, a board we attached to) otherwise.
        self.held: tuple[int, ...] | None = None
        self.sent_at = 0.0  # when the last REQUEST was written (monotonic)

    # Frames ------------------------------------------------------------------------------------

    def _fail(self, what: str) -> LinkError:
        last = "none yet" if self._rx_seq is None else str(self._rx_seq - 1)
        tail = self._reader.tail.hex(" ")[-96:] or "(nothing)"
        return LinkError(f"{what} (last good frame seq {last}; raw tail {tail})")

    def _next_frame(self, deadline: Deadline, waiting_for: str) -> framing.Frame:
        while True:
            if self._pending:
                item = self._pending.pop(0)
                self.frame_at = self._pending_at.pop(0)
                if isinstance(item, framing.FrameError):
                    raise self._fail(f"garbled frame from the board: {item}")
                if self._rx_seq is not None and item.seq != self._rx_seq:
                    raise self._fail(f"sequence gap: expected frame {self._rx_seq}, got {item.seq}")
                self._rx_seq = (item.seq + 1) & 0xFFFFFFFF
                return item
            if deadline.expired:
                raise self._fail(f"timed out after {deadline.seconds:.1f} s waiting for {waiting_for}")
            data = self._read(deadline, waiting_for)
            if data:
                frames = list(self._reader.feed(data))
                self._pending.extend(frames)
                self._pending_at.extend([time.monotonic()] * len(frames))
            else:
                if self.on_idle is not None:
                    self.on_idle()
                why = self._alive()
                if why is not None:
                    raise self._fail(f"the board stopped while we waited for {waiting_for}: {why}")

    def _read(self, deadline: Deadline, waiting_for: str) -> bytes:
        try:
            return self.transport.read(deadline)
        except DeviceError as exc:
            if self._reopen is None:
                raise self._fail(f"the link went away while we waited for {waiting_for}: {exc}") from None
        self._reopen_link(waiting_for)
        return b""

    def _reopen_link(self, waiting_for: str) -> None:
        """The port vanished: open it again within the deadline (what a re-enumerated adapter needs)."""
        assert self._reopen is not None
        try:
            self.transport.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead port may fail in many ways; say so and go on
            log.info("closing the lost port: %s", exc)
        deadline = Deadline(self._reopen_s)
        last = ""
        while not deadline.expired:
            why = self._alive()
            if why is not None:
                raise self._fail(f"the link went away while we waited for {waiting_for}, and the board stopped: "
                                 f"{why}")
            try:
                self.transport = self._reopen()
            except DeviceError as exc:
                last = str(exc)
                time.sleep(REOPEN_POLL_S)
                continue
            self.reopened += 1
            log.info("link reopened (%s)", self.transport.name)
            return
        raise self._fail(f"the link went away while we waited for {waiting_for} and did not come back within "
                         f"{self._reopen_s:g} s ({last or 'no port'})")

    def _expect(self, deadline: Deadline, waiting_for: str) -> object:
        frame = self._next_frame(deadline, waiting_for)
        try:
            msg = protocol.parse(frame.type, frame.body)
        except protocol.ProtocolError as exc:
            raise self._fail(f"bad {protocol.NAMES.get(frame.type, hex(frame.type))} frame: {exc}") from None
        if isinstance(msg, protocol.Error):
            if msg.code == protocol.ERR_SEQ_TOO_LONG:
                raise CapacityError(f"the board refused the request: {msg.message}")
            if msg.code in LINK_ERROR_CODES:  # what we sent arrived damaged
                raise self._fail(f"the board answered {msg.name} while we waited for {waiting_for}: {msg.message}")
            raise BoardError(f"the board answered {msg.name}: {msg.message}")
        return msg

    def send(self, msg_type: int, body: bytes = b"") -> None:
        wire = framing.encode(msg_type, self._tx_seq, body)
        self._tx_seq = (self._tx_seq + 1) & 0xFFFFFFFF
        try:
            self.transport.write(wire)
        except DeviceError as exc:
            if self._reopen is None:
                raise
            what = protocol.NAMES.get(msg_type, hex(msg_type))
            self._reopen_link(f"{what} to be sent")
            raise self._fail(f"the link went away while sending {what}: {exc}") from None

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
        self.held = () if expect_start else None
        return msg

    def outgoing(self, request: protocol.Request) -> protocol.Request:
        """``request`` as it will be sent: a KEEP_STATE turn while the host does not know what the
        board holds goes without the flag (the board starts afresh; nothing it claims to keep can be
        checked otherwise)."""
        if request.keep_state and self.held is None:
            return dataclasses.replace(request, keep_state=False)
        return request

    def generate(self, request: protocol.Request) -> Iterator[protocol.Token | protocol.Stats]:
        """Send a request (as ``outgoing`` makes it); yield each TOKEN as it arrives, then the STATS.
        ``held`` follows: what the board must hold after a clean stream, unknown after anything else."""
        if self.hello is not None and len(request.prompt) + request.max_new_tokens > self.hello.max_seq_len:
            raise CapacityError(f"{len(request.prompt)} prompt tokens + {request.max_new_tokens} new tokens exceed "
                                f"the program's max sequence length {self.hello.max_seq_len}",
                                hint="ask for fewer tokens, or re-export with a larger --max-seq-len")
        request = self.outgoing(request)
        self.held = None  # until the stream ends cleanly
        self.send(protocol.REQUEST, request.pack())
        self.sent_at = time.monotonic()
        tokens: list[int] = []
        while True:
            index = len(tokens)
            timeout = self.timeouts.first_token_s if index == 0 else self.timeouts.token_s
            what = "the first token (prefill)" if index == 0 else f"token {index}"
            msg = self._expect(Deadline(timeout), what)
            if isinstance(msg, protocol.Token):
                if msg.index != index:
                    raise self._fail(f"token index {msg.index} where {index} was due")
                tokens.append(msg.token)
                yield msg
            elif isinstance(msg, protocol.Stats):
                if msg.generated != index:
                    raise self._fail(f"STATS counts {msg.generated} tokens, {index} arrived")
                # The model state holds the prompt and every token but the last (never fed).
                self.held = (*request.prompt, *tokens[:-1])
                yield msg
                return
            else:
                raise self._fail(f"unexpected {type(msg).__name__} during generation")

    def collect(self, request: protocol.Request, on_token: Callable[[int], None] = lambda t: None) -> Collected:
        """Send a request and gather its stream. A board that does not stop is read only
        ``EXTRA_TOKENS_READ`` tokens past ``max_new_tokens`` (the verdict fails it); the session is then
        resynchronised before anything else is sent."""
        sent = self.outgoing(request)
        out = Collected([], [], None, request=sent, expected_kept=kept_of(sent, self.held))
        for msg in self.generate(sent):
            if isinstance(msg, protocol.Token):
                out.tokens.append(msg.token)
                out.times_us.append(msg.t_us)
                out.arrivals_s.append(self.frame_at - self.sent_at)
                out.logits.append((msg.logit, msg.top) if msg.logit is not None else None)
                if len(out.tokens) <= request.max_new_tokens:
                    on_token(msg.token)
                elif len(out.tokens) > request.max_new_tokens + EXTRA_TOKENS_READ:
                    self.resync()
                    break
            else:
                out.stats = msg
        return out

    def resync(self) -> None:
        """After a damaged or abandoned stream: let the board finish (until it has been quiet for
        ``timeouts.quiet_s``), drop what it said and start counting frames afresh, so the next request
        starts clean."""
        quiet_s = self.timeouts.quiet_s
        limit = Deadline(max(self.timeouts.token_s, quiet_s) * 4)
        while not limit.expired:
            quiet = Deadline(quiet_s)
            got = b""
            while not quiet.expired and not got:
                got = self._read(quiet, "the damaged stream to end")
            if not got:
                break
        self._reader = framing.FrameReader()
        self._pending.clear()
        self._pending_at.clear()
        self._rx_seq = None
        self.held = None

    def frames(self, deadline: Deadline) -> Iterator[tuple[framing.Frame | framing.FrameError, object]]:
        """Monitor mode: every frame (or framing error) with its parsed message, until the deadline.
        A port that vanishes is reopened (``reopen``), as while waiting for a reply."""
        while not deadline.expired:
            data = self._read(deadline, "frames")
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
