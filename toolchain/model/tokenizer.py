"""Text <-> token ids on the host. The board only ever sees ids.

Two kinds: the checkpoint's ``tokenizer.json`` (Hugging Face ``tokenizers``), and the byte-level
tokenizer the presets define (id = byte + 3; 0 pad, 1 BOS, 2 EOS). Each decodes ids to text
(``decode``), and :class:`TextAssembler` streams that text as tokens arrive: what it prints, piece by
piece, is exactly ``decode`` of the same ids, which for a ``tokenizer.json`` is what
``tokenizers.Tokenizer.decode(ids, skip_special_tokens=not show_special)`` gives (added tokens that are
not special print as text, special ones only when shown, a character split across tokens prints once,
whole, when its last byte arrives).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from toolchain.errors import InputError

BYTE_OFFSET = 3  # ids 0..2 are pad, BOS, EOS
# The byte tokenizer's control ids as --show-special prints them (LFM2's names for ids 0..2).
BYTE_SPECIALS = {0: "<|pad|>", 1: "<|startoftext|>", 2: "<|endoftext|>"}


def unknown_token(token_id: int) -> bytes:
    """How the byte tokenizer shows an id it has no text for: visibly, never as nothing."""
    return f"<id {token_id}>".encode()


class Tokenizer(Protocol):
    name: str
    sha256: str | None
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int], show_special: bool = False) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def holds(self, token_id: int, show_special: bool) -> bool: ...

    def skipped(self, token_id: int, show_special: bool) -> bool: ...


@dataclass
class ByteTokenizer:
    """UTF-8 bytes as tokens: what the presets (random weights, no tokenizer file) use."""

    vocab_size: int = 256 + BYTE_OFFSET
    name: str = "bytes"
    sha256: str | None = None

    def encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def token_bytes(self, token_id: int, show_special: bool = False) -> bytes:
        if BYTE_OFFSET <= token_id < 256 + BYTE_OFFSET:
            return bytes([token_id - BYTE_OFFSET])
        if token_id < BYTE_OFFSET:  # pad, BOS, EOS are control, not text
            return BYTE_SPECIALS[token_id].encode() if show_special else b""
        return unknown_token(token_id)  # beyond the byte range (a larger preset vocab): shown, not hidden

    def decode(self, ids: list[int], show_special: bool = False) -> str:
        """The bytes of ``ids`` as UTF-8, each invalid sequence one U+FFFD; a control id (pad, BOS, EOS)
        is nothing unless ``show_special``; an id past the bytes is ``<id N>``."""
        return b"".join(self.token_bytes(t, show_special) for t in ids).decode("utf-8", errors="replace")

    def holds(self, token_id: int, show_special: bool) -> bool:
        return False

    def skipped(self, token_id: int, show_special: bool) -> bool:
        return not self.token_bytes(token_id, show_special)


class HFTokenizer:
    """A ``tokenizer.json`` read with the ``tokenizers`` library: its ``decode`` is the library's."""

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
        decoders = _decoder_types(json.loads(self._tok.to_str()).get("decoder"))
        self._byte_level = "ByteLevel" in decoders
        self._byte_fallback = "ByteFallback" in decoders  # a run of <0xNN> tokens is decoded as one
        self._added = self._tok.get_added_tokens_decoder()  # id -> AddedToken
        self._cache: dict[int, bytes] = {}

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], show_special: bool = False) -> str:
        """What ``tokenizers`` decodes ``ids`` to; special tokens only with ``show_special``. Ids the
        tokenizer does not have (a model's vocabulary may be larger) are nothing, as there."""
        return self._tok.decode(list(ids), skip_special_tokens=not show_special)

    def is_special(self, token_id: int) -> bool:
        added = self._added.get(token_id)
        return added is not None and bool(added.special)

    def skipped(self, token_id: int, show_special: bool) -> bool:
        """Whether ``decode`` leaves ``token_id`` out before its decoder sees the tokens."""
        return self._tok.id_to_token(token_id) is None or (not show_special and self.is_special(token_id))

    def holds(self, token_id: int, show_special: bool) -> bool:
        """Whether text after ``token_id`` (the last token the decoder sees) may still change: a byte
        token of a ByteFallback decoder, whose run of bytes is decoded whole once it ends."""
        if not self._byte_fallback:
            return False
        piece = self._tok.id_to_token(token_id)
        return piece is not None and token_id not in self._added and _is_byte_piece(piece)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (special tokens: none; added tokens that are not special:
        their text). Streamed text comes from :class:`TextAssembler`, which decodes as ``tokenizers`` does."""
        if token_id in self._cache:
            return self._cache[token_id]
        piece = self._tok.id_to_token(token_id)
        added = self._added.get(token_id)
        if piece is None:
            out = b""
        elif added is not None:
            out = b"" if added.special else added.content.encode("utf-8")
        elif self._byte_level:
            out = bytes(_BYTE_DECODER.get(ch, 0) for ch in piece)
        elif _is_byte_piece(piece):
            out = bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
        else:
            out = piece.replace("\u2581", " ").encode("utf-8")
        self._cache[token_id] = out
        return out


def _is_byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _decoder_types(decoder: object) -> set[str]:
    """The types of a tokenizer.json decoder and of the decoders a Sequence holds."""
    if not isinstance(decoder, dict):
        return set()
    found = {str(decoder.get("type"))}
    for inner in decoder.get("decoders") or []:
        found |= _decoder_types(inner)
    return found


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
    """The streaming detokenizer: ``push(id)`` returns the text that id completes, ``finish()`` the
    rest. Everything it returns, joined, is ``tokenizer.decode(ids, show_special)`` of every id pushed
    (``text``), and ``pieces[i]`` is what the i-th push printed.

    It decodes a window of the last ids (from the last text it printed) and prints what the new id
    added to that window's text, as Hugging Face's text-generation servers do; it holds the text back
    while the window's text ends inside a character (U+FFFD), does not extend what it printed, or may
    still change (a ByteFallback run of byte tokens). Ids the decoder never sees (special tokens that
    are hidden, ids past the tokenizer) print nothing and do not end a run.
    """

    def __init__(self, tokenizer: Tokenizer, show_special: bool = False):
        self._tok = tokenizer
        self.show_special = show_special
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.text = ""
        self._start = 0  # the window's first id: where the last printed piece's window ended
        self._read = 0  # ids before this are printed
        self._held = False  # the last id the decoder sees may still change the text (a byte run)
        self._before: str | None = None  # the window's text up to _read

    def _window(self, end: int) -> str:
        return self._tok.decode(self.ids[self._start:end], self.show_special)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if not self._tok.skipped(token_id, self.show_special):
            self._held = self._tok.holds(token_id, self.show_special)
        piece = "" if self._held else self._advance(final=False)
        self.pieces.append(piece)
        return piece

    def finish(self) -> str:
        """The text still held back (an unfinished character prints as U+FFFD, as decode gives it)."""
        tail = self._advance(final=True)
        if tail and self.pieces:
            self.pieces[-1] += tail
        return tail

    def _advance(self, final: bool) -> str:
        if self._before is None:
            self._before = self._window(self._read)
        before, after = self._before, self._window(len(self.ids))
        if not final and (len(after) <= len(before) or not after.startswith(before) or after.endswith("\ufffd")):
            return ""
        same = len(os.path.commonprefix([before, after]))  # all of before, but for a decoder that rewrites
        piece = after[same:]
        self._start, self._read, self._before = self._read, len(self.ids), None
        self.text += piece
        return piece


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
