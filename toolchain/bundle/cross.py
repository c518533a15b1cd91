"""Compile the rendered firmware with the board's compiler (cmake + g++ or the cross g++), and read
the highest glibc symbol version a binary needs.

A board whose glibc is older than the compiler's cannot load a runner the compiler links (its
crt1.o needs ``__libc_start_main@GLIBC_2.34``, its libm ``exp@GLIBC_2.29``). For such a board the
objects the compiler made are linked by ``zig cc`` (the ``ziglang`` package) for the glibc the
runtime libraries need (:func:`link_glibc`), so the runner needs no newer glibc than they do.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import subprocess
from pathlib import Path

from toolchain import doctor
from toolchain.boards import Board
from toolchain.bundle.sdk import Sdk
from toolchain.errors import BuildError, CapacityError

log = logging.getLogger(__name__)

RUNNER = "runner"
CMAKE_TIMEOUT_S = 900
_GLIBC = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")
_GLIBC_MACRO = re.compile(r"^#define __GLIBC(_MINOR)?__ (\d+)$", re.M)
ZIG_PACKAGE = "ziglang"


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    log.info("%s: %s", what, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=CMAKE_TIMEOUT_S)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} is not installed", hint=doctor.hint(cmd[0])) from None
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
        raise BuildError(f"the {board.arch} C++ compiler {cxx} is not installed",
                         hint=doctor.hint(cxx))
    return cc, cxx


def compiler_glibc(cc: str) -> tuple[int, int]:
    """The version of the glibc a C compiler builds against (its headers' __GLIBC__, __GLIBC_MINOR__)."""
    out = _run([cc, "-dM", "-E", "-include", "features.h", "-x", "c", "/dev/null"], f"read the glibc of {cc}")
    found = dict(_GLIBC_MACRO.findall(out))
    if "" not in found or "_MINOR" not in found:
        raise BuildError(f"{cc} does not build against glibc (no __GLIBC__ in its features.h)")
    return int(found[""]), int(found["_MINOR"])


def link_glibc(board: Board, sdk: Sdk) -> tuple[int, int] | None:
    """The glibc to link the runner for with zig cc, or None when the compiler's own will do.

    None when the compiler's glibc is no newer than the board's. Otherwise the highest glibc the
    runtime libraries need, so that the runner needs no more than they do; libraries that need a
    newer glibc than the board has are refused here, before anything is compiled.
    """
    cc, _ = compiler_for(board)
    if compiler_glibc(cc) <= board.glibc_tuple:
        return None
    floor = (0, 0)
    for lib in sdk.libs:
        needs = required_glibc(lib, board)
        if needs > board.glibc_tuple:
            raise CapacityError(f"{lib.name} needs GLIBC_{needs[0]}.{needs[1]} but {board.name} has glibc "
                                f"{board.glibc}",
                                hint="use a board OS with a newer glibc, or a runtime built for an older one")
        floor = max(floor, needs)
    return floor


def zig_binary() -> Path:
    """The zig binary of the installed ``ziglang`` package."""
    spec = importlib.util.find_spec(ZIG_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    zig = Path(folders[0], "zig") if folders else None
    if zig is None or not zig.is_file():
        raise BuildError("zig, which links the runner for a board with an older glibc than the compiler's, "
                         "is not installed", hint=doctor.hint("zig"))
    return zig


def configure_and_build(board: Board, project: Path, sdk: Sdk, sanitize: bool = False, *,
                        cmake_defs: dict[str, str] | None = None) -> Path:
    """cmake configure + build in ``project/build``; returns the runner binary. ``cmake_defs`` adds
    ``-DNAME=VALUE`` options (e.g. ``{"EDGELM_TEST_SAMPLER_BUG": "ON"}``, firmware/CMakeLists.txt).

    For a board with an older glibc than the compiler's, the runner is linked by zig cc for the
    glibc of :func:`link_glibc`."""
    cc, cxx = compiler_for(board)
    project = project.resolve()  # cmake resolves a relative toolchain file against the build dir
    if sdk.arch != board.arch:
        raise BuildError(f"runtime for {sdk.arch} given for a {board.arch} board")
    glibc = link_glibc(board, sdk)
    if glibc is not None and sanitize:
        raise BuildError(f"a sanitized runner is linked by the compiler, whose glibc is newer than {board.name}'s "
                         f"{board.glibc}", hint="sanitize a build for the host board")
    build = project / "build"
    cmd = ["cmake", "-S", str(project), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
           f"-DET_SDK_DIR={sdk.root}", f"-DEDGELM_CPU_FLAGS={' '.join(board.cpu_flags)}",
           f"-DEDGELM_SANITIZE={'ON' if sanitize else 'OFF'}"]
    if board.cross_prefix:
        cmd.append(f"-DCMAKE_TOOLCHAIN_FILE={project / 'toolchain-cross.cmake'}")
    else:
        cmd += [f"-DCMAKE_C_COMPILER={cc}", f"-DCMAKE_CXX_COMPILER={cxx}"]
    if glibc is not None:
        log.info("%s has glibc %s, older than the compiler's: the runner is linked by zig cc for glibc %d.%d",
                 board.name, board.glibc, *glibc)
        cmd += [f"-DEDGELM_ZIG={zig_binary()}", f"-DEDGELM_ZIG_TARGET={board.triple}.{glibc[0]}.{glibc[1]}"]
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
        raise BuildError(f"{objdump} is not installed", hint=doctor.hint(objdump))
    out = _run([objdump, "-T", str(binary)], f"read symbol versions of {binary.name}")
    found = [(int(a), int(b)) for a, b, _ in _GLIBC.findall(out)]
    return max(found) if found else (0, 0)


