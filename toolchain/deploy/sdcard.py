"""A board's root filesystem mounted here: ``dir:PATH`` (an SD card in a reader, an image mounted
with a loop device), written for the board's next boot.

    PATH/opt/edgelm/<board>/releases/<id>/   the same verified release layout as on a running board
    PATH/opt/edgelm/<board>/current          -> releases/<id>  (relative: valid when the card boots)
    PATH/opt/edgelm/<board>/trusted_keys/    the keys it accepts signatures from, and its security_counter:
                                             the card's own, whatever path it is mounted at and whoever flashes it
    PATH/etc/systemd/system/edgelm-runner.service  + its multi-user.target.wants link (enabled)
    BOOT/config.txt, BOOT/cmdline.txt        the runner's UART on, no console on it: the profile's [[uarts]]
                                             (Raspberry Pi OS; a Pi 5's GPIO header: dtparam=uart0=on)

The card stores releases but runs nothing (no runner control, no link): the board starts the runner
at boot. Nothing is made current until the release verifies on the card and the unit and the boot
settings are written; every write is a temporary file renamed into place, and no path is followed
through a link on the card (the card's own absolute links point into the card, not this machine).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from toolchain.boards import Board
from toolchain.deploy import bootfs, service
from toolchain.deploy.base import Release, Target, TargetOptions
from toolchain.deploy.store import INCOMING_PREFIX, RELEASES, TRUST_DIR, LocalStore, fsync_path, write_hint
from toolchain.errors import DeviceError, UsageError

PREFIX = "dir:"
RELEASE_ROOT = PurePosixPath("/opt/edgelm")  # on the board; DynamicUser can read it, unlike a 0700 /home
SERIAL_GROUP = "dialout"  # owns a Raspberry Pi's UART once no console holds it


def _card_root(text: str) -> Path:
    raw = text[len(PREFIX):]
    if not raw or "\0" in raw:
        raise UsageError(f"bad target {text!r}: give the mounted root filesystem, e.g. dir:/media/$USER/rootfs")
    try:
        root = Path(raw).expanduser()
    except RuntimeError:  # ~user of no user
        raise UsageError(f"bad target {text!r}: no home folder for {raw.split('/')[0]!r}") from None
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder", hint="mount the card's root filesystem and give its mount point")
    resolved = root.resolve()
    if resolved == Path("/"):
        raise UsageError("dir:/ is this machine's own root filesystem, not a card",
                         hint="give the card's mount point, e.g. dir:/media/$USER/rootfs")
    return resolved


def _no_links_inside(root: Path, rel: PurePosixPath) -> Path:
    """``root/rel`` after checking that no existing folder on the way below ``root`` is a symbolic
    link (the last component may be one: it is replaced by a rename, never followed)."""
    path = root
    for i, part in enumerate(rel.parts):
        if part in ("", ".", ".."):
            raise UsageError(f"bad path {rel} on the card")
        path = path / part
        if i < len(rel.parts) - 1 and path.is_symlink():
            raise DeviceError(f"{path} on the card is a symbolic link; edgelm writes only into real folders there",
                              hint="remove the link on the card, or check that PATH is the card's root filesystem")
    return path


def _write_atomic(path: Path, text: str | None, link: str | None, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.edgelm-tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if link is not None:
        tmp.symlink_to(link)
    else:
        assert text is not None
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(mode)
    tmp.replace(path)
    fsync_path(path.parent, folder=True)  # the rename too survives the card being pulled


class CardStore(LocalStore):
    """A LocalStore on the card that also writes the unit and the boot settings before a switch."""

    def __init__(self, card: Path, board: Board, where: str, boot: Path | None, device: str,
                 legacy_trust: Path | None = None):
        self.card = card
        self.boot = boot
        self.device = device
        rel = PurePosixPath(*RELEASE_ROOT.parts[1:]) / board.name
        _no_links_inside(card, rel / RELEASES / INCOMING_PREFIX)  # the store and its releases/ are real folders
        super().__init__(card.joinpath(*rel.parts), board, where, legacy_trust)
        self.notes: list[str] = []

    def on_board(self, path: Path) -> PurePosixPath:
        return PurePosixPath("/") / path.relative_to(self.card).as_posix()

    def prepare(self) -> None:
        """Write the boot settings, then the unit (enabled); each file atomically; refuse links. In
        that order: a failure in between leaves a freed UART and no unit, which is harmless, never an
        enabled unit whose runner is not there."""
        data = self.on_board(self.root)
        unit = service.render_unit(board=self.board, release_dir=data / "current", data_dir=data, device=self.device,
                                   user=None, group=SERIAL_GROUP)  # a refusal here, before anything is written
        if self.boot is not None:
            self.notes += _free_uart(self.boot, self.board, self.device)
        for entry in service.rootfs_files(unit, data):
            _write_atomic(_no_links_inside(self.card, entry.path), entry.text, entry.link, entry.mode)
        self.notes.append(f"enabled {service.UNIT_NAME} on the card: the board serves on {self.device} from boot")

    def activate(self, release: Release, *, verify: bool = True) -> None:
        if verify:
            self.verify(release)
        try:
            self.prepare()  # the unit and the boot settings first: `current` switches last
        except OSError as exc:
            raise DeviceError(f"writing the service unit to {self.where} failed: {exc.strerror or exc} "
                              f"({exc.filename}); {release.id} was not made current", hint=write_hint(exc)) from None
        super().activate(release, verify=False)


def _free_uart(boot: Path, board: Board, device: str) -> list[str]:
    """Give the runner its port on a Raspberry Pi OS card, as the board's profile says; the notes."""
    uart = board.uart_for(device)
    if uart is None:
        return [f"{boot}: left as it is: {device} is not one of the {board.name} profile's UARTs "
                f"({', '.join(u.device for u in board.uarts) or 'it lists none'}), so the card needs nothing for it"]
    changed = bootfs.apply(boot, uart)
    wants = ", ".join(uart.config) or "no config.txt line"
    notes = changed or [f"{boot}: {device} was already the runner's ({wants}; no console on it)"]
    notes.append(f"the runner serves on {device}: {uart.where}")
    if uart.note:
        notes.append(uart.note)
    return notes


def create(text: str, board: Board, state_dir: Path, options: TargetOptions) -> Target:
    card = _card_root(text)
    if options.port is not None or options.ssh_config is not None or options.accept_new_host_key:
        raise UsageError("a dir: target is a card on this machine: --port, --ssh-config and --accept-new-host-key "
                         "do not apply")
    boot: Path | None
    if options.boot is not None or bootfs.is_pi_os_root(card):
        boot = bootfs.find_boot(card, options.boot)
    else:
        boot = None  # not Raspberry Pi OS (a Jetson's card): no config.txt to edit
    spec = f"{PREFIX}{card}"
    where = f"{spec}:{board.name}"
    state = state_dir / ("dir-" + str(card).strip("/").replace("/", "_") + f"-{board.name}")
    store = CardStore(card, board, where, boot, options.board_port or board.serial_device,
                      legacy_trust=state / TRUST_DIR)  # where an older edgelm kept the card's keys
    from toolchain.deploy.local import profile_fit

    target = Target(kind="dir", spec=spec, board=board, state=state, store=store,
                    preflight=lambda bundle: profile_fit(board, bundle))
    target.notes = store.notes
    return target
