"""Byte transports under the frame layer: a serial port (pyserial), with deadlines."""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from typing import Protocol

from toolchain.errors import DeviceError

READ_CHUNK = 4096
POLL_S = 0.05  # longest single blocking read, so deadlines are honoured


@dataclass
class Deadline:
    """A point in time on the monotonic clock (labgrid's Timeout)."""

    seconds: float

    def __post_init__(self) -> None:
        self.end = time.monotonic() + self.seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


class Transport(Protocol):
    name: str

    def read(self, deadline: Deadline) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SerialTransport:
    """A serial device (or pseudo-terminal) opened exclusively in raw mode, or a pyserial URL
    (``rfc2217://``, ``socket://``, ``loop://``; see :mod:`toolchain.link.ports`)."""

    def __init__(self, device: str, baud: int = 921600):
        import serial

        self.name = device
        try:
            if "://" in device:  # a network port: no local device to hold exclusively
                self._port = serial.serial_for_url(device, baudrate=baud, timeout=POLL_S, write_timeout=5.0)
            else:
                self._port = serial.Serial(device, baudrate=baud, timeout=POLL_S, write_timeout=5.0, exclusive=True)
        except serial.SerialException as exc:
            raise _open_error(device, exc) from None
        except ValueError as exc:  # pyserial refuses a URL option or a baud rate
            raise DeviceError(f"cannot open serial port {device}: {exc}") from None

    def read(self, deadline: Deadline) -> bytes:
        import serial

        try:  # setting the timeout reconfigures the port: it fails too once the device is gone
            self._port.timeout = min(POLL_S, max(deadline.remaining, 0.001))
            return self._port.read(READ_CHUNK) or self._port.read(1)
        except serial.SerialException as exc:
            raise DeviceError(f"serial port {self.name} failed: {exc}") from None
        except OSError as exc:  # EIO when the other end of a pty has gone
            raise DeviceError(f"serial port {self.name} closed by the board ({exc.strerror})") from None

    def write(self, data: bytes) -> None:
        import termios

        import serial

        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError, termios.error) as exc:
            raise DeviceError(f"cannot write to serial port {self.name}: {exc}") from None

    def close(self) -> None:
        self._port.close()


def _open_error(device: str, exc: Exception) -> DeviceError:
    """What went wrong opening ``device``, said so a user can act on it."""
    from toolchain.link import ports

    text = str(exc)
    bare = text.replace(device, "").lower()  # a path may hold any word
    code = getattr(exc, "errno", None)
    if ports.is_permission(code):
        return ports.permission_denied(device)
    if code == errno.ENOENT:
        return DeviceError(f"no serial port {device} (nothing at that path)",
                           hint="`edgelm ports` lists the ports here; a USB adapter renamed by a reset is followed "
                                "with --port usb:VID:PID[:SERIAL]")
    if code in (errno.EAGAIN, errno.EBUSY) or "lock" in bare or "busy" in bare \
            or "resource temporarily unavailable" in bare:
        return DeviceError(f"serial port {device} is busy (another program has it open)",
                           hint="close the other monitor, or pass another --port")
    if "inappropriate ioctl" in bare or code in (errno.ENOTTY, errno.EISDIR):
        return DeviceError(f"{device} is not a serial port (not a terminal device)",
                           hint="`edgelm ports` lists the ports here")
    detail = re.sub(r"^(\[Errno \d+\] )?[Cc]ould not open port \S+: ", "", text)
    return DeviceError(f"cannot open serial port {device}: {detail}")


class MemoryTransport:
    """An in-memory link: the host side of a pair whose board side a test or a fake board drives.

    ``inject`` queues bytes as if the board had sent them; ``sent`` collects what the host wrote.
    Faults (dropped, corrupted or delayed bytes) are injected by what the caller queues.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._rx = bytearray()
        self.sent = bytearray()
        self.closed = False

    def inject(self, data: bytes) -> None:
        self._rx += data

    def read(self, deadline: Deadline) -> bytes:
        if not self._rx:
            time.sleep(min(POLL_S, deadline.remaining))
            return b""
        data = bytes(self._rx[:READ_CHUNK])
        del self._rx[:READ_CHUNK]
        return data

    def write(self, data: bytes) -> None:
        if self.closed:
            raise DeviceError(f"{self.name} is closed")
        self.sent += data

    def close(self) -> None:
        self.closed = True
