"""The messages of docs/protocol.md as dataclasses, packed and parsed. Pure: bytes in, values out."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field

PROTOCOL_VERSION = 1

HELLO, TOKEN, STATS, ERROR = 0x01, 0x02, 0x03, 0x04
REQUEST, QUIT, CANCEL = 0x81, 0x82, 0x83
NAMES = {HELLO: "HELLO", TOKEN: "TOKEN", STATS: "STATS", ERROR: "ERROR", REQUEST: "REQUEST", QUIT: "QUIT",
         CANCEL: "CANCEL"}

ERR_BAD_FRAME, ERR_BAD_CRC, ERR_TOO_LONG, ERR_BAD_REQUEST, ERR_SEQ_TOO_LONG, ERR_RUNTIME = 1, 2, 3, 4, 5, 6
ERROR_NAMES = {1: "BAD_FRAME", 2: "BAD_CRC", 3: "TOO_LONG", 4: "BAD_REQUEST", 5: "SEQ_TOO_LONG", 6: "RUNTIME"}

FLAG_IGNORE_EOS = 1
FLAG_REPORT_LOGITS = 2
FLAG_NO_DRAFT = 4
FLAG_KEEP_STATE = 8
TOKEN_MAX_TOP = 4
STOP_EOS, STOP_LIMIT, STOP_CANCELLED = 0, 1, 2


class ProtocolError(Exception):
    """A frame whose body does not parse as its type says."""


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, fmt: str) -> tuple:
        st = struct.Struct("<" + fmt)
        if self.pos + st.size > len(self.data):
            raise ProtocolError(f"{self.what} body is truncated at byte {self.pos} of {len(self.data)}")
        values = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return values

    def one(self, fmt: str):
        return self.take(fmt)[0]

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what} body is truncated at byte {self.pos} of {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def string(self) -> str:
        return self.raw(self.one("H")).decode("utf-8", errors="replace")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what} body has {len(self.data) - self.pos} trailing bytes")


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<H", len(b)) + b


@dataclass(frozen=True)
class Hello:
    proto: int
    firmware: str
    board: str
    model_sha256: str  # hex
    max_seq_len: int
    vocab_size: int
    threads: int
    load_ms: float

    def pack(self) -> bytes:
        return (struct.pack("<H", self.proto) + _str(self.firmware) + _str(self.board)
                + bytes.fromhex(self.model_sha256)
                + struct.pack("<IIIf", self.max_seq_len, self.vocab_size, self.threads, self.load_ms))

    @classmethod
    def parse(cls, body: bytes) -> Hello:
        r = _Reader(body, "HELLO")
        proto = r.one("H")
        firmware, board = r.string(), r.string()
        sha = r.raw(32).hex()
        max_seq_len, vocab, threads, load_ms = r.take("IIIf")
        r.done()
        return cls(proto, firmware, board, sha, max_seq_len, vocab, threads, load_ms)


@dataclass(frozen=True)
class Token:
    index: int
    token: int
    t_us: int
    logit: float | None = None  # with FLAG_REPORT_LOGITS: the board's logit of `token`
    top: tuple[tuple[int, float], ...] = ()  # ... and its best (id, logit), best first

    def pack(self) -> bytes:
        body = struct.pack("<IIQ", self.index, self.token, self.t_us)
        if self.logit is not None:
            body += struct.pack("<fB", self.logit, len(self.top))
            body += b"".join(struct.pack("<If", i, x) for i, x in self.top)
        return body

    @classmethod
    def parse(cls, body: bytes) -> Token:
        r = _Reader(body, "TOKEN")
        index, token, t_us = r.take("IIQ")
        if r.pos == len(body):
            return cls(index, token, t_us)
        logit, n = r.take("fB")
        if n > TOKEN_MAX_TOP:
            raise ProtocolError(f"TOKEN reports {n} candidates, at most {TOKEN_MAX_TOP}")
        top = tuple(r.take("If") for _ in range(n))
        r.done()
        return cls(index, token, t_us, logit, top)


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int
    generated: int
    stop: int
    load_ms: float
    ttft_ms: float
    prefill_tok_s: float
    decode_tok_s: float
    peak_rss_kb: int
    # Speculative decoding (None from a board that predates these fields):
    decode_calls: int | None = None  # forward calls after the prefill
    draft_calls: int | None = None  # ... of which verified a draft
    drafted: int | None = None  # draft tokens proposed for verification
    accepted: int | None = None  # ... and confirmed by the model
    draft_model_calls: int | None = None  # forward calls of the program's draft method (None: an older board)
    kept: int | None = None  # prompt tokens the board's state already held (FLAG_KEEP_STATE); None: older board

    def pack(self) -> bytes:
        body = struct.pack("<IIBffffQ", self.prompt_tokens, self.generated, self.stop, self.load_ms, self.ttft_ms,
                           self.prefill_tok_s, self.decode_tok_s, self.peak_rss_kb)
        if self.decode_calls is not None:
            body += struct.pack("<IIII", self.decode_calls, self.draft_calls or 0, self.drafted or 0,
                                self.accepted or 0)
            if self.draft_model_calls is not None:
                body += struct.pack("<I", self.draft_model_calls)
                if self.kept is not None:
                    body += struct.pack("<I", self.kept)
        return body

    @classmethod
    def parse(cls, body: bytes) -> Stats:
        r = _Reader(body, "STATS")
        prompt_tokens, generated, stop, load_ms, ttft_ms, prefill, decode, rss = r.take("IIBffffQ")
        base = cls(prompt_tokens, generated, stop, load_ms, ttft_ms, prefill, decode, rss)
        if r.pos == len(body):  # the form without the draft counters
            return base
        calls, draft_calls, drafted, accepted = r.take("IIII")
        model_calls = r.take("I")[0] if r.pos < len(body) else None  # absent before draft models
        kept = r.take("I")[0] if r.pos < len(body) else None  # absent before chat turns kept the state
        r.done()
        if kept is not None and kept >= prompt_tokens:
            raise ProtocolError(f"STATS says {kept} of {prompt_tokens} prompt tokens were already in the state")
        if accepted > drafted:
            raise ProtocolError(f"STATS says {accepted} of {drafted} draft tokens were accepted")
        if draft_calls > calls or draft_calls > drafted or (drafted and not draft_calls):
            raise ProtocolError(f"STATS says {draft_calls} of {calls} calls verified {drafted} draft tokens")
        return dataclasses.replace(base, decode_calls=calls, draft_calls=draft_calls, drafted=drafted,
                                   accepted=accepted, draft_model_calls=model_calls, kept=kept)


@dataclass(frozen=True)
class Error:
    code: int
    message: str

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, f"code {self.code}")

    def pack(self) -> bytes:
        return struct.pack("<H", self.code) + _str(self.message)

    @classmethod
    def parse(cls, body: bytes) -> Error:
        r = _Reader(body, "ERROR")
        code = r.one("H")
        message = r.string()
        r.done()
        return cls(code, message)


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    report_logits: bool = False
    draft: bool = True  # the board may decode speculatively (FLAG_NO_DRAFT when False)
    keep_state: bool = False  # a prompt that extends what the board's state holds is fed from there (a chat turn)

    def pack(self) -> bytes:
        flags = ((FLAG_IGNORE_EOS if self.ignore_eos else 0) | (FLAG_REPORT_LOGITS if self.report_logits else 0)
                 | (0 if self.draft else FLAG_NO_DRAFT) | (FLAG_KEEP_STATE if self.keep_state else 0))
        return (struct.pack("<IIfIfQI", self.max_new_tokens, flags, self.temperature, self.top_k, self.top_p,
                            self.seed, len(self.prompt))
                + struct.pack(f"<{len(self.prompt)}I", *self.prompt)
                + struct.pack("<I", len(self.stop)) + struct.pack(f"<{len(self.stop)}I", *self.stop))

    @classmethod
    def parse(cls, body: bytes) -> Request:
        r = _Reader(body, "REQUEST")
        max_new, flags, temperature, top_k, top_p, seed, n_prompt = r.take("IIfIfQI")
        prompt = r.take(f"{n_prompt}I") if n_prompt <= len(body) // 4 else r.raw(len(body) + 1)
        n_stop = r.one("I")
        stop = r.take(f"{n_stop}I") if n_stop <= len(body) // 4 else r.raw(len(body) + 1)
        r.done()
        return cls(tuple(prompt), max_new, temperature, top_k, top_p, seed, tuple(stop), bool(flags & FLAG_IGNORE_EOS),
                   bool(flags & FLAG_REPORT_LOGITS), not flags & FLAG_NO_DRAFT, bool(flags & FLAG_KEEP_STATE))


PARSERS = {HELLO: Hello.parse, TOKEN: Token.parse, STATS: Stats.parse, ERROR: Error.parse, REQUEST: Request.parse}


def parse(msg_type: int, body: bytes):
    if msg_type == QUIT:
        if body:
            raise ProtocolError("QUIT has a body")
        return None
    parser = PARSERS.get(msg_type)
    if parser is None:
        raise ProtocolError(f"unknown message type 0x{msg_type:02x}")
    return parser(body)
