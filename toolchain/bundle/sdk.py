"""The ExecuTorch C++ runtime for a board's architecture, from the executorch wheel.

The wheel ships the runtime as shared libraries, headers and a CMake config. For this machine's
architecture that is the installed package itself; for another one (aarch64 boards) it is the
wheel of exactly the installed executorch version for that platform, fetched once with pip and
unpacked into the cache. A runtime of another version is refused: the program format, the
kernels and the headers must all come from the version that exported the program. A wheel is
unpacked only if its sha256 is the one pinned here for its file name (:data:`WHEEL_SHA256`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path

from toolchain.errors import BuildError
from toolchain.paths import cache_dir

log = logging.getLogger(__name__)

# The runtime pieces a runner links: the core, the thread pool, the CPU and quantized kernels and
# the XNNPACK delegate (the last three register themselves and must be linked --no-as-needed).
RUNTIME_LIBS = ("libexecutorch.so", "libexecutorch_threadpool.so", "libexecutorch_kernels_optimized.so",
                "libexecutorch_kernels_quantized.so", "libexecutorch_backend_xnnpack.so")
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}
PIP_TIMEOUT_S = 900
# The sha256 of every executorch wheel edgelm unpacks, by version and file name: the digests the
# package index publishes (the cp311 ones also checked by downloading them with pip). A fetched
# wheel must be listed with its hash; so must a local --sdk-wheel of a version listed here.
WHEEL_SHA256: dict[str, dict[str, str]] = {
    "1.5.1": {
        "executorch-1.5.1-cp310-cp310-manylinux_2_28_aarch64.whl":
            "e56525c38b1e1a428a9dd9f85081a2ef29dec1df8661963ac07cef0695cc0cf4",
        "executorch-1.5.1-cp310-cp310-manylinux_2_28_x86_64.whl":
            "b73f74ef4a431320aa40ca21c252316264fdbe1b5ae39208414e3a885af55b34",
        "executorch-1.5.1-cp311-cp311-manylinux_2_28_aarch64.whl":
            "8ee02348a3ea80ddf770822911ebf78da616b73afce0fbaaa79f23311c88c66a",
        "executorch-1.5.1-cp311-cp311-manylinux_2_28_x86_64.whl":
            "274c28c2fe2b76acb03f9fa381537425c40e0098dcf886baf6d97a1a55ffe300",
        "executorch-1.5.1-cp312-cp312-manylinux_2_28_aarch64.whl":
            "2c177f7922354a8a0d6111628c954519b87549598640e5e0042bef137b4cb83c",
        "executorch-1.5.1-cp312-cp312-manylinux_2_28_x86_64.whl":
            "04897dffff8d96e8af32f554c758d0a7d4f50af5c3530c90dc8d5319bb44c878",
        "executorch-1.5.1-cp313-cp313-manylinux_2_28_aarch64.whl":
            "685a8d85b319fc99f2611a5e0ecf598755a91cf5d39a536e057dea60cd8e9682",
        "executorch-1.5.1-cp313-cp313-manylinux_2_28_x86_64.whl":
            "083f998ebddc0bc98ad299e3fded57f4fcadb67792ef4c6ef920856cfd7bd3a5",
    },
}


@dataclass(frozen=True)
class Sdk:
    arch: str
    version: str
    root: Path  # has include/ and lib/

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @property
    def libs(self) -> list[Path]:
        return [self.lib_dir / name for name in RUNTIME_LIBS]


def host_version() -> str:
    return dist_version("executorch")


def _installed_package() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        from toolchain import doctor

        raise BuildError("the executorch package is not installed", hint=doctor.hint("executorch"))
    return Path(next(iter(spec.submodule_search_locations)))


def _check_complete(root: Path, arch: str, version: str) -> Sdk:
    missing = [p.name for p in (root / "lib" / n for n in RUNTIME_LIBS) if not p.exists()]
    if missing or not (root / "include" / "executorch").is_dir():
        raise BuildError(f"the executorch {version} runtime for {arch} at {root} lacks "
                         f"{missing[0] if missing else 'include/executorch'}")
    return Sdk(arch=arch, version=version, root=root)


def _wheel_version(wheel: Path) -> str:
    """The version inside a wheel (executorch/version.py), not just its file name."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read("executorch/version.py").decode()
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise BuildError(f"{wheel} is not an executorch wheel ({exc})") from None
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("'\"").split("+")[0]
    raise BuildError(f"{wheel} has no __version__ in executorch/version.py")


def check_wheel_hash(wheel: Path, version: str, *, fetched: bool) -> str:
    """The wheel's sha256, refused unless it is the one pinned for its file name.

    A fetched wheel must be pinned; a local one must be when its version is (else it is logged).
    """
    h = hashlib.sha256()
    with wheel.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    actual = h.hexdigest()
    pins = WHEEL_SHA256.get(version)
    if pins is None and not fetched:
        log.warning("no sha256 is pinned for executorch %s wheels; using %s (sha256 %s) unchecked",
                    version, wheel.name, actual)
        return actual
    expected = (pins or {}).get(wheel.name)
    if expected is None:
        raise BuildError(f"{wheel.name} (sha256 {actual}) has no pinned sha256; pinned for executorch {version}: "
                         f"{', '.join(sorted(pins or {})) or 'none'}",
                         hint="add its published sha256 to WHEEL_SHA256 in toolchain/bundle/sdk.py")
    if actual != expected:
        raise BuildError(f"{wheel.name} has sha256 {actual}, but {expected} is pinned for it",
                         hint="this is not the published wheel; fetch it again or pass the right --sdk-wheel")
    return actual


def _fetch_wheel(arch: str, version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", WHEEL_PLATFORMS[arch], "-d", str(into), f"executorch=={version}"]
    log.info("fetching the executorch %s wheel for %s: %s", version, arch, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"pip download of the executorch {version} {arch} wheel timed out") from None
    wheels = sorted(into.glob("executorch-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"cannot fetch the executorch {version} wheel for {arch}: {last}",
                         hint="needs the package index; or pass --sdk-wheel with a local wheel file")
    return wheels[0]


def _unpack(wheel: Path, dest: Path, arch: str, version: str, sha256: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".sdk-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(("executorch/lib/", "executorch/include/", "executorch/share/")):
                    zf.extract(name, tmp)
        shutil.move(str(tmp / "executorch"), str(tmp / "sdk"))
        (tmp / "sdk" / "sdk.json").write_text(json.dumps({"arch": arch, "version": version, "wheel": wheel.name,
                                                             "sha256": sha256}))
        if dest.exists():
            shutil.rmtree(dest)
        (tmp / "sdk").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sdk_for(arch: str, wheel: Path | None = None) -> Sdk:
    """The runtime for ``arch`` at exactly the host's executorch version (fetched and cached)."""
    version = host_version()
    if wheel is None and arch == platform.machine():
        return _check_complete(_installed_package(), arch, version)
    if arch not in WHEEL_PLATFORMS:
        raise BuildError(f"no executorch wheel platform is known for {arch}")
    dest = cache_dir() / "sdk" / f"executorch-{version}-{arch}"
    if wheel is None and (dest / "sdk.json").exists():
        try:
            cached = json.loads((dest / "sdk.json").read_text())
        except ValueError:
            cached = None
        if not isinstance(cached, dict):
            cached = {"version": version}  # unreadable: fetched again below
        if cached.get("version") != version:
            raise BuildError(f"cached runtime at {dest} is executorch {cached.get('version')}, the host has {version}")
        pins = WHEEL_SHA256.get(version)
        recorded = cached.get("sha256")
        if recorded is not None and (pins is None or recorded == pins.get(str(cached.get("wheel")))):
            return _check_complete(dest, arch, version)
        log.info("cached runtime at %s has no pinned wheel sha256; fetching it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        sha256: str | None = None
        if wheel is None:
            wheel = _fetch_wheel(arch, version, Path(tmp))
            sha256 = check_wheel_hash(wheel, version, fetched=True)  # before anything reads it
        elif not wheel.is_file():
            raise BuildError(f"--sdk-wheel {wheel} does not exist")
        got = _wheel_version(wheel)
        if got != version:
            raise BuildError(f"{wheel.name} is executorch {got}, but programs are exported with {version}: "
                             "the runtime must be the same version", hint=f"use the executorch=={version} wheel")
        if WHEEL_PLATFORMS[arch].split("_", 3)[-1] not in wheel.name:
            raise BuildError(f"{wheel.name} is not a wheel for {arch}")
        if sha256 is None:
            sha256 = check_wheel_hash(wheel, version, fetched=False)
        _unpack(wheel, dest, arch, version, sha256)
    return _check_complete(dest, arch, version)
