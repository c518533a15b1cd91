"""Deterministic cpio "newc" archives: the format of a Linux initramfs (issue 8's board image).

Same tree, same bytes: entries sorted by path, owner 0:0, one fixed mtime, modes reduced to 0755
(executables, folders) or 0644, inode numbers assigned in order, gzip without a timestamp. Only
folders, regular files and symbolic links are taken; anything else is refused.
"""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

from toolchain.errors import InputError

MAGIC = b"070701"
TRAILER = b"TRAILER!!!"


def _header(ino: int, mode: int, nlink: int, size: int, name: bytes, mtime: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(name) + 1, 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return head + b"\0" * (-len(head) % 4)


def archive(root: Path, *, mtime: int = 0) -> bytes:
    """The uncompressed newc archive of everything below ``root`` (``root`` itself is ``.``, left out)."""
    out = bytearray()
    for ino, path in enumerate(sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()), start=1):
        name = path.relative_to(root).as_posix().encode()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            data, mode, nlink = os.readlink(path).encode(), stat.S_IFLNK | 0o777, 1
        elif stat.S_ISDIR(st.st_mode):
            data, mode, nlink = b"", stat.S_IFDIR | 0o755, 2
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
            mode, nlink = stat.S_IFREG | (0o755 if st.st_mode & 0o111 else 0o644), 1
        else:
            raise InputError(f"{path} is not a folder, a regular file or a link: it cannot go into an image")
        out += _header(ino, mode, nlink, len(data), name, mtime) + data + b"\0" * (-len(data) % 4)
    out += _header(0, 0, 1, 0, TRAILER, 0)
    return bytes(out)


def initramfs(root: Path, *, mtime: int = 0) -> bytes:
    """``archive(root)`` gzip-compressed, as the kernel takes it (no name, no timestamp in the gzip header)."""
    return gzip.compress(archive(root, mtime=mtime), compresslevel=9, mtime=0)
