"""Serial ports by identity: what is plugged in, and which one ``--port`` means.

``--port`` takes one of three forms (:func:`parse_port_spec`):

    /dev/ttyUSB0, /dev/serial/by-id/..., out/targets/local-host/link/host    a device path
    usb:0403:6001  usb:0403:6001:A50285BI                                     a USB adapter by VID:PID[:SERIAL]
    rfc2217://host:4000  socket://host:4001  loop://                         a pyserial URL

A ``usb:`` spec is resolved against the port list every time the port is opened
(:func:`open_port`, :func:`opener`), so a session that reopens its link after a board reset
finds the adapter under the new /dev/ttyUSBn name it re-enumerated as. Listing and matching are
pure over an injected lister (pyserial's ``comports`` by default); pseudo-terminals are not
listed by pyserial, so edgelm's own links are added by the caller (:func:`edgelm_link`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from toolchain.errors import DeviceError, UsageError

if TYPE_CHECKING:
    from toolchain.link.transport import Transport

KINDS = ("usb", "platform", "pty")  # a USB adapter, a UART of the machine, an edgelm link (pseudo-terminal)
URL_SCHEMES = ("rfc2217", "socket", "loop")
MAX_SPEC_CHARS = 4096
FORMS = ("a device path (/dev/ttyUSB0), usb:VID:PID[:SERIAL] (4 hex digits each, e.g. usb:0403:6001), "
         "or a URL (rfc2217://HOST:PORT, socket://HOST:PORT, loop://)")

_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_SERIAL = re.compile(r"[A-Za-z0-9._:-]{1,126}")  # USB serial numbers; some (ESP32) hold colons
_HOSTPORT_URL = re.compile(r"(?P<scheme>[A-Za-z0-9]+)://(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])"
                           r":(?P<port>[0-9]{1,5})(?P<query>\?[A-Za-z0-9_=&.]*)?")
_LOOP_URL = re.compile(r"loop://(\?[A-Za-z0-9_=&.]*)?", re.IGNORECASE)

Lister = Callable[[], Iterable[Any]]  # returns objects with pyserial ListPortInfo's attributes (or PortInfo)


def system_lister() -> list[Any]:
    """The ports the operating system has (pyserial's ``list_ports.comports``)."""
    from serial.tools import list_ports

    return list(list_ports.comports())


# What is there -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortInfo:
    """One serial port and what identifies it (USB ids and serial number for a USB adapter)."""

    device: str
    kind: Literal["usb", "platform", "pty"]
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    description: str = ""
    hwid: str = ""
    location: str | None = None  # USB bus path (1-1.2:1.0): tells apart the ports of one dual adapter

    def __post_init__(self) -> None:
        if not self.device:
            raise ValueError("PortInfo.device is empty")
        if self.kind not in KINDS:
            raise ValueError(f"PortInfo.kind={self.kind!r}; allowed: {', '.join(KINDS)}")
        for name in ("vid", "pid"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 0xFFFF:
                raise ValueError(f"PortInfo.{name}={value!r}; allowed: 0..0xffff")
        if (self.kind == "usb") != (self.vid is not None and self.pid is not None):
            raise ValueError(f"PortInfo.kind={self.kind!r} with vid={self.vid!r}, pid={self.pid!r}: a usb port "
                             "has both ids, another kind neither")

    @classmethod
    def of(cls, port: Any) -> PortInfo:
        """From one entry of pyserial's ``comports()`` (a PortInfo is returned as it is)."""
        if isinstance(port, PortInfo):
            return port
        vid, pid = getattr(port, "vid", None), getattr(port, "pid", None)
        usb = vid is not None and pid is not None

        def text(name: str) -> str | None:
            value = getattr(port, name, None)
            return None if value in (None, "", "n/a") else str(value)

        return cls(device=str(port.device), kind="usb" if usb else "platform", vid=vid if usb else None,
                   pid=pid if usb else None, serial_number=text("serial_number"),
                   manufacturer=text("manufacturer"), product=text("product"),
                   description=text("description") or "", hwid=text("hwid") or "", location=text("location"))

    @property
    def usb_id(self) -> str | None:
        return None if self.vid is None or self.pid is None else f"{self.vid:04x}:{self.pid:04x}"

    @property
    def spec(self) -> str:
        """What to pass as ``--port`` to get this port back, even under another name after a reset."""
        if self.usb_id is None:
            return self.device
        serial = self.serial_number
        return f"usb:{self.usb_id}" + (f":{serial}" if serial and _SERIAL.fullmatch(serial) else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"usb_id": self.usb_id, "spec": self.spec}

    def summary(self) -> str:
        """One line for an error message: ``0403:6001 A50285BI FT232R USB UART (/dev/ttyUSB0)``."""
        parts = [self.usb_id or self.kind, self.serial_number or "(no serial number)", self.description]
        where = self.device + (f" at {self.location}" if self.location else "")
        return " ".join(p for p in parts if p) + f" ({where})"


def list_ports(lister: Lister = system_lister, extra: Iterable[PortInfo] = ()) -> list[PortInfo]:
    """The system's ports (USB adapters first, then the machine's UARTs), then ``extra`` (edgelm's
    pseudo-terminal links, which pyserial does not list), each device once."""
    found = sorted((PortInfo.of(p) for p in lister()), key=lambda p: (KINDS.index(p.kind), p.device))
    seen = {p.device for p in found}
    for p in extra:
        if p.device not in seen:
            found.append(p)
            seen.add(p.device)
    return found


def edgelm_link(device: str, target: str, board: str) -> PortInfo | None:
    """The host end of a runner's link that ``edgelm flash`` left running, if it is still a live
    pseudo-terminal (a link whose socat has gone points nowhere, or at a pty given to another program)."""
    try:
        real = os.path.realpath(device)
        is_pty = real.startswith("/dev/pts/") and stat.S_ISCHR(os.stat(real).st_mode)
    except (OSError, ValueError):
        return None
    if not is_pty:
        return None
    return PortInfo(device=device, kind="pty", description=f"edgelm link to {target}:{board} runner",
                    hwid=f"pty {real}")


# What --port means -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortSpec:
    """A parsed ``--port``: a device path, a pyserial URL, or a USB adapter by identity."""

    kind: Literal["path", "url", "usb"]
    text: str  # the path or URL as given; for usb the canonical usb:vvvv:pppp[:SERIAL]
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None

    def __str__(self) -> str:
        return self.text


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def parse_port_spec(text: str) -> PortSpec:
    """Read ``--port`` text, or refuse it in one line naming the allowed forms.

    A path is an absolute path, or a relative one that exists; whether an absolute path exists is
    checked when it is opened (a port may be missing for a moment while an adapter re-enumerates,
    and a reopen waits for it). No path or command is ever built from the text.
    """
    if not text or len(text) > MAX_SPEC_CHARS or any(unicodedata.category(ch)[0] == "C" for ch in text):
        raise UsageError(f"not a serial port: {_shown(text)}; give {FORMS}")
    if text[:4].lower() == "usb:":
        return _parse_usb(text)
    if "://" in text:
        return _parse_url(text)
    if text.startswith("/") or os.path.lexists(text):
        return PortSpec("path", text)
    hint = f"did you mean /dev/{text}? See `edgelm ports`" if re.fullmatch(r"tty[A-Za-z0-9_.-]+", text) \
        else "see `edgelm ports` for the ports here"
    raise UsageError(f"not a serial port: {_shown(text)}; give {FORMS}", hint=hint)


def _parse_usb(text: str) -> PortSpec:
    parts = text[4:].split(":", 2)
    vid, pid = (parts + ["", ""])[:2]
    serial = parts[2] if len(parts) == 3 else None
    if not (_HEX4.fullmatch(vid) and _HEX4.fullmatch(pid)) or (serial is not None and not _SERIAL.fullmatch(serial)):
        raise UsageError(f"not a USB port spec: {_shown(text)}; give usb:VID:PID or usb:VID:PID:SERIAL, VID and "
                         "PID 4 hex digits each (e.g. usb:0403:6001), SERIAL letters, digits and . _ - :",
                         hint="`edgelm ports` shows each adapter's spec")
    v, p = int(vid, 16), int(pid, 16)
    canonical = f"usb:{v:04x}:{p:04x}" + (f":{serial}" if serial is not None else "")
    return PortSpec("usb", canonical, vid=v, pid=p, serial_number=serial)


def _parse_url(text: str) -> PortSpec:
    scheme = text.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        raise UsageError(f"unsupported serial URL {_shown(text)}; edgelm opens rfc2217://HOST:PORT, "
                         "socket://HOST:PORT and loop://")
    if scheme == "loop":
        ok = _LOOP_URL.fullmatch(text) is not None
    else:
        m = _HOSTPORT_URL.fullmatch(text)
        ok = m is not None and 1 <= int(m["port"]) <= 65535
    if not ok:
        raise UsageError(f"malformed serial URL {_shown(text)}; give {scheme}://HOST:PORT with PORT in 1..65535"
                         if scheme != "loop" else f"malformed serial URL {_shown(text)}; give loop://")
    return PortSpec("url", text)


def resolve(spec: PortSpec | str, lister: Lister = system_lister) -> str:
    """The device path or URL to open for ``spec``: a ``usb:`` spec is matched against the ports
    there now (one must match), a path or URL is itself."""
    spec = parse_port_spec(spec) if isinstance(spec, str) else spec
    if spec.kind != "usb":
        return spec.text
    usb = [p for p in list_ports(lister) if p.kind == "usb"]
    matches = [p for p in usb if p.vid == spec.vid and p.pid == spec.pid
               and (spec.serial_number is None
                    or (p.serial_number or "").casefold() == spec.serial_number.casefold())]
    if len(matches) == 1:
        return matches[0].device
    if not matches:
        there = "; ".join(p.summary() for p in usb) or "none"
        raise DeviceError(f"no USB serial port matches {spec.text}; USB serial ports here: {there}",
                          hint="plug the adapter in (or wait for it after a reset); `edgelm ports` lists them")
    listed = "; ".join(p.summary() for p in matches)
    serials = [p.serial_number for p in matches if p.serial_number and _SERIAL.fullmatch(p.serial_number)]
    if spec.serial_number is None and len(set(serials)) == len(matches):
        hint = f"add the serial number, e.g. --port {matches[0].spec}"
    else:
        hint = "these share a serial number (one adapter with several ports): pass the device path"
    raise DeviceError(f"{len(matches)} USB serial ports match {spec.text}: {listed}", hint=hint)


# Opening -------------------------------------------------------------------------------------------


def open_port(spec: PortSpec | str, baud: int, lister: Lister = system_lister) -> Transport:
    """Resolve ``spec`` now (a ``usb:`` adapter under whatever name it has now) and open it."""
    from toolchain.link.transport import SerialTransport

    spec = parse_port_spec(spec) if isinstance(spec, str) else spec
    transport = SerialTransport(resolve(spec, lister), baud)
    if spec.kind == "usb":
        transport.name = f"{transport.name} ({spec.text})"
    return transport


def opener(text: str, baud: int, lister: Lister = system_lister) -> Callable[[], Transport]:
    """Parse ``text`` now (a bad spec fails here, once) and return what opens it, resolved afresh on
    every call: the ``reopen`` a session needs to follow an adapter that re-enumerated."""
    spec = parse_port_spec(text)
    return lambda: open_port(spec, baud, lister)


# Permission ----------------------------------------------------------------------------------------


def permission_error(device: str, *, group: str | None, user: str, member: bool, in_session: bool,
                     mode: int | None = None) -> DeviceError:
    """The one line for a port we may not open (pure): which group owns it and what to do.

    ``member``: the user is in ``group`` by the group database; ``in_session``: this process has it
    (a user added to a group has it only after logging in again)."""
    head = f"cannot open {device}: permission denied"
    if group is None:
        return DeviceError(head, hint=f"check its owner and mode (ls -l {device})")
    if group == "root":
        return DeviceError(f"{head}; it belongs to group root",
                           hint="give it a group you are in with a udev rule (e.g. GROUP=\"dialout\"), or run as root")
    if in_session:
        shown = f" (mode {stat.filemode(mode)})" if mode is not None else ""
        return DeviceError(f"{head}; it belongs to group {group}, which {user} is in, but the group may not read "
                           f"and write it{shown}", hint=f"check its permissions (ls -l {device}) and udev rules")
    if member:
        return DeviceError(f"{head}; it belongs to group {group}, which {user} joined after this login",
                           hint=f"log out and in again (or run `newgrp {group}`)")
    return DeviceError(f"{head}; it belongs to group {group}, which {user} is not in",
                       hint=f"sudo usermod -aG {group} $USER, then log in again")


def permission_denied(device: str) -> DeviceError:
    """:func:`permission_error` with the facts of this machine: the device's group, our user and groups."""
    import grp
    import pwd

    try:
        st = os.stat(device)
    except OSError:
        return permission_error(device, group=None, user="", member=False, in_session=False)
    try:
        group: str | None = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = None
    uid = os.geteuid()
    try:
        entry = pwd.getpwuid(uid)
        user, primary = entry.pw_name, entry.pw_gid
    except KeyError:
        user, primary = str(uid), -1
    member = st.st_gid == primary or (group is not None and user in grp.getgrgid(st.st_gid).gr_mem)
    in_session = st.st_gid in os.getgroups() or st.st_gid == os.getegid()
    return permission_error(device, group=group, user=user, member=member, in_session=in_session,
                            mode=st.st_mode)


def is_permission(errno_value: int | None) -> bool:
    return errno_value in (errno.EACCES, errno.EPERM)
