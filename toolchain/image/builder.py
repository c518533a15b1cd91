"""A bootable Linux image for an Arm board class, from Debian packages only (issue 8, first slice).

    kernel     the distribution's arm64 kernel (``linux-image-*-arm64``), as ``Image``
    initramfs  busybox-static, the virtio/ext4 modules the kernel lacks built in, the C runtime from
               the cross sysroot, the bundle laid out as the ssh:// target lays out a release
               (``/data/edgelm/<board>/releases/<id>``, ``current``), and an ``/init`` that serves
               the current release on the UART and restarts the runner when it exits

Same inputs give the same bytes (sorted, fixed-owner, fixed-time cpio; gzip without a timestamp).
Not yet: the SSH server, the persistent data disk, the Raspberry Pi boot folder (see issue 8).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from toolchain.boards import Board
from toolchain.bundle.package import Bundle, verify_bundle
from toolchain.errors import BuildError, UsageError
from toolchain.image import cpio
from toolchain.paths import FIRMWARE_DIR

KERNEL_PACKAGE = "linux-image-arm64"  # the metapackage: it names the versioned kernel package
BUSYBOX_PACKAGE = "busybox-static"
SYSROOT = Path("/usr/aarch64-linux-gnu/lib")
C_RUNTIME = ("ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libdl.so.2",
             "libpthread.so.0", "librt.so.1")
# Modules Debian 12's arm64 kernel builds as modules and the image needs, in load order.
MODULES = ("crc16", "mbcache", "jbd2", "ext4", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "failover", "net_failover", "virtio_net", "virtio_blk")
APPLETS = ("sh", "mount", "insmod", "ip", "udhcpc", "cut", "cat", "echo", "sleep", "ls", "poweroff", "true")
DATA = "/data/edgelm"
UART = "/dev/ttyAMA0"  # the PL011, as on a Pi
APT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Image:
    kernel: Path
    initramfs: Path
    sha256: str  # over kernel + initramfs

    def to_dict(self) -> dict[str, str]:
        return {"kernel": str(self.kernel), "initramfs": str(self.initramfs), "sha256": self.sha256}


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} is not installed", hint="run `make setup`") from None
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip() and not x.startswith("W:")]
        raise BuildError(f"{what} failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}",
                         hint="arm64 packages need `dpkg --add-architecture arm64 && apt-get update`")
    return proc.stdout


def kernel_package() -> str:
    """The versioned kernel package the arm64 metapackage depends on (linux-image-6.1.0-NN-arm64)."""
    out = _run(["apt-cache", "depends", f"{KERNEL_PACKAGE}:arm64"], "apt-cache depends")
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip().split(":")[0]
        if name.startswith("linux-image-") and name != KERNEL_PACKAGE:
            return name
    raise BuildError(f"{KERNEL_PACKAGE}:arm64 names no kernel package")


def fetch(packages: list[str], cache: Path) -> dict[str, Path]:
    """The .deb of each package (arm64), downloaded once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name in packages:
        debs = sorted(cache.glob(f"{name}_*_arm64.deb"))
        if not debs:
            _run(["apt-get", "download", "-qq", f"{name}:arm64"], f"downloading {name}:arm64", cwd=cache)
            debs = sorted(cache.glob(f"{name}_*_arm64.deb"))
        if not debs:
            raise BuildError(f"apt-get download {name}:arm64 left no .deb in {cache}")
        found[name] = debs[-1]
    return found


def _extract(deb: Path, dest: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(dest)], f"unpacking {deb.name}")


def _render_init(board: Board) -> str:
    text = (FIRMWARE_DIR / "image" / "init.in").read_text()
    for key, value in {"@MODULES@": " ".join(MODULES), "@DATA@": f"{DATA}/{board.name}", "@DEVICE@": UART}.items():
        text = text.replace(key, value)
    return text


def build(board: Board, bundle: Bundle, out: Path, cache: Path) -> Image:
    """Kernel and initramfs for ``board`` serving ``bundle``, into ``out``."""
    if board.arch != "aarch64":
        raise UsageError(f"board images are for Arm boards; {board.name} is {board.arch}")
    if bundle.board != board.name:
        raise UsageError(f"bundle {bundle.root} was built for {bundle.board}, not {board.name}")
    verify_bundle(bundle)
    kpkg = kernel_package()
    debs = fetch([kpkg, BUSYBOX_PACKAGE], cache)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    unpacked, tree = work / "unpacked", work / "initramfs"
    unpacked.mkdir(parents=True)
    for deb in debs.values():
        _extract(deb, unpacked)
    kernels = sorted((unpacked / "boot").glob("vmlinuz-*"))
    modules_root = sorted((unpacked / "lib" / "modules").iterdir())
    if not kernels or not modules_root:
        raise BuildError(f"{debs[kpkg].name} holds no kernel or no modules")
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "lib/modules"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(unpacked / "bin" / "busybox", tree / "bin" / "busybox")
    for applet in APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "etc" / "udhcpc.sh").write_text("#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/${mask:-24}\" dev "
                                            "\"$interface\" && ip route add default via \"${router%% *}\"\nexit 0\n")
    (tree / "etc" / "udhcpc.sh").chmod(0o755)
    for name in MODULES:
        found = sorted(modules_root[-1].rglob(f"{name}.ko"))
        if not found:
            raise BuildError(f"the kernel package has no module {name}.ko")
        shutil.copy2(found[0], tree / "lib" / "modules" / f"{name}.ko")
    for lib in C_RUNTIME:
        shutil.copy2(SYSROOT / lib, tree / "lib" / lib, follow_symlinks=True)
    release = tree / DATA.lstrip("/") / board.name / "releases" / bundle.release_id
    release.mkdir(parents=True)
    for name in bundle.files:
        shutil.copy2(bundle.root / name, release / name)
    (release.parent.parent / "current").symlink_to(f"releases/{bundle.release_id}")
    (tree / "init").write_text(_render_init(board))
    (tree / "init").chmod(0o755)
    out.mkdir(parents=True, exist_ok=True)
    kernel, initramfs = out / "Image", out / "initramfs.cpio.gz"
    shutil.copyfile(kernels[-1], kernel)
    initramfs.write_bytes(cpio.initramfs(tree))
    shutil.rmtree(work, ignore_errors=True)
    digest = hashlib.sha256(kernel.read_bytes() + initramfs.read_bytes()).hexdigest()
    return Image(kernel, initramfs, digest)
