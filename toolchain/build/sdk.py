"""The ExecuTorch C++ runtime for a board's architecture, from the executorch wheel.

The wheel ships the runtime as shared libraries, headers and a CMake config. For this machine's
architecture that is the installed package itself; for another one (aarch64 boards) it is the
wheel of exactly the installed executorch version for that platform, fetched once with pip and
unpacked into the cache. A runtime of another version is refused: the program format, the
kernels and the headers must all come from the version that exported the program.
"""

from __future__ import annotations

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
        raise BuildError("the executorch package is not installed", hint="run `make setup`")
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


def _unpack(wheel: Path, dest: Path, arch: str, version: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".sdk-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(("executorch/lib/", "executorch/include/", "executorch/share/")):
                    zf.extract(name, tmp)
        shutil.move(str(tmp / "executorch"), str(tmp / "sdk"))
        (tmp / "sdk" / "sdk.json").write_text(json.dumps({"arch": arch, "version": version, "wheel": wheel.name}))
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
        cached = json.loads((dest / "sdk.json").read_text())
        if cached.get("version") != version:
            raise BuildError(f"cached runtime at {dest} is executorch {cached.get('version')}, the host has {version}")
        return _check_complete(dest, arch, version)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        if wheel is None:
            wheel = _fetch_wheel(arch, version, Path(tmp))
        elif not wheel.is_file():
            raise BuildError(f"--sdk-wheel {wheel} does not exist")
        got = _wheel_version(wheel)
        if got != version:
            raise BuildError(f"{wheel.name} is executorch {got}, but programs are exported with {version}: "
                             "the runtime must be the same version", hint=f"use the executorch=={version} wheel")
        if WHEEL_PLATFORMS[arch].split("_", 3)[-1] not in wheel.name:
            raise BuildError(f"{wheel.name} is not a wheel for {arch}")
        _unpack(wheel, dest, arch, version)
    return _check_complete(dest, arch, version)
