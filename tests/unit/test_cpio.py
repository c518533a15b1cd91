"""The initramfs writer: same tree, same bytes; what the kernel's unpacker expects."""

import gzip
import os
import time

import pytest

from toolchain.errors import InputError
from toolchain.image import cpio


def tree(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF" + bytes(1000))
    (root / "bin" / "busybox").chmod(0o700)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "init").write_text("#!/bin/sh\nexec sh\n")
    (root / "init").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("hi\n")
    return root


def test_the_same_tree_gives_the_same_bytes(tmp_path):
    a = cpio.initramfs(tree(tmp_path / "a"))
    time.sleep(0.01)
    b_root = tree(tmp_path / "b")
    os.utime(b_root / "init", (1, 1))  # other timestamps, other owner bits: the same image
    (b_root / "etc" / "motd").chmod(0o600)
    assert cpio.initramfs(b_root) == a
    assert gzip.decompress(a) == cpio.archive(tmp_path / "a")


def test_entries_are_sorted_and_end_with_the_trailer(tmp_path):
    data = cpio.archive(tree(tmp_path / "t"))
    names, pos = [], 0
    while True:
        assert data[pos:pos + 6] == cpio.MAGIC
        namesize = int(data[pos + 94:pos + 102], 16)
        filesize = int(data[pos + 54:pos + 62], 16)
        name = data[pos + 110:pos + 110 + namesize - 1]
        names.append(name.decode())
        pos += 110 + namesize
        pos += -pos % 4
        pos += filesize + (-filesize % 4)
        if name == cpio.TRAILER:
            break
    assert names == ["bin", "bin/busybox", "bin/sh", "etc", "etc/motd", "init", "TRAILER!!!"]
    assert pos == len(data)


def test_a_device_node_or_fifo_is_refused(tmp_path):
    root = tree(tmp_path / "t")
    os.mkfifo(root / "fifo")
    with pytest.raises(InputError, match="fifo is not a folder, a regular file or a link"):
        cpio.archive(root)
