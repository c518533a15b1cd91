"""The systemd unit that serves a board's current release from boot (``edgelm flash --service``).

:func:`render_unit` fills ``firmware/edgelm-runner.service.in``: the runner of the ``current``
release on the board's serial device, as an unprivileged user (or ``DynamicUser=yes`` where no
user is known, as on an SD card written on a host) with the device's group, restarted on failure.
Every value is checked against a small character set before it goes in: unit files have their
own quoting and specifiers, so hostile text is refused, never quoted. :func:`install_commands`
says what an SSH target runs to install and start it (argv lists, to be quoted by the caller with
``shlex.join``); :func:`rootfs_files` what a ``dir:`` target writes into a card's root file system
(the unit and the ``multi-user.target.wants`` link that enables it). A board without systemd has
no unit: the caller says so and starts the runner in the background instead.

Pure: values in, text and data out; the template is the one file read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from toolchain.boards import Board
from toolchain.bundle import render
from toolchain.bundle.cross import RUNNER
from toolchain.errors import InputError
from toolchain.export.manifest import PROGRAM_FILE
from toolchain.paths import FIRMWARE_DIR

UNIT_NAME = "edgelm-runner.service"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
UNIT_PATH = UNIT_DIR / UNIT_NAME
WANTED_BY = "multi-user.target"
WANTS_DIR = UNIT_DIR / f"{WANTED_BY}.wants"
TEMPLATE = FIRMWARE_DIR / render.UNIT_TEMPLATE
SERVE_SCRIPT = "edgelm-serve"  # in the data folder: picks a release that verifies and runs its runner
SERVE_TEMPLATE = FIRMWARE_DIR / "edgelm-serve.sh"
RESUME_UNIT = "edgelm-runner-resume"  # the transient timer of a lease (lease_commands)
RESTART_SEC = 5
RUNNER_MAX_THREADS = 1024  # the runner's own --threads limit (firmware/runner.cpp)
MAX_PATH_CHARS = 1024
# Names as useradd/groupadd accept them by default (NAME_REGEX), at most 32 characters.
_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Absolute paths of plain components: no spaces, quotes, '%' (systemd specifiers), '\\' or ';'.
_PATH = re.compile(r"(/[A-Za-z0-9._][A-Za-z0-9._-]*)+")
REFUSED_USERS = {"root": "the runner must not run as root"}
REFUSED_GROUPS = {"root": "the root group would give the runner root's files",
                  "tty": "the tty group may write to every terminal; a device owned by tty has a login console on "
                         "it: free it first (its group is then dialout)"}
# A home folder a dynamic user cannot enter (Raspberry Pi OS makes /home/* mode 0700).
_HOME_PREFIXES = ("/home/", "/root/")
# Folders PrivateTmp=yes replaces with empty ones for the service.
_TMP_PREFIXES = ("/tmp/", "/var/tmp/")  # noqa: S108 - refused, not used


def render_unit(*, board: Board, release_dir: str | PurePosixPath, data_dir: str | PurePosixPath, device: str,
                user: str | None, group: str, threads: int | None = None, template: Path = TEMPLATE) -> str:
    """The unit file's text.

    ``release_dir``: the ``current`` link on the board (the runner and program are found in it);
    ``data_dir``: edgelm's folder on the board (the working directory); ``device``: the serial
    device; ``user``: who runs it, or None for ``DynamicUser=yes``; ``group``: the device's group
    (``SupplementaryGroups=``); ``threads``: the runner's threads (default: the board's).
    """
    release = _path("release_dir", release_dir)
    data = _path("data_dir", data_dir)
    dev = _path("device", device)
    if not dev.startswith("/dev/"):
        raise InputError(f"service: device={dev!r} is not under /dev", hint="give the board's serial device")
    for name, value in (("release_dir", release), ("data_dir", data)):
        if (value + "/").startswith(_TMP_PREFIXES):
            raise InputError(f"service: {name}={value!r} is in a temporary folder, which the unit's PrivateTmp= "
                             "hides from the runner", hint="keep edgelm's data under /opt, /var/lib or a home folder")
    if user is None:
        for name, value in (("release_dir", release), ("data_dir", data)):
            if (value + "/").startswith(_HOME_PREFIXES):
                raise InputError(f"service: {name}={value!r} is in a home folder, which the dynamic user of a "
                                 "unit without a user cannot enter",
                                 hint="name the user the runner runs as, or keep edgelm's data under /opt or /var/lib")
        identity = "DynamicUser=yes"
    else:
        identity = f"User={_name('user', user, REFUSED_USERS)}"
    threads = board.threads if threads is None else threads
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= RUNNER_MAX_THREADS:
        raise InputError(f"service: threads={threads!r} must be an integer in [1, {RUNNER_MAX_THREADS}]")
    values = {
        "BOARD": board.name, "DEVICE": dev, "IDENTITY": identity, "GROUP": _name("group", group, REFUSED_GROUPS),
        "DATA_DIR": data, "RELEASE_DIR": release, "RUNNER": RUNNER, "PROGRAM": PROGRAM_FILE,
        "BAUD": str(board.baud), "THREADS": str(threads), "RESTART_SEC": str(RESTART_SEC), "SERVE": SERVE_SCRIPT,
    }
    return render.substitute(template.read_text(), values, template.name)


def _path(name: str, value: str | PurePosixPath) -> str:
    text = str(value) if isinstance(value, PurePosixPath) else value
    if not isinstance(text, str) or len(text) > MAX_PATH_CHARS or not _PATH.fullmatch(text):
        raise InputError(f"service: {name}={str(value)[:80]!r} is not an absolute path of letters, digits, "
                         "'.', '_' and '-'", hint="unit files have their own quoting: use a plain path")
    if any(part in (".", "..") for part in text.split("/")):
        raise InputError(f"service: {name}={text[:80]!r} has a '.' or '..' component")
    return text


def _name(what: str, value: str, refused: dict[str, str]) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InputError(f"service: {what}={str(value)[:40]!r} is not a {what} name ([a-z_][a-z0-9_-]*, at most 32)")
    if value in refused:
        raise InputError(f"service: {what}={value!r} is refused: {refused[value]}")
    return value


# --------------------------------------------------------------------------------------------------
# Installing it
# --------------------------------------------------------------------------------------------------

def install_commands(staged_unit: str | PurePosixPath) -> tuple[tuple[str, ...], ...]:
    """What an SSH target runs, in order, once the unit's text is at ``staged_unit`` on the board.

    ``restart``, not ``enable --now``: a unit already running must pick up the new release.
    """
    staged = _path("staged_unit", staged_unit)
    return (("sudo", "-n", "install", "-m", "0644", staged, str(UNIT_PATH)),
            ("sudo", "-n", "systemctl", "daemon-reload"),
            ("sudo", "-n", "systemctl", "enable", UNIT_NAME),
            ("sudo", "-n", "systemctl", "restart", UNIT_NAME))


def lease_commands(seconds: float) -> tuple[tuple[str, ...], ...]:
    """A transient timer that starts the unit again ``seconds`` from now: the lease of a stop for a
    switch (``RunnerControl.stop(lease_s=...)``). Armed before the unit is stopped; if the
    controller dies before it starts the unit itself, the board does (a unit already running is
    left as it is). Cancelled by :func:`cancel_lease_commands`; a reboot ends it (the unit is enabled)."""
    return (("sudo", "-n", "systemd-run", "--quiet", f"--unit={RESUME_UNIT}", f"--on-active={max(1, int(seconds))}s",
             "--timer-property=AccuracySec=1s", "systemctl", "start", UNIT_NAME),)


def cancel_lease_commands() -> tuple[tuple[str, ...], ...]:
    """Cancel a lease (each may fail: there was none, or it fired and is gone)."""
    return (("sudo", "-n", "systemctl", "stop", f"{RESUME_UNIT}.timer"),
            ("sudo", "-n", "systemctl", "reset-failed", f"{RESUME_UNIT}.timer", f"{RESUME_UNIT}.service"))


def serve_script() -> str:
    """The unit's start script (:data:`SERVE_SCRIPT` in the data folder): the runner of the current
    release, or of the previous one when the current one's files do not match its bundle.json."""
    return SERVE_TEMPLATE.read_text()


def uninstall_commands() -> tuple[tuple[str, ...], ...]:
    return (("sudo", "-n", "systemctl", "disable", "--now", UNIT_NAME),
            ("sudo", "-n", "rm", "-f", str(UNIT_PATH)),
            ("sudo", "-n", "systemctl", "daemon-reload"))


@dataclass(frozen=True)
class RootfsEntry:
    """A file or a symbolic link to write into a card's root file system."""

    path: PurePosixPath  # relative to the root file system
    text: str | None = None  # a regular file's content
    link: str | None = None  # a symbolic link's target
    mode: int = 0o644

    def __post_init__(self) -> None:
        if self.path.is_absolute() or ".." in self.path.parts or not self.path.parts:
            raise ValueError(f"rootfs entry {self.path}: must be a relative path inside the root file system")
        if (self.text is None) == (self.link is None):
            raise ValueError(f"rootfs entry {self.path}: give exactly one of text and link")


def rootfs_files(unit_text: str, data_dir: str | PurePosixPath) -> tuple[RootfsEntry, ...]:
    """The unit's start script in ``data_dir`` (the board's path), the unit and its enabling link
    (what ``systemctl enable`` makes), relative to a card's root, in that order: the script is
    there before a unit names it."""
    data = PurePosixPath(_path("data_dir", data_dir))
    rel = PurePosixPath(*UNIT_DIR.parts[1:])
    return (RootfsEntry(PurePosixPath(*data.parts[1:]) / SERVE_SCRIPT, text=serve_script(), mode=0o755),
            RootfsEntry(rel / UNIT_NAME, text=unit_text),
            RootfsEntry(PurePosixPath(*WANTS_DIR.parts[1:]) / UNIT_NAME, link=str(UNIT_PATH)))
