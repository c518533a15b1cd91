"""Assemble, seal, sign, read and verify a bundle.

A bundle is everything the board needs and nothing else: the runner, the runtime libraries it
links, the program and its manifest, and ``bundle.json`` with the sha256 of every file (and,
when signed, ``bundle.sig``: an ed25519 signature over the exact bytes of ``bundle.json``).
Before a bundle is declared good, the highest GLIBC symbol version its binaries need is checked
against the board's glibc. A bundle is read back only if ``bundle.json`` lists exactly the
required files by plain name and the folder holds nothing else; its release id is computed from
the file hashes, never taken from text in ``bundle.json``.

A signed bundle carries a ``security_counter`` in ``bundle.json`` (MCUboot's anti-rollback counter:
a whole number, 0 unless ``--security-counter`` says otherwise), so the signature covers it. A
board that trusts keys refuses a bundle whose counter is below the highest one it accepted. The
counter is not part of the release id: the same files re-signed with a higher counter are the same
release.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.boards import Board
from toolchain.bundle import signing
from toolchain.bundle.cross import RUNNER, required_glibc
from toolchain.bundle.sdk import RUNTIME_LIBS, Sdk
from toolchain.errors import BuildError, CapacityError, InputError
from toolchain.export import manifest as pte_manifest

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "edgelm-bundle/1"
BUNDLE_FILE = "bundle.json"
SIGNATURE_FILE = "bundle.sig"
# Exactly what bundle.json lists, by plain name; the folder may also hold bundle.json and bundle.sig.
REQUIRED_FILES = (RUNNER, *RUNTIME_LIBS, pte_manifest.PROGRAM_FILE, pte_manifest.MANIFEST_FILE)
RELEASE_PREFIX = "r-"
RELEASE_HEX = 16
BUNDLE_JSON_MAX_BYTES = 1 << 20
SECURITY_COUNTER = "security_counter"
MAX_SECURITY_COUNTER = 2**32 - 1  # MCUboot's is a 32-bit TLV


@dataclass(frozen=True)
class Bundle:
    root: Path
    info: dict[str, Any]

    @property
    def board(self) -> str:
        return self.info["board"]

    @property
    def files(self) -> dict[str, str]:
        return self.info["files"]

    @property
    def release_id(self) -> str:
        return release_id(self.files)


def release_id(files: dict[str, str]) -> str:
    """``r-`` + 16 hex of the sha256 of the canonical file -> sha256 map: same files, same id.

    Computed by edgelm from hashes alone, so an id is always a plain folder name.
    """
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return RELEASE_PREFIX + hashlib.sha256(canonical).hexdigest()[:RELEASE_HEX]


def check_security_counter(value: Any, what: str = "--security-counter") -> int:
    """``value`` as a security counter (a whole number in 0..2**32-1), or UsageError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SECURITY_COUNTER:
        from toolchain.errors import UsageError

        raise UsageError(f"{what} {str(value)[:20]}: a security counter is a whole number from 0 to "
                         f"{MAX_SECURITY_COUNTER}")
    return value


def security_counter(info: dict[str, Any]) -> int:
    """The bundle's security counter (0 when it has none); parse_info checked it."""
    return int(info.get(SECURITY_COUNTER, 0))


def assemble(board: Board, runner: Path, sdk: Sdk, pte: Path, dest: Path, firmware_version: str,
             manifest: dict[str, Any] | None = None,
             sign_key: signing.Ed25519PrivateKey | None = None, counter: int | None = None) -> Bundle:
    """Copy runner + libs + program into ``dest`` (replaced), check glibc, write bundle.json.

    ``manifest``: the program's manifest if the caller has already read (and so verified) it; it is
    written into the bundle from that verified value, not copied again from beside the program.
    ``sign_key``: sign bundle.json (``bundle.sig``), with ``counter`` (default 0) as its security counter.
    """
    if manifest is None:
        manifest = pte_manifest.read(pte)  # refuses a non-program or a hash mismatch
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(runner, dest / RUNNER)
    for lib in sdk.libs:
        shutil.copy2(lib, dest / lib.name)
    shutil.copy2(pte, dest / pte_manifest.PROGRAM_FILE)
    (dest / pte_manifest.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    needs: dict[str, str] = {}
    for binary in [dest / RUNNER, *(dest / lib.name for lib in sdk.libs)]:
        major, minor = required_glibc(binary, board)
        needs[binary.name] = f"{major}.{minor}"
        if (major, minor) > board.glibc_tuple:
            raise CapacityError(f"{binary.name} needs GLIBC_{major}.{minor} but {board.name} has glibc {board.glibc}",
                                hint="`edgelm build` links the runner for an older glibc (zig cc); the runtime "
                                     "libraries need the glibc they were built for")
    highest = max(needs.values(), key=lambda v: tuple(int(x) for x in v.split(".")))
    files = {name: pte_manifest.sha256_file(dest / name) for name in REQUIRED_FILES}
    if files[pte_manifest.PROGRAM_FILE] != manifest["program"]["sha256"]:
        raise BuildError(f"{pte} changed while the bundle was assembled (its sha256 no longer matches the manifest)")
    info = {
        "format": BUNDLE_FORMAT,
        "board": board.name,
        "arch": board.arch,
        "firmware_version": firmware_version,
        "executorch_version": sdk.version,
        "model_sha256": manifest["program"]["sha256"],
        "max_seq_len": manifest["program"]["max_seq_len"],
        "glibc_required": highest,
        "glibc_board": board.glibc,
        "glibc_by_file": needs,
        "files": files,
        "size_bytes": sum((dest / name).stat().st_size for name in REQUIRED_FILES),
    }
    if sign_key is not None:
        info[SECURITY_COUNTER] = check_security_counter(counter or 0)
    data = (json.dumps(info, indent=2) + "\n").encode()
    (dest / BUNDLE_FILE).write_bytes(data)
    if sign_key is not None:
        _write_signature(dest, data, sign_key)
    log.info("bundle %s: %d files, needs glibc %s (board has %s)", dest, len(files), highest, board.glibc)
    return Bundle(dest, info)


def sign_bundle(bundle: Bundle, key: signing.Ed25519PrivateKey, security_counter: int | None = None) -> str:
    """Write ``bundle.sig`` over the bundle's bundle.json; returns the key's fingerprint.

    The bundle is checked first (read_bundle + verify_bundle): only what verifies gets signed.
    ``security_counter``: written into bundle.json first (the signature covers it); None: the one
    bundle.json has, else 0. Read the bundle again afterwards: its bundle.json may have changed.
    """
    data = read_info_bytes(bundle.root)
    info = parse_info(data, str(bundle.root / BUNDLE_FILE))
    verify_bundle(Bundle(bundle.root, info))
    counter = check_security_counter(security_counter if security_counter is not None
                                     else info.get(SECURITY_COUNTER, 0))
    if info.get(SECURITY_COUNTER) != counter:
        info[SECURITY_COUNTER] = counter
        data = (json.dumps(info, indent=2) + "\n").encode()
        _write_atomic(bundle.root, BUNDLE_FILE, data)
    _write_signature(bundle.root, data, key)
    return signing.fingerprint(key.public_key())


def _write_signature(root: Path, data: bytes, key: signing.Ed25519PrivateKey) -> None:
    _write_atomic(root, SIGNATURE_FILE, signing.sign(data, key))


def _write_atomic(root: Path, name: str, data: bytes) -> None:
    path = root / name
    tmp = root.parent / f".{root.name}.{name}.tmp"  # not inside: the bundle holds nothing else
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def read_info_bytes(root: Path) -> bytes:
    """The bytes of ``root/bundle.json`` (a regular file, not a link), read once."""
    path = root / BUNDLE_FILE
    if not root.is_dir():
        raise InputError(f"{root} is not a bundle folder" + (" (it does not exist)" if not root.exists() else ""),
                         hint="give the bundle folder `edgelm build` wrote (<out>/bundle)")
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; a bundle holds regular files only")
    if not path.exists():
        raise InputError(f"{root} is not an edgelm bundle (no {BUNDLE_FILE})", hint="run `edgelm build` first")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file")
    if path.stat().st_size > BUNDLE_JSON_MAX_BYTES:
        raise InputError(f"{path} is {path.stat().st_size} bytes, too large for a {BUNDLE_FILE}")
    return path.read_bytes()


def parse_info(data: bytes, name: str) -> dict[str, Any]:
    """bundle.json's content, checked: an object listing exactly the required files by plain name."""
    try:
        info = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{name} is not valid JSON ({str(exc).splitlines()[0][:80]})",
                         hint="rebuild the bundle with `edgelm build`") from None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{name} is not an edgelm bundle description (format {BUNDLE_FORMAT})",
                         hint="rebuild the bundle with `edgelm build`")
    if not isinstance(info.get("board"), str):
        raise InputError(f"{name} names no board")
    files = info.get("files")
    if not isinstance(files, dict):
        raise InputError(f"{name} has no 'files' object (file name -> sha256)")
    for fname, digest in files.items():
        if not _plain_name(fname):
            raise InputError(f"{name} lists {fname[:80]!r}: bundle files are plain names inside the bundle")
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
            raise InputError(f"{name}: the sha256 of {fname} is {repr(digest)[:70]}, not 64 hex digits")
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise InputError(f"{name} does not list {missing[0]} (a bundle holds exactly: {', '.join(REQUIRED_FILES)})")
    extra = sorted(set(files) - set(REQUIRED_FILES))
    if extra:
        raise InputError(f"{name} lists {extra[0][:80]!r}, which is not part of a bundle "
                         f"(exactly: {', '.join(REQUIRED_FILES)})")
    if info.setdefault("model_sha256", files[pte_manifest.PROGRAM_FILE]) != files[pte_manifest.PROGRAM_FILE]:
        raise InputError(f"{name}: model_sha256 is not the sha256 it lists for {pte_manifest.PROGRAM_FILE}")
    if SECURITY_COUNTER in info:
        value = info[SECURITY_COUNTER]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SECURITY_COUNTER:
            raise InputError(f"{name}: {SECURITY_COUNTER} is {repr(value)[:20]}, not a whole number from 0 to "
                             f"{MAX_SECURITY_COUNTER}")
    return info


def read_bundle(root: Path) -> Bundle:
    """``root``'s bundle.json, checked (see :func:`parse_info`); the files are checked by :func:`verify_bundle`."""
    return Bundle(root, parse_info(read_info_bytes(root), str(root / BUNDLE_FILE)))


def check_folder(root: Path) -> None:
    """The folder holds the required files as regular files, bundle.json, perhaps bundle.sig, nothing else."""
    allowed = {*REQUIRED_FILES, BUNDLE_FILE, SIGNATURE_FILE}
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name not in allowed:
                raise InputError(f"bundle {root} holds {entry.name[:80]!r}, which is not part of a bundle "
                                 f"(exactly: {', '.join(REQUIRED_FILES)}, {BUNDLE_FILE}, {SIGNATURE_FILE})")
            if entry.is_symlink():
                raise InputError(f"bundle file {root / entry.name} is a symbolic link; a bundle holds regular "
                                 "files only")
            if not entry.is_file(follow_symlinks=False):
                raise InputError(f"bundle file {root / entry.name} is not a regular file")
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise InputError(f"bundle {root} lacks {name}")


def verify_bundle(bundle: Bundle) -> None:
    """The folder holds exactly the listed files, each with the sha256 bundle.json records, and a
    manifest whose digest holds and which describes the listed program (what a deploy checks)."""
    check_folder(bundle.root)
    for name, digest in bundle.files.items():
        path = bundle.root / name
        if pte_manifest.sha256_file(path) != digest:
            raise InputError(f"bundle file {path} does not match its sha256 in {BUNDLE_FILE}")
    man = bundle.root / pte_manifest.MANIFEST_FILE
    try:
        body = json.loads(man.read_bytes())
    except (ValueError, RecursionError):
        raise InputError(f"{man} is not valid JSON") from None
    pte_manifest.check(body, str(man))
    if body["program"]["sha256"] != bundle.files[pte_manifest.PROGRAM_FILE]:
        raise InputError(f"{man} describes another program than the bundle's {pte_manifest.PROGRAM_FILE}")


def verify_signature(root: Path, data: bytes, trusted: list[signing.Ed25519PublicKey], where: str) -> str:
    """``root/bundle.sig`` is a signature over ``data`` (bundle.json's bytes) by one of ``trusted``."""
    sig = root / SIGNATURE_FILE
    if sig.is_symlink() or not sig.is_file():
        raise signing.Refused(f"{where} accepts only signed bundles, and {root} has no {SIGNATURE_FILE}", "unsigned")
    return signing.verify(data, sig.read_bytes(), trusted, str(sig))
