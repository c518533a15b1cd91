"""Compile the rendered firmware with the board's compiler (cmake + g++ or the cross g++), and read
the highest glibc symbol version a binary needs."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from toolchain.boards import Board
from toolchain.bundle.sdk import Sdk
from toolchain.errors import BuildError

log = logging.getLogger(__name__)

RUNNER = "runner"
CMAKE_TIMEOUT_S = 900
_GLIBC = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")


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


