"""Byte transports under the frame layer, with deadlines: a serial port (pyserial), a pair of pipes
(a runner serving on its stdin/stdout, locally or through ``ssh``), and an in-memory pair for tests."""

from __future__ import annotations

import errno
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Any, Protocol

from toolchain.errors import DeviceError

READ_CHUNK = 4096
POLL_S = 0.05  # longest single blocking read, so deadlines are honoured
PIPE_WRITE_TIMEOUT_S = 5.0  # a peer that reads nothing for this long is gone (SerialTransport's write_timeout)
PIPE_EXIT_WAIT_S = 0.5  # after end of file: how long to wait for the process's exit status, to name it
PIPE_CLOSE_WAIT_S = 3.0  # on close: how long the process may take to exit on end of file before it is killed


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
        # RFC 2217 (ser2net): pyserial has no write timeout there (it raises NotImplementedError), and
        # upstream pyserial renegotiates the port's settings with the server on every change of the
        # read timeout: it stays at POLL_S (a read returns at most POLL_S after its deadline).
        self._rfc2217 = device[:10].lower() == "rfc2217://"
        try:
            if "://" in device:  # a network port: no local device to hold exclusively
                more = {} if self._rfc2217 else {"write_timeout": 5.0}
                self._port = serial.serial_for_url(device, baudrate=baud, timeout=POLL_S, **more)
            else:
                self._port = serial.Serial(device, baudrate=baud, timeout=POLL_S, write_timeout=5.0, exclusive=True)
        except serial.SerialException as exc:
            raise _open_error(device, exc) from None
        except ValueError as exc:  # pyserial refuses a URL option or a baud rate
            raise DeviceError(f"cannot open serial port {device}: {exc}") from None

    def read(self, deadline: Deadline) -> bytes:
        import serial

        try:  # setting the timeout reconfigures the port: it fails too once the device is gone
            if not self._rfc2217:
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


def _fd_of(end: int | IO[Any]) -> int:
    return end if isinstance(end, int) else end.fileno()


class PipeTransport:
    """Frames over two pipes: what the other end writes arrives on ``reader``, what we write leaves on
    ``writer``. The other end is typically a runner started with ``--serial -`` (its stdout and stdin),
    directly or through ``ssh host 'exec runner --serial -'`` (:meth:`of`).

    ``reader`` and ``writer`` are file descriptors or binary files (their ``fileno()`` is used, their
    buffers are not: hand over files nobody has read from). The transport owns them and, when given,
    ``process``: :meth:`close` closes the writer (the other end sees end of file), gives the process
    ``PIPE_CLOSE_WAIT_S`` to exit, then terminates and finally kills it.
    """

    def __init__(self, name: str, reader: int | IO[Any], writer: int | IO[Any],
                 process: subprocess.Popen[bytes] | None = None):
        self.name = name
        self.process = process
        self._ends = (reader, writer)
        self._rfd = _fd_of(reader)
        self._wfd = _fd_of(writer)
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self.closed = False

    @classmethod
    def of(cls, process: subprocess.Popen[bytes], name: str) -> PipeTransport:
        """The link to a process started with ``stdin=PIPE, stdout=PIPE`` (and its stdout unread)."""
        if process.stdin is None or process.stdout is None:
            raise ValueError("the process needs stdin=PIPE and stdout=PIPE")
        return cls(name, process.stdout, process.stdin, process)

    def _gone(self, what: str) -> DeviceError:
        status = ""
        if self.process is not None:
            try:
                code = self.process.wait(PIPE_EXIT_WAIT_S)
                status = f"; its process exited with status {code}"
            except subprocess.TimeoutExpired:
                pass
        return DeviceError(f"{self.name}: {what}{status}")

    def read(self, deadline: Deadline) -> bytes:
        """What has arrived, waiting at most ``min(POLL_S, deadline.remaining)``; b"" if nothing did.
        DeviceError once the other end has closed its side (end of file)."""
        if self.closed:
            raise DeviceError(f"{self.name} is closed")
        ready, _, _ = select.select([self._rfd], [], [], min(POLL_S, deadline.remaining))
        if not ready:
            return b""
        try:
            data = os.read(self._rfd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise self._gone(f"read failed ({exc.strerror})") from None
        if not data:
            raise self._gone("the other end closed the link (end of file)")
        return data

    def write(self, data: bytes) -> None:
        """All of ``data``; DeviceError if the other end has closed or reads nothing for
        ``PIPE_WRITE_TIMEOUT_S``."""
        if self.closed:
            raise DeviceError(f"{self.name} is closed")
        view = memoryview(data)
        deadline = Deadline(PIPE_WRITE_TIMEOUT_S)
        while view:
            try:
                n = os.write(self._wfd, view)
            except BlockingIOError:
                n = 0
            except BrokenPipeError:
                raise self._gone("the other end closed the link (broken pipe)") from None
            except OSError as exc:
                raise self._gone(f"write failed ({exc.strerror})") from None
            view = view[n:]
            if view:
                if deadline.expired:
                    raise DeviceError(f"{self.name}: the other end read nothing for {PIPE_WRITE_TIMEOUT_S:.0f} s",
                                      hint="the runner may be stuck; stop it and start it again")
                select.select([], [self._wfd], [], min(POLL_S, deadline.remaining))

    def close(self) -> None:
        """Close both pipes (writer first: the other end sees end of file) and end the process."""
        if self.closed:
            return
        self.closed = True
        for end in reversed(self._ends):
            try:
                if isinstance(end, int):
                    os.close(end)
                else:
                    end.close()
            except OSError:
                pass  # a pipe whose reader has gone may fail to flush; it is closed all the same
        proc = self.process
        if proc is None:
            return
        try:
            proc.wait(PIPE_CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(PIPE_CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
