"""Frames on a byte stream: COBS + CRC-32 + sequence number (docs/protocol.md). Pure bytes in, out."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAX_PAYLOAD = 16384
MIN_PAYLOAD = 9  # type u8 + seq u32 + crc u32
MAX_WIRE = MAX_PAYLOAD + MAX_PAYLOAD // 254 + 2 + 1  # COBS overhead + delimiter
_HEAD = struct.Struct("<BI")
_CRC = struct.Struct("<I")


class FrameError(Exception):
    """A frame that cannot be trusted. ``code`` is the protocol's ERROR code for it."""

    BAD_FRAME, BAD_CRC, TOO_LONG = 1, 2, 3

    def __init__(self, code: int, message: str, raw: bytes = b""):
        super().__init__(message)
        self.code = code
        self.raw = raw


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0:
            raise FrameError(FrameError.BAD_FRAME, "zero byte inside a COBS block")
        end = i + code
        if end > len(data):
            raise FrameError(FrameError.BAD_FRAME, "COBS block runs past the end of the frame")
        out += data[i + 1:end]
        i = end
        if code < 255 and i < len(data):
            out.append(0)
    return bytes(out)


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    body: bytes


def encode(msg_type: int, seq: int, body: bytes) -> bytes:
    payload = _HEAD.pack(msg_type, seq & 0xFFFFFFFF) + body
    payload += _CRC.pack(zlib.crc32(payload))
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return cobs_encode(payload) + b"\x00"


def decode_payload(wire: bytes) -> Frame:
    """One frame's bytes without the 0x00 delimiter -> Frame, or FrameError."""
    payload = cobs_decode(wire)
    if len(payload) < MIN_PAYLOAD:
        raise FrameError(FrameError.BAD_FRAME, f"frame of {len(payload)} bytes is shorter than {MIN_PAYLOAD}", wire)
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(FrameError.TOO_LONG, f"frame of {len(payload)} bytes exceeds {MAX_PAYLOAD}", wire)
    (crc,) = _CRC.unpack_from(payload, len(payload) - 4)
    if zlib.crc32(payload[:-4]) != crc:
        raise FrameError(FrameError.BAD_CRC, "CRC mismatch", wire)
    msg_type, seq = _HEAD.unpack_from(payload)
    return Frame(msg_type, seq, payload[_HEAD.size:-4])


class FrameReader:
    """Split a byte stream into frames. ``feed`` yields Frame or FrameError, in stream order."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self.tail = b""  # the last raw bytes seen, for error messages

    def feed(self, data: bytes) -> Iterator[Frame | FrameError]:
        for byte in data:
            if byte == 0:
                if self._discarding:
                    self._discarding = False
                    self._buf.clear()
                    continue
                if not self._buf:
                    continue  # an empty frame (delimiter run): ignore
                wire = bytes(self._buf)
                self._buf.clear()
                self.tail = wire[-64:]
                try:
                    yield decode_payload(wire)
                except FrameError as exc:
                    yield exc
                continue
            if self._discarding:
                continue
            self._buf.append(byte)
            if len(self._buf) >= MAX_WIRE:  # MAX_WIRE counts the delimiter, the buffer does not
                self.tail = bytes(self._buf[-64:])
                self._buf.clear()
                self._discarding = True
                yield FrameError(FrameError.TOO_LONG, f"no frame delimiter within {MAX_WIRE} bytes")
