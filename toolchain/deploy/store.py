"""A release store in a folder this machine can write: the state folder of a local or emulated
board, or the root filesystem of an SD card mounted here (``dir:``).

    ROOT/releases/<id>/   one folder per verified bundle, <id> computed from the file hashes
    ROOT/current          -> releases/<id>, switched atomically (a relative link: valid on the board too)
    ROOT/previous         -> the release current before that (``flash --rollback``)

A bundle is copied into ``releases/.incoming-<id>``, verified there (signature when keys are
trusted, the exact file list, every hash), then renamed into place; ``current`` is switched only
after that, so a refused or failed deploy leaves the previous release current. Before the rename
that switches ``current``, every file of the release, its folder and ``releases/`` are fsynced,
and the folder holding the link after it: a power cut cannot bring back a current release whose
files were never written (ext4 keeps a rename it may have ordered before the data). Public keys in the
trust folder make the store accept only bundles signed by one of them.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from toolchain.boards import Board
from toolchain.bundle import signing
from toolchain.bundle.package import (
    BUNDLE_FILE,
    SIGNATURE_FILE,
    Bundle,
    parse_info,
    read_bundle,
    read_info_bytes,
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


def check_trusted(root: Path, trusted: list[signing.Ed25519PublicKey], where: str) -> tuple[Bundle, bytes]:
    """The bundle at ``root`` from one read of bundle.json: signature (when keys are trusted), file
    list, every hash. Returns it and bundle.json's bytes."""
    data = read_info_bytes(root)
    if trusted:
        verify_signature(root, data, trusted, f"{where} (it trusts {len(trusted)} key(s))")
    bundle = Bundle(root, parse_info(data, str(root / BUNDLE_FILE)))
    verify_bundle(bundle)
    return bundle, data


class TrustStore:
    """Public keys (PEM files) a target accepts bundle signatures from, in a folder on this machine."""

    def __init__(self, folder: Path):
        self.folder = folder

    def add(self, public_key_pem: bytes) -> str:
        key = signing.parse_public_key(public_key_pem, "the public key")
        fp = signing.fingerprint(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{fp[:16]}{signing.PUBLIC_SUFFIX}"
        tmp = self.folder / f".{path.name}.tmp"
        tmp.write_bytes(signing.public_pem(key))
        tmp.replace(path)
        return fp

    def keys(self) -> list[signing.Ed25519PublicKey]:
        if not self.folder.is_dir():
            return []
        return [signing.parse_public_key(p.read_bytes(), f"trusted key {p}")
                for p in sorted(self.folder.glob(f"*{signing.PUBLIC_SUFFIX}"))]


def source_bundle(bundle: Bundle, board: Board, trust: TrustStore, where: str) -> tuple[Bundle, bytes, list[str]]:
    """Check ``bundle`` on this machine before anything is sent: board, signature, files, hashes.
    Returns the re-read bundle, bundle.json's bytes and the file names to copy."""
    if bundle.board != board.name:
        raise UsageError(f"bundle {bundle.root} was built for {bundle.board}, not {board.name}")
    source, data = check_trusted(bundle.root, trust.keys(), where)  # refusals happen here, before any write
    if source.files != bundle.files or source.board != bundle.board:
        raise InputError(f"bundle {bundle.root} changed after it was read", hint="flash it again")
    names = [*source.files, BUNDLE_FILE, *([SIGNATURE_FILE] if (source.root / SIGNATURE_FILE).exists() else [])]
    return source, data, names


class LocalStore:
    """Releases in ``root`` on this machine's filesystem (see the module's docstring)."""

    def __init__(self, root: Path, board: Board, where: str, trust: TrustStore):
        self.root = root
        self.board = board
        self.where = where
        self.trust_store = trust

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

    def verify(self, release: Release) -> None:
        path = Path(release.path)
        if path.parent != (self.root / RELEASES).resolve() or path.name != release.id:
            raise UsageError(f"release {release.id} is not one of {self.where}'s")
        try:
            bundle, _ = check_trusted(path, self.trust_store.keys(), self.where)
        except OSError as exc:
            raise InputError(f"release {release.id} on {self.where} cannot be read: {exc.strerror or exc}") from None
        except InputError as exc:
            raise InputError(f"release {release.id} on {self.where} does not verify: {exc}") from None
        if bundle.release_id != release.id:
            raise InputError(f"release {release.id} on {self.where} now holds other files ({bundle.release_id})")

    def activate(self, release: Release, *, verify: bool = True) -> None:
        if verify:
            self.verify(release)
        old = self.current()
        self._switch(release, old if old is not None and old.id != release.id else _KEEP)

    def restore(self, current: Release | None, previous: Release | None) -> None:
        if current is not None:
            self.verify(current)
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

    def trust(self, public_key_pem: bytes) -> str:
        return self.trust_store.add(public_key_pem)

    def deploy(self, bundle: Bundle, *, activate: bool = True, progress: Progress = no_progress) -> Release:
        source, source_bytes, names = source_bundle(bundle, self.board, self.trust_store, self.where)
        release_id = source.release_id
        releases = self.root / RELEASES
        final = releases / release_id
        current = self.current()
        now = f"release {current.id} is still current" if current is not None else "nothing is deployed"
        if final.is_dir() and self._same(final, source_bytes):
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
            arrived, _ = check_trusted(incoming, self.trust_store.keys(), self.where)  # what arrived is what was sent
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

    def _same(self, deployed: Path, source_bytes: bytes) -> bool:
        """The deployed copy has the same bundle.json and still verifies."""
        try:
            _, data = check_trusted(deployed, self.trust_store.keys(), self.where)
        except (InputError, OSError) as exc:
            log.warning("deployed copy %s does not verify (%s); replacing it", deployed, exc)
            return False
        return data == source_bytes
