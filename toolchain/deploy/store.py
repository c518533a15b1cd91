"""A release store in a folder this machine can write: the state folder of a local or emulated
board, or the root filesystem of an SD card mounted here (``dir:``).

    ROOT/releases/<id>/   one folder per verified bundle, <id> computed from the file hashes
    ROOT/current          -> releases/<id>, switched atomically (a relative link: valid on the board too)
    ROOT/previous         -> the release current before that (``flash --rollback``)
    ROOT/trusted_keys/    the public keys the board accepts bundle signatures from (``edgelm trust``)
    ROOT/security_counter the highest security counter of a signed release the board confirmed

A bundle is copied into ``releases/.incoming-<id>``, verified there (signature when keys are
trusted, the exact file list, every hash), then renamed into place; ``current`` is switched only
after that, so a refused or failed deploy leaves the previous release current. Before the rename
that switches ``current``, every file of the release, its folder and ``releases/`` are fsynced,
and the folder holding the link after it: a power cut cannot bring back a current release whose
files were never written (ext4 keeps a rename it may have ordered before the data).

Trust is the board's, not this machine's: the keys and the counter live in the store itself (the
state folder of a local or emulated board, the card), so every host, ``--workdir`` and mount path
sees the same. Public keys in ``trusted_keys/`` make the store accept only bundles signed by one of
them, and then only with a security counter not below ``security_counter`` (MCUboot's anti-rollback:
the counter moves up when a release with a higher one is confirmed, :meth:`LocalStore.confirm`; a
rollback to a release below it is refused too).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.boards import Board
from toolchain.bundle import signing
from toolchain.bundle.package import (
    BUNDLE_FILE,
    SIGNATURE_FILE,
    Bundle,
    parse_info,
    read_bundle,
    read_info_bytes,
    security_counter,
    verify_bundle,
    verify_signature,
)
from toolchain.deploy.base import Progress, Release, no_progress
from toolchain.errors import DeviceError, InputError, UsageError

log = logging.getLogger(__name__)

RELEASES = "releases"
CURRENT = "current"
PREVIOUS = "previous"
INCOMING_PREFIX = ".incoming-"
OLD_PREFIX = ".old-"
TRUST_DIR = "trusted_keys"
COUNTER_FILE = "security_counter"
MOVED_SUFFIX = ".moved-to-board"  # a host-side trust folder of an older edgelm, once its keys moved
KEY_FILE_MAX = 4096  # a PEM ed25519 public key is 113 bytes
_KEEP = object()  # restore/_switch: leave `previous` as it is


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    return shutil.disk_usage(_existing(path)).free


def _fs_of(path: Path) -> str:
    return f"the filesystem of {_existing(path)}"


def write_hint(exc: OSError) -> str | None:
    """What to do about a failed write, when the error says."""
    if exc.errno == errno.EROFS:
        return ("the file system is mounted read-only: remount it read-write (a card adapter's lock switch, or "
                "the kernel after an I/O error, makes it read-only)")
    return None


def _discard(path: Path) -> None:
    """Remove what a failed deploy left, if it can be: the error that stopped it is the one to report."""
    try:
        remove(path)
    except OSError as exc:
        log.info("could not remove %s (the next deploy does): %s", path, exc.strerror or exc)


def fsync_path(path: Path, folder: bool = False) -> None:
    """``path``'s data and metadata on stable storage (fsync). A folder whose file system cannot sync
    one (some FUSE or network mounts: EINVAL, ENOTSUP) is logged, not refused."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not folder or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
        log.info("cannot sync folder %s: %s", path, exc.strerror or exc)
    finally:
        os.close(fd)


def sync_release(folder: Path) -> None:
    """Every file of a release, its folder and the folder holding it, on stable storage: a power cut
    after ``current`` names it cannot leave it zero-filled (ext4 may keep a rename and lose data
    written just before it)."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.is_symlink():
            fsync_path(path)
    fsync_path(folder, folder=True)
    fsync_path(folder.parent, folder=True)


def switch_link(folder: Path, name: str, target: str | None) -> None:
    """Point ``folder/name`` at ``target`` (relative) in one rename: a reader sees the old or the new
    (None: remove it). The folder is synced after it: the switch survives a power cut."""
    if target is None:
        (folder / name).unlink(missing_ok=True)
    else:
        tmp = folder / f".{name}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(target)
        tmp.replace(folder / name)
    fsync_path(folder, folder=True)


@dataclass(frozen=True)
class TrustedKey:
    fingerprint: str  # sha256 of the raw public key, hex
    name: str  # its file in the board's trust folder
    key: signing.Ed25519PublicKey


@dataclass(frozen=True)
class TrustState:
    """What a board trusts: its keys (none: it takes unsigned bundles) and the highest security
    counter of a signed release it confirmed (0: none)."""

    keys: tuple[TrustedKey, ...]
    counter: int

    @property
    def public_keys(self) -> list[signing.Ed25519PublicKey]:
        return [k.key for k in self.keys]

    def listing(self) -> list[dict[str, str]]:
        return [{"fingerprint": k.fingerprint, "file": k.name} for k in self.keys]


def key_file_name(fingerprint: str) -> str:
    return f"{fingerprint[:16]}{signing.PUBLIC_SUFFIX}"


def parse_key(data: bytes, name: str, where: str) -> TrustedKey:
    """A trusted key file's bytes (read from the board: anything), checked."""
    key = signing.parse_public_key(data[:KEY_FILE_MAX], f"trusted key {name} on {where}")
    return TrustedKey(signing.fingerprint(key), name, key)


def parse_counter(text: str, where: str) -> int:
    """The board's recorded security counter (its file's text; "" or none: 0)."""
    text = text.strip()
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > 2**32 - 1:
        raise InputError(f"the security counter on {where} is {text[:20]!r}, which is not a number",
                         hint=f"write the counter it should hold into its {COUNTER_FILE} file, or remove the file "
                              "(then it accepts any counter again)")
    return int(text)


def check_trusted(root: Path, trust: TrustState, where: str) -> tuple[Bundle, bytes]:
    """The bundle at ``root`` from one read of bundle.json: signature (when keys are trusted), file
    list, every hash. Returns it and bundle.json's bytes."""
    data = read_info_bytes(root)
    if trust.keys:
        verify_signature(root, data, trust.public_keys, f"{where} (it trusts {len(trust.keys)} key(s))")
    bundle = Bundle(root, parse_info(data, str(root / BUNDLE_FILE)))
    verify_bundle(bundle)
    return bundle, data


def check_counter(info: dict[str, Any], trust: TrustState, what: str, where: str, *, current: bool = False) -> None:
    """Refuse ``what`` (a bundle, or a release to make current: ``current``) whose security counter
    is below the one the board accepted, when it trusts keys."""
    if not trust.keys:
        return
    counter = security_counter(info)
    if counter < trust.counter:
        done = "making it current again (a rollback) is refused" if current else "it is refused"
        raise signing.Refused(f"{what} has security counter {counter}, below the {trust.counter} {where} has "
                              f"accepted: {done} (anti-rollback)", "counter", trust.counter)


def migrate_legacy(legacy: Path, add: Callable[[bytes], str], where: str) -> int:
    """Move the keys an older edgelm kept for this target on this machine (``legacy``: the target's
    state folder's trusted_keys/) onto the board through ``add``; the folder is renamed once they
    are there (``.moved-to-board``). Returns how many moved."""
    if legacy.is_symlink() or not legacy.is_dir():
        return 0
    files = sorted(legacy.glob(f"*{signing.PUBLIC_SUFFIX}"))
    for path in files:
        try:
            add(path.read_bytes())
        except InputError as exc:
            raise InputError(f"{path}, a key an older edgelm trusted for {where}, cannot move onto the board: "
                             f"{exc.message}", hint=f"remove it (or the folder {legacy}) and trust the key again") \
                from None
    moved = legacy.with_name(legacy.name + MOVED_SUFFIX)
    remove(moved)
    legacy.rename(moved)
    if files:
        log.warning("%s: moved %d trusted key(s) from %s (where an older edgelm kept them) onto the board",
                    where, len(files), legacy)
    return len(files)


class TrustStore:
    """A board's trust kept in folders this machine writes (a state folder, a card): the public keys
    in ``folder`` (PEM files), the security counter in ``counter_file``. Neither may be a symbolic
    link (a card's link would point into this machine). ``legacy``: where an older edgelm kept this
    target's keys on this machine; they move onto the board the first time it is asked."""

    def __init__(self, folder: Path, counter_file: Path, where: str, legacy: Path | None = None):
        self.folder = folder
        self.counter_file = counter_file
        self.where = where
        self.legacy = legacy if legacy is not None and legacy != folder else None

    def _refuse_links(self) -> None:
        for path in (self.folder, self.counter_file):
            if path.is_symlink():
                raise DeviceError(f"{path} on {self.where} is a symbolic link; edgelm keeps the board's trust only "
                                  "in real files there", hint="remove the link (and trust the keys again)")

    def _write_failed(self, exc: OSError, what: str) -> DeviceError:
        return DeviceError(f"{what} on {self.where} failed: {exc.strerror or exc} ({exc.filename})",
                           hint=write_hint(exc))

    def _migrate(self) -> None:
        if self.legacy is not None:
            migrate_legacy(self.legacy, self.add, self.where)

    def state(self) -> TrustState:
        self._refuse_links()
        self._migrate()
        keys: list[TrustedKey] = []
        if self.folder.is_dir():
            for path in sorted(self.folder.glob(f"*{signing.PUBLIC_SUFFIX}")):
                if path.is_symlink() or not path.is_file():
                    raise DeviceError(f"trusted key {path} on {self.where} is not a regular file",
                                      hint="remove it (and trust the key again)")
                with open(path, "rb") as f:
                    keys.append(parse_key(f.read(KEY_FILE_MAX + 1), path.name, self.where))
        counter = 0
        if self.counter_file.is_file():
            counter = parse_counter(self.counter_file.read_text(errors="replace")[:64], self.where)
        return TrustState(tuple(keys), counter)

    def add(self, public_key_pem: bytes) -> str:
        self._refuse_links()
        key = signing.parse_public_key(public_key_pem, "the public key")
        fp = signing.fingerprint(key)
        path = self.folder / key_file_name(fp)
        tmp = self.folder / f".{path.name}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(signing.public_pem(key))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(path)
            fsync_path(self.folder, folder=True)
        except OSError as exc:
            _discard(tmp)
            raise self._write_failed(exc, "trusting a key") from None
        return fp

    def remove(self, key: TrustedKey) -> None:
        try:
            (self.folder / key.name).unlink(missing_ok=True)
            fsync_path(self.folder, folder=True)
        except OSError as exc:
            raise self._write_failed(exc, f"removing key {key.fingerprint[:16]}") from None

    def record(self, counter: int) -> None:
        """Write ``counter`` as the board's security counter (synced, in one rename)."""
        self._refuse_links()
        tmp = self.counter_file.with_name(f".{self.counter_file.name}.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(f"{counter}\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.counter_file)
            fsync_path(self.counter_file.parent, folder=True)
        except OSError as exc:
            _discard(tmp)
            raise self._write_failed(exc, "recording the security counter") from None


def source_bundle(bundle: Bundle, board: Board, trust: TrustState, where: str) -> tuple[Bundle, bytes, list[str]]:
    """Check ``bundle`` on this machine before anything is sent: board, signature, security counter,
    files, hashes. Returns the re-read bundle, bundle.json's bytes and the file names to copy."""
    if bundle.board != board.name:
        raise UsageError(f"bundle {bundle.root} was built for {bundle.board}, not {board.name}")
    source, data = check_trusted(bundle.root, trust, where)  # refusals happen here, before any write
    check_counter(source.info, trust, f"bundle {bundle.root}", where)
    if source.files != bundle.files or source.board != bundle.board:
        raise InputError(f"bundle {bundle.root} changed after it was read", hint="flash it again")
    names = [*source.files, BUNDLE_FILE, *([SIGNATURE_FILE] if (source.root / SIGNATURE_FILE).exists() else [])]
    return source, data, names


class LocalStore:
    """Releases in ``root`` on this machine's filesystem (see the module's docstring). ``legacy_trust``:
    where an older edgelm kept this target's trusted keys on this machine (they move into ``root``)."""

    def __init__(self, root: Path, board: Board, where: str, legacy_trust: Path | None = None):
        self.root = root
        self.board = board
        self.where = where
        self.trust_store = TrustStore(root / TRUST_DIR, root / COUNTER_FILE, where, legacy_trust)

    # trust ------------------------------------------------------------------------------------------

    def trust_state(self) -> TrustState:
        return self.trust_store.state()

    def trust(self, public_key_pem: bytes) -> str:
        self.trust_store.state()  # a link refused, older keys moved in, before a key is added
        return self.trust_store.add(public_key_pem)

    def trusted(self) -> list[dict[str, str]]:
        return self.trust_state().listing()

    def untrust(self, fingerprint: str) -> None:
        for key in self.trust_state().keys:
            if key.fingerprint == fingerprint:
                self.trust_store.remove(key)

    def security_counter(self) -> int:
        return self.trust_state().counter

    def confirm(self, release: Release) -> int:
        """``release`` serves (its HELLO came, or it was made current on a card): a board that trusts
        keys records its security counter when it is higher than the one it holds. Returns the
        counter the board holds now."""
        trust = self.trust_state()
        if not trust.keys:
            return trust.counter
        counter = security_counter(read_bundle(Path(release.path)).info)
        if counter > trust.counter:
            self.trust_store.record(counter)
            log.info("%s: security counter is now %d (release %s)", self.where, counter, release.id)
            return counter
        return trust.counter

    # releases ---------------------------------------------------------------------------------------

    def _release(self, path: Path) -> Release:
        info = read_bundle(path).info
        return Release(path.name, str(path), self.board.name, info["model_sha256"])

    def _link(self, name: str) -> Release | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        try:
            path = link.resolve()
        except (OSError, RuntimeError):  # a loop of links
            path = link
        if path.parent != (self.root / RELEASES).resolve() or not path.is_dir():
            raise InputError(f"{link} points at {os.readlink(link)!r}, not a release in {self.root / RELEASES}")
        try:
            return self._release(path)
        except (InputError, OSError) as exc:  # still named, so a deploy can replace it; activate refuses it
            log.warning("%s release %s on %s is damaged: %s", name, path.name, self.where, exc)
            return Release(path.name, str(path), self.board.name, "")

    def current(self) -> Release | None:
        return self._link(CURRENT)

    def previous(self) -> Release | None:
        return self._link(PREVIOUS)

    def verify(self, release: Release, *, counter: bool = True) -> None:
        """See ReleaseStore.verify; ``counter``: also refuse a release below the board's security
        counter (not when putting back the release that was current: ``restore``)."""
        path = Path(release.path)
        if path.parent != (self.root / RELEASES).resolve() or path.name != release.id:
            raise UsageError(f"release {release.id} is not one of {self.where}'s")
        trust = self.trust_state()
        try:
            bundle, _ = check_trusted(path, trust, self.where)
        except OSError as exc:
            raise InputError(f"release {release.id} on {self.where} cannot be read: {exc.strerror or exc}") from None
        except InputError as exc:
            raise InputError(f"release {release.id} on {self.where} does not verify: {exc}") from None
        if bundle.release_id != release.id:
            raise InputError(f"release {release.id} on {self.where} now holds other files ({bundle.release_id})")
        if counter:
            check_counter(bundle.info, trust, f"release {release.id}", self.where, current=True)

    def activate(self, release: Release, *, verify: bool = True) -> None:
        if verify:
            self.verify(release)
        old = self.current()
        self._switch(release, old if old is not None and old.id != release.id else _KEEP)

    def restore(self, current: Release | None, previous: Release | None) -> None:
        if current is not None:
            self.verify(current, counter=False)
        self._switch(current, previous)

    def _switch(self, release: Release | None, previous: Release | None | object) -> None:
        """``current`` -> ``release`` (None: none), then ``previous`` -> ``previous`` (None: none;
        _KEEP: as it is); the release's files synced before, each link's folder after."""
        old = self.current()
        switched = False
        try:
            if release is not None:
                sync_release(Path(release.path))
            switch_link(self.root, CURRENT, f"{RELEASES}/{release.id}" if release is not None else None)
            switched = True
            if previous is not _KEEP:
                assert previous is None or isinstance(previous, Release)
                switch_link(self.root, PREVIOUS, f"{RELEASES}/{previous.id}" if previous is not None else None)
        except OSError as exc:
            name = release.id if release is not None else "no release"
            state = (f"{name} is current but not what was before it" if switched else
                     f"release {old.id} is still current" if old is not None else "nothing is current")
            raise DeviceError(f"switching {self.where} to {name} failed: {exc.strerror or exc} "
                              f"({exc.filename}); {state}", hint=write_hint(exc)) from None
        log.info("%s: current release is now %s", self.where, release.id if release is not None else "none")

    def clean(self) -> None:
        releases = self.root / RELEASES
        if not releases.is_dir():
            return
        for path in releases.iterdir():
            if path.name.startswith((INCOMING_PREFIX, OLD_PREFIX)):
                log.info("%s: removing %s, left by an upload that did not finish", self.where, path.name)
                _discard(path)

    def deploy(self, bundle: Bundle, *, activate: bool = True, progress: Progress = no_progress) -> Release:
        trust = self.trust_state()
        source, source_bytes, names = source_bundle(bundle, self.board, trust, self.where)
        release_id = source.release_id
        releases = self.root / RELEASES
        final = releases / release_id
        current = self.current()
        now = f"release {current.id} is still current" if current is not None else "nothing is deployed"
        if final.is_dir() and self._same(final, source_bytes, trust):
            release = self._release(final)
            if activate:
                self.activate(release)
            return release  # the same release is there already, and its copy verifies
        need = sum((source.root / n).lstat().st_size for n in names)
        free = free_bytes(releases)
        if need > free:
            raise DeviceError(f"deploy to {self.where} needs {need:,} bytes but {_fs_of(releases)} has {free:,} "
                              f"free; {now}", hint="free some space there")
        incoming = releases / f"{INCOMING_PREFIX}{release_id}"
        progress("upload", f"{need:,} bytes to {incoming}")
        try:
            remove(incoming)
            incoming.mkdir(parents=True)
            for name in names:  # the listed files only; a link is copied as a link and refused below
                shutil.copy2(source.root / name, incoming / name, follow_symlinks=False)
            arrived, _ = check_trusted(incoming, trust, self.where)  # what arrived is what was sent
            if arrived.files != source.files:
                raise InputError(f"the copy lists other files than {source.root}")
        except OSError as exc:
            _discard(incoming)
            if exc.errno == errno.ENOSPC:
                raise DeviceError(f"deploy to {self.where} ran out of space: it needs {need:,} bytes and "
                                  f"{_fs_of(releases)} has {free_bytes(releases):,} free; {now}",
                                  hint="free some space there") from None
            raise DeviceError(f"deploy to {self.where} failed: {exc.strerror or exc} "
                              f"({exc.filename or incoming}); {now}", hint=write_hint(exc)) from None
        except InputError as exc:
            _discard(incoming)
            raise DeviceError(f"deploy to {self.where} failed: the copy does not verify ({exc}); {now}") from None
        if final.exists() or final.is_symlink():  # an earlier copy of this release: replaced by the verified one
            old = releases / f"{OLD_PREFIX}{release_id}"
            remove(old)
            final.rename(old)
            incoming.rename(final)
            remove(old)
        else:
            incoming.rename(final)
        release = self._release(final)
        log.info("deployed %s to %s (hashes verified)", release_id, final)
        if activate:
            self.activate(release)
        return release

    def _same(self, deployed: Path, source_bytes: bytes, trust: TrustState) -> bool:
        """The deployed copy has the same bundle.json and still verifies."""
        try:
            _, data = check_trusted(deployed, trust, self.where)
        except (InputError, OSError) as exc:
            log.warning("deployed copy %s does not verify (%s); replacing it", deployed, exc)
            return False
        return data == source_bytes
