"""The firmware for a bare-metal Cortex-M board (Corstone-300/320: Cortex-M55/M85 + Ethos-U).

``render`` writes a self-contained project from ``firmware/cortex-m/`` and the shared C sources of
``firmware/`` (frame, protocol, sampler, sha256) for a board and a verified manifest: the linker
script with the board's memory regions, the program (.pte) embedded in its program memory, the tensor
arena and the NPU scratch sized from the manifest's ``arm.budget``. ``compile_own_sources`` compiles
the firmware's own C with the board's flags and ``-Werror`` and links ``selftest.elf``, which runs on
``qemu-system-arm -M mps3-an547`` (tests/integration/test_cortexm_qemu.py). The runner
(``runner_cm.cpp``) is linked only against an ExecuTorch built for Cortex-M (``missing_runtime`` says
what such an install must hold); ``build`` does all three and never reports a link that did not happen.

Pure planning (``memory_map``, ``plan``, ``linker_script``) and I/O at the edges (files, compilers).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain import __version__
from toolchain.boards import Board, MemoryRegion
from toolchain.errors import BuildError, CapacityError, InputError, UsageError
from toolchain.paths import FIRMWARE_DIR

CORTEX_M_DIR = FIRMWARE_DIR / "cortex-m"
KIB = 1024
MIB = 1024 * KIB

# Sources of firmware/ shared with the Linux runner (not forked), and the Cortex-M ones.
SHARED_SOURCES = ("frame.c", "frame.h", "protocol.c", "protocol.h", "sampler.c", "sampler.h", "sha256.c", "sha256.h")
CORTEX_M_SOURCES = ("board.h", "startup.c", "uart_cmsdk.c", "uart_cmsdk.h", "cm_server.c", "cm_server.h",
                    "selftest.c", "runner_cm.cpp", "program.S")
TEMPLATES = ("board_config.h.in", "memory.ld.in", "CMakeLists.txt.in", "toolchain-arm-none-eabi.cmake.in")
# The firmware's own C, compiled here for the board (all but runner_cm.cpp, which needs ExecuTorch).
OWN_C_SOURCES = ("frame.c", "protocol.c", "sampler.c", "sha256.c", "uart_cmsdk.c", "startup.c", "cm_server.c",
                 "selftest.c")
PROGRAM_FILE = "model.pte"  # program.S embeds it
SELFTEST_ELF = "selftest.elf"
RUNNER_ELF = "runner_cm.elf"
OBJ_DIR = "obj"

C_FLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-g", "-ffunction-sections", "-fdata-sections",
           "-DEDGELM_BARE_METAL")
# No crt0: startup.c is the reset handler. newlib-nano's libc, libnosys's stubs for the system calls
# nothing here makes (startup.c's _sbrk takes precedence over libnosys's).
LINK_FLAGS = ("-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections")
COMPILE_TIMEOUT_S = 120.0  # one compiler or linker call
CMAKE_TIMEOUT_S = 900.0  # configuring and building the runner

STACK_BYTES = 32 * KIB  # as ExecuTorch's Corstone linker scripts (0x8000)
HEAP_BASE_BYTES = 32 * KIB  # newlib's own needs (reent, snprintf) on top of the sampler's and the context's
UART_PCLK_HZ = 25_000_000  # the Corstone FVPs' and MPS3's APB clock; QEMU ignores the divider
CPU_HZ = 25_000_000  # SysTick's rate: nominal (the FVPs and QEMU do not run in real time)

# ExecuTorch built for Cortex-M with the Arm backend (pytorch/executorch examples/arm/executor_runner):
# what the runner links. The ops libraries and the delegate register themselves from static constructors
# and are linked whole.
WHOLE_ARCHIVE_LIBS = ("libexecutorch_delegate_ethos_u.a", "libportable_ops_lib.a", "libcortex_m_ops_lib.a",
                      "libquantized_ops_lib.a")
LINK_LIBS = ("libportable_kernels.a", "libcortex_m_kernels.a", "libquantized_kernels.a", "libexecutorch.a",
             "libexecutorch_core.a", "libethosu_core_driver.a")
RUNTIME_LIBS = WHOLE_ARCHIVE_LIBS + LINK_LIBS
RUNTIME_HEADER = "include/executorch/runtime/executor/program.h"
ARM_BACKENDS = ("ethos-u", "tosa")


# ----------------------------------------------------------------------------------------------
# Memory map


Region = MemoryRegion  # the board profile's regions, as the linker script names them


@dataclass(frozen=True)
class MemoryMap:
    regions: tuple[Region, ...]
    code: str  # region of .text/.rodata (and .data's load image)
    data: str  # region of .data/.bss
    stack: str  # region of the stack

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)


def check_bare_metal(board: Board) -> None:
    if not board.bare_metal:
        raise UsageError(f"board {board.name} runs an OS; the Cortex-M firmware is for bare-metal boards",
                         hint="`edgelm boards` lists them (corstone-300, corstone-320)")


def memory_map(board: Board) -> MemoryMap:
    """The board profile's memory map (its [memory] table, checked when the profile was loaded)."""
    check_bare_metal(board)
    assert board.code_region and board.data_region and board.stack_region  # a bare-metal profile has them
    return MemoryMap(board.memory, board.code_region, board.data_region, board.stack_region)


# ----------------------------------------------------------------------------------------------
# Plan: what the manifest asks of the board's memory


@dataclass(frozen=True)
class Plan:
    board: str
    arena_bytes: int  # planned buffers + the method allocator, in SRAM
    npu_scratch_bytes: int  # the Ethos-U delegate's scratch, in SRAM
    heap_min_bytes: int  # sampler scratch + context + newlib, the rest of SRAM
    program_bytes: int  # the .pte, in the program memory
    program_region: str  # FLASH or DDR
    vocab_size: int
    max_seq_len: int
    backend: str


def _field(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise InputError(f"manifest has no {path}",
                             hint="re-export the program for this board with `edgelm export`")
        node = node[key]
    return node


def _count(body: dict[str, Any], path: str, minimum: int = 0) -> int:
    value = _field(body, path)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"manifest {path}={value!r}; expected an integer >= {minimum}")
    return value


def plan(board: Board, body: dict[str, Any], program_bytes: int) -> Plan:
    """Checks that the program of ``body`` (``program_bytes`` long) fits ``board``; returns the sizes."""
    mm = memory_map(board)
    backend = _field(body, "delegation.backend")
    if backend not in ARM_BACKENDS:
        raise UsageError(f"the program is delegated to {backend!r}; a Cortex-M board runs {ARM_BACKENDS[0]!r} programs",
                         hint=f"export with --board {board.name}")
    if backend != "ethos-u":
        raise UsageError(f"the program is delegated to {backend!r} (the TOSA reference model), which no board runs",
                         hint=f"export for the NPU: --board {board.name} (backend ethos-u)")
    exported_for = _field(body, "arm.board")
    if exported_for != board.name:
        raise UsageError(f"the program was exported for {exported_for}, not {board.name}",
                         hint=f"export again with --board {board.name}")
    if _field(body, "arm.target") != board.npu:
        raise UsageError(f"the program was compiled for NPU {_field(body, 'arm.target')}; {board.name} has {board.npu}")
    if _count(body, "arm.tokens_per_call", 1) != 1:
        raise UsageError("the Cortex-M runner feeds one token per call; the program expects "
                         f"{_field(body, 'arm.tokens_per_call')}")
    arena = _count(body, "arm.budget.arena_bytes", 1)
    scratch = _count(body, "arm.budget.npu_scratch_bytes")
    vocab = _count(body, "model.config.vocab_size", 1)
    max_seq_len = _count(body, "program.max_seq_len", 2)
    declared = _count(body, "program.size_bytes", 1)
    if declared != program_bytes:
        raise InputError(f"the manifest says the program is {declared} bytes; the file is {program_bytes}",
                         hint="the manifest is not this program's: re-export")
    heap = HEAP_BASE_BYTES + vocab * 16 + max_seq_len * 4  # sampler: ProbIndex (8) + double (8) per id
    sram = mm.region("SRAM").length
    need = arena + scratch + heap + 64  # alignment of the three regions
    if need > sram:
        raise CapacityError(f"{board.name} has {sram // KIB} KiB of SRAM; the program needs {need // KIB} KiB "
                            f"(arena {arena}, NPU scratch {scratch}, heap {heap} bytes)",
                            hint="export a smaller model or a shorter --max-seq-len, or use a board with more SRAM")
    region = board.program_memory or ""
    room = mm.region(region).length
    if program_bytes > room:
        raise CapacityError(f"the program is {program_bytes} bytes; {board.name}'s {board.program_memory} "
                            f"holds {room}", hint="export a smaller model or quantize it further")
    return Plan(board.name, arena, scratch, heap, program_bytes, region, vocab, max_seq_len, backend)


# ----------------------------------------------------------------------------------------------
# Rendering (pure text)


def linker_memory(mm: MemoryMap) -> str:
    return "\n".join(f"  {r.name:<6} ({r.attrs}) : ORIGIN = 0x{r.origin:08X}, LENGTH = 0x{r.length:08X}"
                     for r in mm.regions)


def firmware_version(firmware: Path = FIRMWARE_DIR) -> str:
    """edgelm's version plus a hash of every source the Cortex-M firmware is made of."""
    h = hashlib.sha256()
    for name in SHARED_SOURCES:
        h.update(name.encode() + b"\0" + (firmware / name).read_bytes())
    for name in CORTEX_M_SOURCES + TEMPLATES:
        h.update(name.encode() + b"\0" + (firmware / "cortex-m" / name).read_bytes())
    return f"{__version__}+cm{h.hexdigest()[:10]}"


def template_values(board: Board, p: Plan, firmware: Path = FIRMWARE_DIR) -> dict[str, str]:
    mm = memory_map(board)
    if board.uart_base is None:
        raise UsageError(f"board {board.name} has no uart_base")
    return {
        "BOARD": board.name,
        "FIRMWARE_VERSION": firmware_version(firmware),
        "UART_BASE": f"0x{board.uart_base:08X}",
        "BAUD": str(board.baud),
        "UART_PCLK_HZ": str(UART_PCLK_HZ),
        "CPU_HZ": str(CPU_HZ),
        "PROGRAM_BYTES": str(p.program_bytes),
        "ARENA_BYTES": str(p.arena_bytes),
        "NPU_SCRATCH_BYTES": str(p.npu_scratch_bytes),
        "HEAP_MIN_BYTES": str(p.heap_min_bytes),
        "STACK_BYTES": str(STACK_BYTES),
        "MAX_SEQ_LEN": str(p.max_seq_len),
        "VOCAB_SIZE": str(p.vocab_size),
        "MEMORY": linker_memory(mm),
        "CODE": mm.code,
        "DATA": mm.data,
        "STACK": mm.stack,
        "PROGRAM": p.program_region,
        "TRIPLE": board.triple,
        "CPU_FLAGS": " ".join(board.cpu_flags),
        "LINK_FLAGS": " ".join(LINK_FLAGS),
        "WHOLE_ARCHIVE_LIBS": " ".join(f'"${{ET_CM_DIR}}/lib/{lib}"' for lib in WHOLE_ARCHIVE_LIBS),
        "LIBS": " ".join(f'"${{ET_CM_DIR}}/lib/{lib}"' for lib in LINK_LIBS),
    }


def render(board: Board, body: dict[str, Any], pte: Path, dest: Path, firmware: Path = FIRMWARE_DIR) -> Path:
    """Writes the project for ``board`` and the program ``pte`` (whose verified manifest is ``body``)
    into ``dest`` (replaced); returns ``dest``."""
    from toolchain.bundle.render import substitute

    check_bare_metal(board)
    if not pte.is_file():
        raise InputError(f"{pte} does not exist")
    p = plan(board, body, pte.stat().st_size)
    values = template_values(board, p, firmware)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in SHARED_SOURCES:
        shutil.copy2(firmware / name, dest / name)
    for name in CORTEX_M_SOURCES:
        shutil.copy2(firmware / "cortex-m" / name, dest / name)
    for name in TEMPLATES:
        text = (firmware / "cortex-m" / name).read_text()
        (dest / name[:-3]).write_text(substitute(text, values, name))
    shutil.copy2(pte, dest / PROGRAM_FILE)
    return dest


# ----------------------------------------------------------------------------------------------
# Compiling (subprocesses)


def _tool(board: Board, name: str) -> str:
    path = shutil.which(f"{board.triple}-{name}")
    if path is None:
        raise BuildError(f"{board.triple}-{name} not found",
                         hint="install Debian's gcc-arm-none-eabi and libnewlib-arm-none-eabi (`make apt`)")
    return path


def _run(cmd: Sequence[str], cwd: Path, what: str, timeout_s: float = COMPILE_TIMEOUT_S) -> None:
    try:
        done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} took more than {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "no output")
        raise BuildError(f"{what} failed: {first.strip()}", hint=f"run it yourself in {cwd}: {' '.join(cmd)}")


def compile_source(board: Board, project: Path, source: str, extra: Sequence[str] = ()) -> Path:
    """Compiles one source of ``project`` for ``board``; returns the object's path."""
    gcc = _tool(board, "gcc")
    out = project / OBJ_DIR / (Path(source).stem + ".o")
    out.parent.mkdir(exist_ok=True)
    flags = list(board.cpu_flags) + (list(C_FLAGS) if source.endswith(".c") else ["-Wa,-I."])
    _run([gcc, *flags, *extra, "-I.", "-c", source, "-o", str(out.relative_to(project))], project,
         f"compiling {source} for {board.name}")
    return out


def compile_own_sources(board: Board, project: Path) -> list[Path]:
    """Compiles the firmware's own C (and the embedded program) in a rendered ``project`` with
    ``-Werror`` and links ``project/selftest.elf``; returns the objects."""
    check_bare_metal(board)
    if not (project / "memory.ld").is_file():
        raise UsageError(f"{project} is not a rendered Cortex-M project (no memory.ld)")
    objects = [compile_source(board, project, name) for name in OWN_C_SOURCES]
    objects.append(compile_source(board, project, "program.S"))
    gcc = _tool(board, "gcc")
    _run([gcc, *board.cpu_flags, "-T", "memory.ld", *LINK_FLAGS, "-Wl,-Map=selftest.map",
          *(str(o.relative_to(project)) for o in objects), "-lm", "-o", SELFTEST_ELF], project,
         f"linking {SELFTEST_ELF} for {board.name}")
    return objects


def missing_runtime(executorch_dir: Path | None) -> list[str]:
    """What an ExecuTorch-for-Cortex-M install folder lacks to link the runner (empty: nothing)."""
    if executorch_dir is None:
        return [RUNTIME_HEADER] + [f"lib/{lib}" for lib in RUNTIME_LIBS]
    missing = [] if (executorch_dir / RUNTIME_HEADER).is_file() else [RUNTIME_HEADER]
    return missing + [f"lib/{lib}" for lib in RUNTIME_LIBS if not (executorch_dir / "lib" / lib).is_file()]


def missing_cxx_runtime(board: Board) -> list[str]:
    """The C++ standard library for the board's compiler, when it lacks one (Debian's
    libstdc++-arm-none-eabi-newlib)."""
    gxx = shutil.which(f"{board.triple}-g++")
    if gxx is None:
        return [f"{board.triple}-g++"]
    done = subprocess.run([gxx, *board.cpu_flags, "-print-file-name=libstdc++.a"], capture_output=True,
                          text=True, timeout=COMPILE_TIMEOUT_S)
    found = done.stdout.strip()
    return [] if found and Path(found).is_absolute() and Path(found).is_file() else [
        "libstdc++.a for arm-none-eabi (Debian: libstdc++-arm-none-eabi-newlib)"]


@dataclass
class CortexMBuild:
    project: Path
    selftest_elf: Path
    objects: list[Path]
    plan: Plan
    linked: bool  # runner_cm.elf was linked (only when everything in `missing` was there)
    runner_elf: Path | None = None
    missing: list[str] = field(default_factory=list)  # what linking the runner needed and did not find

    @property
    def arena_bytes(self) -> int:
        return self.plan.arena_bytes


def build(board: Board, body: dict[str, Any], pte: Path, out: Path, executorch_dir: Path | None = None,
          progress: Callable[[str], None] = lambda _m: None) -> CortexMBuild:
    """Renders the project into ``out``, compiles the firmware's own sources and links the self-test;
    links the runner too when ``executorch_dir`` holds ExecuTorch built for Cortex-M."""
    progress(f"rendering the Cortex-M project for {board.name}")
    project = render(board, body, pte, out)
    progress(f"compiling the firmware's own sources ({' '.join(board.cpu_flags)})")
    objects = compile_own_sources(board, project)
    p = plan(board, body, pte.stat().st_size)
    missing = missing_runtime(executorch_dir) + missing_cxx_runtime(board)
    result = CortexMBuild(project, project / SELFTEST_ELF, objects, p, linked=False, missing=missing)
    if missing:
        progress(f"runner not linked: {len(missing)} missing, first {missing[0]}")
        return result
    assert executorch_dir is not None  # missing_runtime(None) lists everything
    cmake = shutil.which("cmake")
    if cmake is None:
        from toolchain import doctor

        raise BuildError("cmake not found", hint=doctor.hint("cmake"))
    progress("linking the runner against ExecuTorch for Cortex-M")
    build_dir = project / "build"
    _run([cmake, "-S", ".", "-B", "build", "-DCMAKE_TOOLCHAIN_FILE=toolchain-arm-none-eabi.cmake",
          f"-DET_CM_DIR={executorch_dir.resolve()}", "-DCMAKE_BUILD_TYPE=Release"], project,
         "configuring the Cortex-M runner", CMAKE_TIMEOUT_S)
    _run([cmake, "--build", "build", "--parallel"], project, "building the Cortex-M runner", CMAKE_TIMEOUT_S)
    elf = build_dir / RUNNER_ELF
    if not elf.is_file():
        raise BuildError(f"the Cortex-M build finished without {elf}")
    result.linked = True
    result.runner_elf = elf
    return result
