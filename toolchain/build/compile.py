"""Configure and build the rendered firmware with the board's compiler, then assemble the bundle.

A bundle is everything the board needs and nothing else: the runner, the runtime libraries it
links, the program and its manifest, and ``bundle.json`` with the sha256 of every file. Before
a bundle is declared good, the highest GLIBC symbol version its binaries need is checked against
the board's glibc.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.boards import Board
from toolchain.build.sdk import Sdk
from toolchain.errors import BuildError, CapacityError
from toolchain.export import manifest as pte_manifest

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "edgelm-bundle/1"
BUNDLE_FILE = "bundle.json"
RUNNER = "runner"
CMAKE_TIMEOUT_S = 900
_GLIBC = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")


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


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    log.info("%s: %s", what, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=CMAKE_TIMEOUT_S)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} is not installed", hint="run `make setup`") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} timed out after {CMAKE_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip()]
        errors = [x for x in lines if "error" in x.lower()] or lines
        raise BuildError(f"{what} failed: {errors[0].strip() if errors else 'exit ' + str(proc.returncode)}")
    return proc.stdout


def compiler_for(board: Board) -> tuple[str, str]:
    prefix = board.cross_prefix
    cc, cxx = f"{prefix}gcc", f"{prefix}g++"
    if shutil.which(cxx) is None:
        package = f"g++-{board.triple}" if prefix else "g++"
        raise BuildError(f"the {board.arch} C++ compiler {cxx} is not installed",
                         hint=f"`make setup` installs Debian's {package}")
    return cc, cxx


def configure_and_build(board: Board, project: Path, sdk: Sdk, sanitize: bool = False, *,
                        cmake_defs: dict[str, str] | None = None) -> Path:
    """cmake configure + build in ``project/build``; returns the runner binary. ``cmake_defs`` adds
    ``-DNAME=VALUE`` options (e.g. ``{"EDGELM_TEST_SAMPLER_BUG": "ON"}``, firmware/CMakeLists.txt)."""
    cc, cxx = compiler_for(board)
    project = project.resolve()  # cmake resolves a relative toolchain file against the build dir
    if sdk.arch != board.arch:
        raise BuildError(f"runtime for {sdk.arch} given for a {board.arch} board")
    build = project / "build"
    cmd = ["cmake", "-S", str(project), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
           f"-DET_SDK_DIR={sdk.root}", f"-DEDGELM_CPU_FLAGS={' '.join(board.cpu_flags)}",
           f"-DEDGELM_SANITIZE={'ON' if sanitize else 'OFF'}"]
    if board.cross_prefix:
        cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={project / 'toolchain-cross.cmake'}")
    else:
        cmd += [f"-DCMAKE_C_COMPILER={cc}", f"-DCMAKE_CXX_COMPILER={cxx}"]
    cmd += [f"-D{name}={value}" for name, value in (cmake_defs or {}).items()]
    _run(cmd, "cmake configure")
    _run(["cmake", "--build", str(build), "--parallel", "2"], "compile")
    runner = build / RUNNER
    if not runner.exists():
        raise BuildError(f"the build finished without producing {runner}")
    return runner


def required_glibc(binary: Path, board: Board) -> tuple[int, int]:
    """Highest GLIBC_x.y version a binary's dynamic symbols need (objdump -T)."""
    objdump = f"{board.cross_prefix}objdump"
    if shutil.which(objdump) is None:
        raise BuildError(f"{objdump} is not installed", hint="`make setup` installs the binutils")
    out = _run([objdump, "-T", str(binary)], f"read symbol versions of {binary.name}")
    found = [(int(a), int(b)) for a, b, _ in _GLIBC.findall(out)]
    return max(found) if found else (0, 0)


def assemble(board: Board, runner: Path, sdk: Sdk, pte: Path, dest: Path, firmware_version: str,
             manifest: dict[str, Any] | None = None) -> Bundle:
    """Copy runner + libs + program into ``dest`` (replaced), check glibc, write bundle.json.

    ``manifest``: the program's manifest if the caller has already read (and so verified) it.
    """
    if manifest is None:
        manifest = pte_manifest.read(pte)  # refuses a non-program or a hash mismatch
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(runner, dest / RUNNER)
    for lib in sdk.libs:
        shutil.copy2(lib, dest / lib.name)
    shutil.copy2(pte, dest / pte_manifest.PROGRAM_FILE)
    shutil.copy2(pte.parent / pte_manifest.MANIFEST_FILE, dest / pte_manifest.MANIFEST_FILE)
    needs: dict[str, str] = {}
    for binary in [dest / RUNNER, *(dest / lib.name for lib in sdk.libs)]:
        major, minor = required_glibc(binary, board)
        needs[binary.name] = f"{major}.{minor}"
        if (major, minor) > board.glibc_tuple:
            raise CapacityError(f"{binary.name} needs GLIBC_{major}.{minor} but {board.name} has glibc {board.glibc}",
                                hint="build on (or with a sysroot of) a system no newer than the board's OS")
    highest = max(needs.values(), key=lambda v: tuple(int(x) for x in v.split(".")))
    files = {p.name: pte_manifest.sha256_file(p) for p in sorted(dest.iterdir()) if p.is_file()}
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
        "size_bytes": sum(p.stat().st_size for p in dest.iterdir() if p.is_file()),
    }
    (dest / BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log.info("bundle %s: %d files, needs glibc %s (board has %s)", dest, len(files), highest, board.glibc)
    return Bundle(dest, info)


def read_bundle(root: Path) -> Bundle:
    path = root / BUNDLE_FILE
    if not path.exists():
        from toolchain.errors import InputError

        raise InputError(f"{root} is not an edgelm bundle (no {BUNDLE_FILE})", hint="run `edgelm build` first")
    info = json.loads(path.read_text())
    return Bundle(root, info)


def verify_bundle(bundle: Bundle) -> None:
    """Every file present with the hash bundle.json records (what a deploy checks on arrival)."""
    from toolchain.errors import InputError

    for name, digest in bundle.files.items():
        path = bundle.root / name
        if not path.exists():
            raise InputError(f"bundle {bundle.root} lacks {name}")
        if pte_manifest.sha256_file(path) != digest:
            raise InputError(f"bundle file {path} does not match its sha256 in {BUNDLE_FILE}")
