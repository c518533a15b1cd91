"""Text <-> token ids on the host. The board only ever sees ids.

Two kinds: the checkpoint's ``tokenizer.json`` (Hugging Face ``tokenizers``), and the byte-level
tokenizer the presets define (id = byte + 3; 0 pad, 1 BOS, 2 EOS). Each can give the bytes of a
token, so streamed tokens are reassembled into text with an incremental UTF-8 decoder: a token
that ends inside a multi-byte character prints nothing until the character completes.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from toolchain.errors import InputError

BYTE_OFFSET = 3  # ids 0..2 are pad, BOS, EOS


def unknown_token(token_id: int) -> bytes:
    """How an id the tokenizer has no text for is shown: visibly, never as nothing."""
    return f"<id {token_id}>".encode()


class Tokenizer(Protocol):
    name: str
    sha256: str | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...


@dataclass
class ByteTokenizer:
    """UTF-8 bytes as tokens: what the presets (random weights, no tokenizer file) use."""

    vocab_size: int = 256 + BYTE_OFFSET
    name: str = "bytes"
    sha256: str | None = None

    def encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def token_bytes(self, token_id: int) -> bytes:
        if BYTE_OFFSET <= token_id < 256 + BYTE_OFFSET:
            return bytes([token_id - BYTE_OFFSET])
        if token_id < BYTE_OFFSET:
            return b""  # pad, BOS, EOS are control, not text
        return unknown_token(token_id)  # beyond the byte range (a larger preset vocab): shown, not hidden


class HFTokenizer:
    """A ``tokenizer.json`` read with the ``tokenizers`` library."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as _Tok

        try:
            data = path.read_bytes()
            self._tok = _Tok.from_str(data.decode("utf-8"))
        except (OSError, UnicodeDecodeError, Exception) as exc:  # tokenizers raises plain Exception
            raise InputError(f"{path} is not a readable tokenizer.json ({str(exc).splitlines()[0]})") from None
        self.name = f"tokenizer.json ({path.parent.name})"
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._byte_level = self._is_byte_level(data)
        self._cache: dict[int, bytes] = {}

    @staticmethod
    def _is_byte_level(data: bytes) -> bool:
        return b'"ByteLevel"' in data

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._cache:
            return self._cache[token_id]
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            out = unknown_token(token_id)
        elif self._tok.get_added_tokens_decoder().get(token_id) is not None:
            out = b""  # special / added tokens are control, not text
        elif self._byte_level:
            out = bytes(_BYTE_DECODER.get(ch, 0) for ch in piece)
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            out = bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
        else:
            out = piece.replace("\u2581", " ").encode("utf-8")
        self._cache[token_id] = out
        return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-character table used by ByteLevel BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


_BYTE_DECODER = {v: k for k, v in _bytes_to_unicode().items()}


class TextAssembler:
    """Feeds token bytes through an incremental UTF-8 decoder; returns the text that completed."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def push(self, token_id: int) -> str:
        piece = self._dec.decode(self._tok.token_bytes(token_id))
        self.text += piece
        return piece

    def finish(self) -> str:
        tail = self._dec.decode(b"", final=True)
        self.text += tail
        return tail


def for_model(tokenizer_path: Path | None, vocab_size: int) -> Tokenizer:
    if tokenizer_path is not None:
        tok = HFTokenizer(tokenizer_path)
        if tok.vocab_size > vocab_size:
            raise InputError(f"{tokenizer_path} has {tok.vocab_size} tokens but the model only {vocab_size}")
        return tok
    if vocab_size < 256 + BYTE_OFFSET:
        raise InputError(f"the model's vocabulary ({vocab_size}) is too small for the byte tokenizer and no "
                         "tokenizer.json was given")
    return ByteTokenizer()
