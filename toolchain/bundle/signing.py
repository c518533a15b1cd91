"""Ed25519 keys and bundle signatures (as MCUboot and RAUC sign their images).

A signature covers the exact bytes of a bundle's ``bundle.json``. That file holds the sha256 of
every other file in the bundle, and a deploy verifies every file against it, so one signature
seals the whole bundle (and its ``security_counter``, MCUboot's anti-rollback counter).
``bundle.sig`` is a small JSON document: the algorithm, the signing key's fingerprint (the sha256
of its 32 raw public bytes) and the signature in base64.

A board's refusal of a bundle (:class:`Refused`) says what to do in the words of the command that
met it (:meth:`Refused.advise`): ``edgelm run`` is told about ``run --sign-key``, not ``build``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from toolchain.errors import InputError, UsageError

SIGNATURE_FORMAT = "edgelm-signature/1"
ALGORITHM = "ed25519"
PUBLIC_SUFFIX = ".pub"
PRIVATE_MODE = 0o600
SIGNATURE_MAX_BYTES = 4096  # a real one is ~250 bytes; anything far larger is not ours
KEY_FOLDER_MODE = 0o700  # the folders keygen makes for a private key

# How each command that deploys is given a key, for the hint of a refusal.
_SIGN_USAGE = {
    "build": "`edgelm build ... --sign-key KEY`, then flash that bundle",
    "run": "`edgelm run ... --sign-key KEY`",
    "flash": "`edgelm flash BUNDLE --sign-key KEY`",
    "console": "`edgelm console ... --sign-key KEY`",
    "pytest": "`pytest ... --edgelm-sign-key KEY` (or edgelm_sign_key in pytest.ini)",
}
_ANY_USAGE = ("`edgelm flash BUNDLE --sign-key KEY` (or `edgelm run ... --sign-key KEY`, which signs the bundle it "
              "builds)")


class Refused(InputError):
    """A board that trusts keys refused a bundle or release: ``kind`` is ``unsigned`` (no signature),
    ``untrusted`` (a key it does not trust), ``bad`` (the signature does not hold) or ``counter``
    (its security counter is below the one the board accepted; ``minimum``)."""

    def __init__(self, message: str, kind: str, minimum: int = 0):
        self.kind = kind
        self.minimum = minimum
        super().__init__(message, hint=self.advise(None))

    def advise(self, command: str | None) -> str:
        """What to do, in the words of ``command`` (``run``, ``flash``...; None: any)."""
        usage = _SIGN_USAGE.get(command or "", _ANY_USAGE)
        if self.kind == "counter":
            usage = usage.replace("--sign-key KEY", f"--sign-key KEY --security-counter {self.minimum}")
            return f"sign it again with a counter of at least {self.minimum}: {usage}"
        if self.kind == "bad":
            return f"sign the bundle again: {usage}"
        return f"sign it with a key the target trusts (`edgelm trusted` lists them): {usage}"


def fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 of the key's 32 raw bytes, in hex: how a signature names its key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(out: Path) -> tuple[Path, Path, str]:
    """Write a new private key to ``out`` (PEM, mode 0600) and its public key to ``out.pub``.

    Refuses to overwrite either file. Returns (private path, public path, fingerprint).
    """
    pub = out.with_name(out.name + PUBLIC_SUFFIX)
    for path in (out, pub):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} exists already; a key is never overwritten", hint="choose another --out")
    _make_folder(out.parent, out)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), PRIVATE_MODE)  # whatever the umask
        f.write(pem)
    pub.write_bytes(public_pem(key.public_key()))
    return out, pub, fingerprint(key.public_key())


def _make_folder(folder: Path, out: Path) -> None:
    """``folder`` and the folders above it that are missing (mode 0700: they hold a private key)."""
    for p in (folder, *folder.parents):
        if p.is_dir():
            break
        if p.exists() or p.is_symlink():
            raise UsageError(f"--out {out}: {p} is not a folder", hint="choose another --out")
    try:
        folder.mkdir(mode=KEY_FOLDER_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot make the folder {folder}: {exc.strerror or exc}") from None


def _read_key_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    return path.read_bytes()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The ed25519 private key in PEM file ``path`` (as `edgelm keygen` writes it)."""
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InputError(f"signing key {path} is encrypted; edgelm uses unencrypted keys",
                         hint="make one with `edgelm keygen`") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{path} is not a PEM private key", hint="make one with `edgelm keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path} is a {type(key).__name__.lstrip('_')}, not an ed25519 key",
                         hint="make one with `edgelm keygen`")
    return key


def parse_public_key(data: bytes, name: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{name} is not a PEM public key", hint="give the .pub file `edgelm keygen` wrote") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{name} is not an ed25519 public key", hint="give the .pub file `edgelm keygen` wrote")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    return parse_public_key(_read_key_file(path, "public key"), str(path))


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signature document (bytes of ``bundle.sig``) for ``data``."""
    doc = {"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_fingerprint": fingerprint(key.public_key()),
           "signature": base64.b64encode(key.sign(data)).decode()}
    return (json.dumps(doc, indent=2) + "\n").encode()


def verify(data: bytes, signature: bytes, trusted: list[Ed25519PublicKey], name: str) -> str:
    """Check ``signature`` (a signature document) over ``data`` against the ``trusted`` keys.

    Returns the fingerprint of the key that signed; raises InputError naming what does not hold.
    """
    if len(signature) > SIGNATURE_MAX_BYTES:
        raise Refused(f"{name} is not an edgelm signature ({len(signature)} bytes)", "bad")
    try:
        doc = json.loads(signature)
    except (ValueError, RecursionError):
        raise Refused(f"{name} is not an edgelm signature (not JSON)", "bad") from None
    if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
        raise Refused(f"{name} is not an edgelm signature (format {SIGNATURE_FORMAT})", "bad")
    if doc.get("algorithm") != ALGORITHM:
        raise Refused(f"{name} uses algorithm {str(doc.get('algorithm'))[:20]!r}; only {ALGORITHM} is accepted", "bad")
    fp, sig = doc.get("key_fingerprint"), doc.get("signature")
    if not isinstance(fp, str) or not isinstance(sig, str):
        raise Refused(f"{name} lacks key_fingerprint or signature", "bad")
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"{name}: the signature is not base64", "bad") from None
    by_fp = {fingerprint(k): k for k in trusted}
    key = by_fp.get(fp)
    if key is None:
        known = ", ".join(f[:16] for f in sorted(by_fp))
        raise Refused(f"{name} is signed by key {fp[:16]}, which is not trusted here (trusted: {known})",
                      "untrusted")
    try:
        key.verify(raw, data)
    except InvalidSignature:
        raise Refused(f"{name} does not match the bytes it signs (changed after signing?)", "bad") from None
    return fp
