"""A bootable Linux image for an Arm board class, made of Debian packages only (``edgelm image``).

    boot/kernel8.img     the distribution's arm64 kernel (``linux-image-*-arm64``)
    boot/initramfs8      busybox-static, dropbear and the libraries both need, the modules the kernel
                         lacks built in (virtio, ext4), the C runtime from the cross sysroot, an
                         ``/init``, BusyBox's init and ``/bin/edgelm-service`` (serves the current
                         release on the board's UART, restarted when it exits)
    boot/config.txt      the Raspberry Pi firmware's settings (``enable_uart=1``) and
    boot/cmdline.txt     the kernel command line: the same folder can go on a card's boot partition
    data.img             the data disk: ext4 (``mke2fs -d``), holding the releases as the ssh://
                         target lays them out (``edgelm/<board>/releases/<id>``, ``current``) and the
                         SSH server's host keys, so both survive a power cycle as on a Pi's SD card
    image.json           what went in (packages and versions, the bundle) and every file's sha256

The guest's root logs in over SSH with the key given (``--ssh-key``; default edgelm's own, made once
in the cache); ``root``'s ``~/.local/share`` is ``/data``, so the ssh:// release store finds the
releases there. Same inputs give the same bytes: the cpio is sorted with fixed owners and times, gzip
has no timestamp, and mke2fs and debugfs run under a frozen clock (faketime) with a fixed UUID and
hash seed, every file's times set to zero.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import doctor
from toolchain.boards import Board
from toolchain.bundle.package import Bundle, verify_bundle
from toolchain.errors import BuildError, UsageError
from toolchain.export.manifest import sha256_file
from toolchain.image import cpio
from toolchain.paths import FIRMWARE_DIR, cache_dir

log = logging.getLogger(__name__)

IMAGE_FORMAT = "edgelm-image/1"
IMAGE_FILE = "image.json"
KERNEL_FILE = "boot/kernel8.img"
INITRAMFS_FILE = "boot/initramfs8"
DATA_FILE = "data.img"
KNOWN_HOSTS = "known_hosts"  # the host keys the guest made on the data disk, as the host saw them
MARKER = ".edgelm-image"  # written first into the folder: it is one `edgelm image` makes (a build may stop halfway)
WORK_PREFIX = ".work-"  # the scratch folder of one build, inside the image folder, removed when it ends
KERNEL_PACKAGE = "linux-image-arm64"  # the metapackage: it names the versioned kernel package
PACKAGES = ("busybox-static", "dropbear-bin", "libtomcrypt1", "libtommath1", "libgmp10", "libcrypt1", "zlib1g")
SYSROOT = Path("/usr/aarch64-linux-gnu/lib")
C_RUNTIME = ("ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libdl.so.2",
             "libpthread.so.0", "librt.so.1", "libresolv.so.2", "libutil.so.1")
# Modules Debian's arm64 kernel builds as modules and the image needs, in load order.
MODULES = ("crc16", "crc32c_generic", "libcrc32c", "mbcache", "jbd2", "ext4", "virtio_pci_modern_dev",
           "virtio_pci_legacy_dev", "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk")
DATA_MOUNT = "/data"
UART = "/dev/ttyAMA0"  # the PL011, as on a Pi (QEMU's virt machine has one: its first serial port)
SSH_USER = "root"
FS_UUID = "6564676c-6d00-4d00-8000-000000000001"  # fixed: the same inputs give the same data disk
FROZEN_TIME = "2000-01-01 00:00:00"  # faketime's clock while mke2fs and debugfs run
MIN_DATA_BYTES = 1 << 30
APT_TIMEOUT_S = 600
MKFS_TIMEOUT_S = 600
_PLAIN = re.compile(r"[A-Za-z0-9._+-]+\Z")
_KEY_LINE = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa) "
                       r"[A-Za-z0-9+/=]{40,4096}( [ -~]{0,200})?\Z")

Progress = Callable[[str, str], None]


def _no_progress(step: str, detail: str) -> None:
    pass


@dataclass(frozen=True)
class Image:
    """A built image folder: the files :mod:`toolchain.deploy.qemu_system` boots."""

    root: Path
    info: dict[str, Any]

    @property
    def kernel(self) -> Path:
        return self.root / KERNEL_FILE

    @property
    def initramfs(self) -> Path:
        return self.root / INITRAMFS_FILE

    @property
    def data(self) -> Path:
        return self.root / DATA_FILE

    @property
    def board(self) -> str:
        return str(self.info["board"])

    @property
    def sha256(self) -> str:
        return str(self.info["sha256"])

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "board": self.board, "sha256": self.sha256, "files": self.info["files"],
                "packages": self.info["packages"], "release": self.info.get("release"),
                "bytes": {name: (self.root / name).stat().st_size for name in self.info["files"]}}


def read_image(root: Path) -> Image:
    """An image folder written by :func:`build`, its files checked against ``image.json``'s sizes.

    The data disk changes once the board runs (releases, host keys): only the boot files must
    still have their sha256, and that is what :func:`verify_boot` checks before a boot."""
    path = root / IMAGE_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{root} is not a board image (no {IMAGE_FILE})",
                         hint="make one with `edgelm image --board BOARD --out DIR`") from None
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path} is unreadable: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != IMAGE_FORMAT or not isinstance(info.get("files"), dict):
        raise BuildError(f"{path} is not an {IMAGE_FORMAT} description")
    for name in (KERNEL_FILE, INITRAMFS_FILE, DATA_FILE):
        if not (root / name).is_file():
            raise BuildError(f"image {root} lacks {name}", hint="build it again with `edgelm image`")
    return Image(root, info)


def verify_boot(image: Image) -> None:
    """The kernel and the initramfs have the sha256 ``image.json`` lists (the data disk is the board's to change)."""
    for name in (KERNEL_FILE, INITRAMFS_FILE):
        want = image.info["files"].get(name)
        if sha256_file(image.root / name) != want:
            raise BuildError(f"image {image.root}: {name} does not match its sha256 in {IMAGE_FILE}",
                             hint="build the image again with `edgelm image`")


def _run(cmd: list[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = APT_TIMEOUT_S, hint: str | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} is not installed", hint=hint or doctor.hint(cmd[0])) from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} took longer than {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip() and not x.startswith("W:")]
        raise BuildError(f"{what} failed: {lines[-1][:300] if lines else 'exit ' + str(proc.returncode)}",
                         hint=hint or "`edgelm doctor --for image` says what this host lacks")
    return proc.stdout


# ----------------------------------------------------------------------------------------------
# Packages

APT_HINT = ("the image's packages are Debian's arm64 ones: sudo dpkg --add-architecture arm64 && sudo apt-get update "
            "(`edgelm doctor --for image`)")


def kernel_package() -> str:
    """The versioned kernel package the arm64 metapackage depends on (linux-image-6.1.0-NN-arm64)."""
    out = _run(["apt-cache", "depends", f"{KERNEL_PACKAGE}:arm64"], "apt-cache depends", hint=APT_HINT)
    for line in out.splitlines():
        name = line.strip().removeprefix("Depends:").strip().split(":")[0]
        if name.startswith("linux-image-") and name != KERNEL_PACKAGE and _PLAIN.match(name):
            return name
    raise BuildError(f"{KERNEL_PACKAGE}:arm64 names no kernel package", hint=APT_HINT)


def fetch(packages: list[str], cache: Path, progress: Progress = _no_progress) -> dict[str, Path]:
    """The .deb of each package (arm64), downloaded once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name in packages:
        if not _PLAIN.match(name):
            raise UsageError(f"package name {name[:60]!r} is not a plain Debian package name")
        debs = sorted(cache.glob(f"{name}_*_arm64.deb"))
        if not debs:
            progress("download", f"{name}:arm64")
            _run(["apt-get", "download", "-qq", f"{name}:arm64"], f"downloading {name}:arm64", cwd=cache,
                 hint=APT_HINT)
            debs = sorted(cache.glob(f"{name}_*_arm64.deb"))
        if not debs:
            raise BuildError(f"apt-get download {name}:arm64 left no .deb in {cache}", hint=APT_HINT)
        found[name] = debs[-1]
    return found


# ----------------------------------------------------------------------------------------------
# The SSH key the host logs in with


def default_key() -> Path:
    """edgelm's own key for the images it builds (made once): ``~/.cache/edgelm/ssh/id_ed25519``."""
    key = cache_dir() / "ssh" / "id_ed25519"
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgelm-board-image", "-f", str(key)],
             "making edgelm's SSH key", hint=doctor.hint("ssh-keygen"))
    return key


def authorized_key(key: Path) -> str:
    """The public key line of ``key`` (a private key with its .pub beside it, or a .pub file)."""
    pub = key if key.suffix == ".pub" else key.with_name(key.name + ".pub")
    try:
        line = pub.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the public key {pub}: {exc.strerror or exc}") from None
    if "\n" in line or not _KEY_LINE.match(line):
        raise UsageError(f"{pub} is not one OpenSSH public key line (ssh-ed25519/ecdsa/rsa)")
    return line


# ----------------------------------------------------------------------------------------------
# The image


def _render(name: str, values: dict[str, str]) -> str:
    text = (FIRMWARE_DIR / "image" / name).read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    if re.search(r"@[A-Z_]+@", text):
        raise BuildError(f"firmware/image/{name}: a placeholder was left unrendered")
    return text


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _initramfs_tree(tree: Path, board: Board, unpacked: Path, modules_root: Path, pubkey: str) -> None:
    data = f"{DATA_MOUNT}/edgelm/{board.name}"
    for d in ("bin", "lib/modules", "proc", "sys", "dev", "run", "tmp", "etc", "data", "root/.ssh", "root/.local"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(unpacked / "bin" / "busybox", tree / "bin" / "busybox")
    (tree / "bin" / "sh").symlink_to("busybox")  # the rest are linked by `busybox --install` at boot
    shutil.copy2(unpacked / "usr" / "sbin" / "dropbear", tree / "bin" / "dropbear")
    for name in MODULES:
        found = sorted(modules_root.rglob(f"{name}.ko"))
        if not found:
            raise BuildError(f"the kernel package has no module {name}.ko")
        shutil.copy2(found[0], tree / "lib" / "modules" / f"{name}.ko")
    for lib in C_RUNTIME:
        if (SYSROOT / lib).exists():
            shutil.copy2(SYSROOT / lib, tree / "lib" / lib, follow_symlinks=True)
        elif lib in C_RUNTIME[:5]:
            raise BuildError(f"the cross sysroot lacks {SYSROOT / lib}", hint="install g++-aarch64-linux-gnu")
    for pkg_lib in sorted(unpacked.glob("**/lib/aarch64-linux-gnu/lib*.so.*")):  # dropbear's libraries
        if not (tree / "lib" / pkg_lib.name).exists():
            shutil.copy2(pkg_lib, tree / "lib" / pkg_lib.name, follow_symlinks=True)
    _write(tree / "etc" / "passwd", f"{SSH_USER}:x:0:0:{SSH_USER}:/root:/bin/sh\n")
    _write(tree / "etc" / "group", f"{SSH_USER}:x:0:\n")
    _write(tree / "etc" / "shells", "/bin/sh\n")
    _write(tree / "etc" / "hostname", f"{board.name}\n")
    _write(tree / "etc" / "inittab", "::respawn:/bin/edgelm-service run\n"
                                     f"::shutdown:/bin/sh -c 'sync; umount {DATA_MOUNT}'\n")
    _write(tree / "etc" / "udhcpc.sh", '#!/bin/sh\n[ "$1" = bound ] || exit 0\n'
                                       'ip addr add "$ip/${mask:-24}" dev "$interface"\n'
                                       '[ -n "$router" ] && ip route add default via "${router%% *}"\nexit 0\n', 0o755)
    (tree / "etc" / "dropbear").symlink_to(f"{DATA_MOUNT}/etc/dropbear")
    (tree / "root" / ".local" / "share").symlink_to(DATA_MOUNT)  # the ssh:// store's data folder is on the disk
    _write(tree / "root" / ".ssh" / "authorized_keys", pubkey + "\n", 0o600)
    (tree / "root" / ".ssh").chmod(0o700)
    values = {"@BOARD@": board.name, "@MODULES@": " ".join(MODULES), "@DATA@": data, "@UART@": UART}
    _write(tree / "init", _render("init.in", values), 0o755)
    _write(tree / "bin" / "edgelm-service", _render("edgelm-service.in", values), 0o755)


def _faketime_env() -> dict[str, str]:
    libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not libs:
        raise BuildError("faketime is not installed (the data disk is made under a frozen clock, for the same "
                         "bytes every time)", hint=doctor.hint("faketime"))
    return {**os.environ, "LD_PRELOAD": str(libs[0]), "FAKETIME": FROZEN_TIME, "TZ": "UTC"}


def _data_disk(staging: Path, out: Path, size: int) -> None:
    """An ext4 image of ``staging``, the same bytes for the same tree."""
    paths = sorted(staging.rglob("*"), key=lambda p: p.relative_to(staging).as_posix())
    for p in [*paths, staging]:
        os.utime(p, (0, 0), follow_symlinks=False)
    env = _faketime_env()
    out.unlink(missing_ok=True)
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "edgelm-data", "-U", FS_UUID,
          "-E", f"hash_seed={FS_UUID},root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
          "-d", str(staging), str(out), str(size // 4096)], "making the data disk (mke2fs)", env=env,
         timeout=MKFS_TIMEOUT_S, hint=doctor.hint("mke2fs"))
    # mke2fs -d copies each file's atime and ctime (which no one can set): zero them.
    names = ["/" + p.relative_to(staging).as_posix() for p in paths]
    script = "".join(f"sif {name} {field} 0\n" for name in ["/", *names] for field in ("atime", "ctime"))
    proc = subprocess.run(["debugfs", "-w", "-f", "-", str(out)], input=script, capture_output=True, text=True,
                          env=env, timeout=MKFS_TIMEOUT_S)
    bad = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("debugfs ")]
    if proc.returncode != 0 or bad:
        raise BuildError(f"fixing the data disk's timestamps (debugfs) failed: {(bad or ['exit'])[-1][:200]}")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is not edgelm's to write: a file, or a folder with something in it that is
    not an image `edgelm image` made (its ``image.json``, or the marker a build writes first). Nothing of
    anyone else's is ever removed or overwritten; checked before any work."""
    try:
        if out.is_symlink() and not out.exists():
            raise UsageError(f"--out {out} is a link to nothing", hint="give a new or empty folder for the image")
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder", hint="give a new or empty folder for the image")
        for parent in out.parents:  # a folder cannot be made under a file
            if parent.exists():
                if not parent.is_dir():
                    raise UsageError(f"--out {out}: {parent} is not a folder")
                break
        if not out.exists() or not any(out.iterdir()):
            return
        ours = _made_here(out)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot look into it ({exc.strerror or exc})") from None
    if not ours:
        raise UsageError(f"--out {out} is not empty and not an image `edgelm image` made (no {IMAGE_FILE} of "
                         f"{IMAGE_FORMAT}): nothing in it is replaced or removed",
                         hint="give a new or empty folder, or the folder of an earlier `edgelm image`")
    for name, folder in (("boot", True), (KERNEL_FILE, False), (INITRAMFS_FILE, False), (DATA_FILE, False),
                         (IMAGE_FILE, False), (KNOWN_HOSTS, False)):
        path = out / name
        if path.is_symlink() or (path.exists() and path.is_dir() != folder):
            raise UsageError(f"image {out}: {name} is not a {'folder' if folder else 'file'} `edgelm image` made",
                             hint="build the image into a new folder")


def _made_here(out: Path) -> bool:
    """Whether ``out`` is an image folder of ours: its marker, or (an image made before the marker)
    an ``image.json`` of this format."""
    if (out / MARKER).is_file() and not (out / MARKER).is_symlink():
        return True
    path = out / IMAGE_FILE
    if path.is_symlink() or not path.is_file():
        return False
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == IMAGE_FORMAT


def _earlier_files(out: Path) -> list[str]:
    """The files an earlier image in ``out`` listed (to remove the ones this one does not write again)."""
    try:
        info = json.loads((out / IMAGE_FILE).read_text())
        files = info.get("files") if isinstance(info, dict) else None
    except (OSError, ValueError):
        return []
    return [name for name in files if isinstance(name, str)] if isinstance(files, dict) else []


def boot_config(board: Board) -> str:
    """The image's config.txt: the kernel and initramfs, and the lines the profile's UART needs."""
    uart = board.uart_for(UART)
    if uart is None:
        raise UsageError(f"board {board.name!r}: its profile lists no UART {UART} ([[uarts]]); an image serves "
                         "on it", hint="add it to the profile (boards/*.toml), or use a Raspberry Pi board")
    return (f"# Raspberry Pi firmware settings, written by `edgelm image --board {board.name}`.\n"
            "arm_64bit=1\n"
            "kernel=kernel8.img\n"
            "initramfs initramfs8 followkernel\n"
            f"# The runner serves on {UART}, {uart.where}; the kernel console stays off it.\n"
            + "".join(line + "\n" for line in uart.config))


def _boot_files(boot: Path, board: Board, unpacked: Path) -> list[str]:
    """The Raspberry Pi boot-folder layout around kernel8.img and initramfs8: the names written."""
    _write(boot / "config.txt", boot_config(board))
    _write(boot / "cmdline.txt", "console=tty1 quiet panic=5 edgelm_data=/dev/mmcblk0p2\n")
    written = ["config.txt", "cmdline.txt"]
    for dtb in sorted(unpacked.glob("usr/lib/linux-image-*/broadcom/bcm27*-rpi-*.dtb")):
        _unlink(boot / dtb.name)
        shutil.copy2(dtb, boot / dtb.name)
        written.append(dtb.name)
    return [f"boot/{name}" for name in written]


def _unlink(path: Path) -> None:
    """An earlier image's file (or a link where it was), before it is written again: never written through."""
    if path.is_symlink() or path.is_file():
        path.unlink()


def build(board: Board, out: Path, *, bundle: Bundle | None = None, ssh_key: Path | None = None,
          data_bytes: int | None = None, cache: Path | None = None, progress: Progress = _no_progress) -> Image:
    """The image for ``board`` (serving ``bundle`` from its data disk, if given) in ``out``: a new or
    empty folder, or an earlier image's (:func:`check_out`); only the image's own files are written
    or removed there."""
    if board.arch != "aarch64":
        raise UsageError(f"board images are for Arm boards; {board.name} is {board.arch}")
    boot_config(board)  # a profile without the image's UART is refused before anything is written
    check_out(out)
    if bundle is not None:
        if bundle.board != board.name:
            raise UsageError(f"bundle {bundle.root} was built for {bundle.board}, not {board.name}")
        verify_bundle(bundle)
    pubkey = authorized_key(ssh_key or default_key())
    cache = cache or cache_dir() / "debs"
    progress("packages", "Debian arm64: kernel, busybox-static, dropbear")
    kpkg = kernel_package()
    debs = fetch([kpkg, *PACKAGES], cache, progress)
    check_out(out)  # again: the folder may have changed while the packages came
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(f"{IMAGE_FORMAT}: this folder is written by `edgelm image`\n")
    earlier = _earlier_files(out)
    _unlink(out / IMAGE_FILE)  # until the new one is whole, the folder is no image to boot
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=out))
    try:
        return _build_in(board, out, work, bundle, pubkey, kpkg, debs, earlier, data_bytes, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_in(board: Board, out: Path, work: Path, bundle: Bundle | None, pubkey: str, kpkg: str,
              debs: dict[str, Path], earlier: list[str], data_bytes: int | None, progress: Progress) -> Image:
    unpacked, tree, staging = work / "unpacked", work / "initramfs", work / "data"
    unpacked.mkdir(parents=True)
    for deb in debs.values():
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"unpacking {deb.name}")
    kernels = sorted((unpacked / "boot").glob("vmlinuz-*"))
    modules = sorted((unpacked / "lib" / "modules").glob("*"))
    if not kernels or not modules:
        raise BuildError(f"{debs[kpkg].name} holds no kernel or no modules")
    progress("initramfs", "busybox, dropbear, modules, C runtime, init")
    _initramfs_tree(tree, board, unpacked, modules[-1], pubkey)
    boot = out / "boot"
    boot.mkdir(exist_ok=True)
    for name in (KERNEL_FILE, INITRAMFS_FILE, DATA_FILE):
        _unlink(out / name)
    shutil.copyfile(kernels[-1], out / KERNEL_FILE)
    (out / INITRAMFS_FILE).write_bytes(cpio.initramfs(tree))
    for name in ("config.txt", "cmdline.txt"):
        _unlink(boot / name)
    written = [KERNEL_FILE, INITRAMFS_FILE, *_boot_files(boot, board, unpacked), DATA_FILE]
    for name in earlier:  # what the earlier image had and this one has not (another kernel's device trees)
        if name not in written and re.fullmatch(r"boot/[A-Za-z0-9._+-]+\.dtb", name):
            _unlink(out / name)
    release = None
    (staging / "etc" / "dropbear").mkdir(parents=True)
    store = staging / "edgelm" / board.name
    (store / "releases").mkdir(parents=True)
    if bundle is not None:
        release = bundle.release_id
        progress("data disk", f"release {release} of {bundle.root}")
        folder = store / "releases" / release
        folder.mkdir()
        for name in sorted(bundle.info["files"]) + ["bundle.json"] + \
                (["bundle.sig"] if (bundle.root / "bundle.sig").is_file() else []):
            shutil.copyfile(bundle.root / name, folder / name)
            (folder / name).chmod(0o755 if os.access(bundle.root / name, os.X_OK) else 0o644)
        (store / "current").symlink_to(f"releases/{release}")
    used = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and not p.is_symlink())
    size = max(data_bytes or 0, MIN_DATA_BYTES, 3 * used + (256 << 20))  # room for two more releases
    size -= size % 4096
    progress("data disk", f"ext4, {size:,} bytes (sparse)")
    _data_disk(staging, out / DATA_FILE, size)
    files = {name: sha256_file(out / name) for name in sorted(written)}  # what this image is made of, only
    info = {
        "format": IMAGE_FORMAT,
        "board": board.name,
        "packages": {name: deb.name for name, deb in sorted(debs.items())},
        "release": release,
        "ssh_user": SSH_USER,
        "uart": UART,
        "data_bytes": size,
        "files": files,
        "sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
    }
    (out / IMAGE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    _unlink(out / KNOWN_HOSTS)  # a new data disk: the guest makes new host keys
    log.info("image for %s in %s: sha256 %s", board.name, out, info["sha256"])
    return Image(out, info)
