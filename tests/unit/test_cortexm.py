"""The Cortex-M firmware for bare-metal boards (toolchain/bundle/cortexm.py): rendering, the
memory plan, compiling the firmware's own C with -Werror for Corstone-300 and -320, and the
runner's C++ checked against ExecuTorch's headers. No torch; needs arm-none-eabi-gcc and g++."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from toolchain import boards
from toolchain.bundle import cortexm
from toolchain.errors import BuildError, CapacityError, InputError, UsageError

ARENA = 512 * 1024
SCRATCH = 128 * 1024
WHEEL_INCLUDE = Path(__import__("sysconfig").get_paths()["purelib"]) / "executorch" / "include"


def fake_program(path: Path, size: int = 10_000) -> Path:
    path.write_bytes(b"\x00\x00\x00\x00ET12" + bytes(i % 251 for i in range(size - 8)))
    return path


def arm_body(board: boards.Board, pte: Path, arena: int = ARENA, scratch: int = SCRATCH, **over) -> dict:
    body = {
        "delegation": {"backend": "ethos-u"},
        "arm": {"target": board.npu, "board": board.name, "tokens_per_call": 1,
                "budget": {"arena_bytes": arena, "npu_scratch_bytes": scratch, "program_bytes": pte.stat().st_size,
                           "state_bytes": 4096, "sram_bytes_needed": arena + scratch}},
        "program": {"size_bytes": pte.stat().st_size, "max_seq_len": 128},
        "model": {"config": {"vocab_size": 1000}},
        "tokens": {"eos_token_ids": [7], "bos_token_id": 1},
    }
    for path, value in over.items():
        node = body
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return body


@pytest.fixture
def pte(tmp_path):
    return fake_program(tmp_path / "model.pte")


@pytest.fixture(params=["corstone-300", "corstone-320"])
def board(request):
    return boards.get(request.param)


# -- Rendering ---------------------------------------------------------------------------------


def test_render_sizes_the_regions_from_the_board_and_the_manifest(board, pte, tmp_path):
    project = cortexm.render(board, arm_body(board, pte), pte, tmp_path / "p")
    ld = (project / "memory.ld").read_text()
    assert f"SRAM   (rw) : ORIGIN = 0x31000000, LENGTH = 0x{board.sram_bytes:08X}" in ld
    assert f"__arena_size = {ARENA};" in ld
    assert f"__npu_scratch_size = {SCRATCH};" in ld
    program_region = board.program_memory
    assert re.search(rf"KEEP\(\*\(\.edgelm_program\)\)\n  \}} > {program_region}\n", ld)
    assert f"LENGTH = 0x{board.program_memory_bytes:08X}" in ld
    assert "@" not in ld
    config = (project / "board_config.h").read_text()
    assert f"#define ARENA_BYTES {ARENA}u" in config
    assert f"#define NPU_SCRATCH_BYTES {SCRATCH}u" in config
    assert f"#define UART_BASE 0x{board.uart_base:08X}u" in config
    assert f'#define EDGELM_BOARD "{board.name}"' in config
    cmake = (project / "CMakeLists.txt").read_text()
    assert f"set(EDGELM_CPU_FLAGS {' '.join(board.cpu_flags)})" in cmake
    for lib in cortexm.RUNTIME_LIBS:
        assert f"${{ET_CM_DIR}}/lib/{lib}" in cmake
    assert "arm-none-eabi-g++" in (project / "toolchain-arm-none-eabi.cmake").read_text()
    assert (project / "model.pte").read_bytes() == pte.read_bytes()
    for name in cortexm.SHARED_SOURCES:  # copied from firmware/, not forked
        assert (project / name).read_bytes() == (cortexm.FIRMWARE_DIR / name).read_bytes()


def test_a_board_with_an_os_is_refused(pte, tmp_path):
    rpi5 = boards.get("rpi5")
    with pytest.raises(UsageError, match="rpi5 runs an OS"):
        cortexm.render(rpi5, {}, pte, tmp_path / "p")
    with pytest.raises(UsageError):
        cortexm.compile_own_sources(rpi5, tmp_path)


def test_a_program_for_another_board_or_backend_is_refused(pte, tmp_path):
    c300 = boards.get("corstone-300")
    with pytest.raises(UsageError, match="exported for corstone-320, not corstone-300"):
        cortexm.render(c300, arm_body(c300, pte, arm__board="corstone-320"), pte, tmp_path / "p")
    with pytest.raises(UsageError, match="TOSA reference model"):
        cortexm.render(c300, arm_body(c300, pte, delegation__backend="tosa"), pte, tmp_path / "p")
    with pytest.raises(UsageError, match="one token per call"):
        cortexm.render(c300, arm_body(c300, pte, arm__tokens_per_call=4), pte, tmp_path / "p")
    with pytest.raises(InputError, match="manifest has no arm.budget.arena_bytes"):
        body = arm_body(c300, pte)
        del body["arm"]["budget"]["arena_bytes"]
        cortexm.render(c300, body, pte, tmp_path / "p")
    with pytest.raises(InputError, match="the file is 10000"):
        cortexm.render(c300, arm_body(c300, pte, program__size_bytes=5), pte, tmp_path / "p")


def test_an_arena_larger_than_the_sram_is_refused(pte, tmp_path):
    c300 = boards.get("corstone-300")
    with pytest.raises(CapacityError, match="corstone-300 has 2048 KiB of SRAM"):
        cortexm.render(c300, arm_body(c300, pte, arena=2 * 1024 * 1024), pte, tmp_path / "p")


def test_a_program_larger_than_its_memory_is_refused(tmp_path):
    c300 = boards.get("corstone-300")
    big = fake_program(tmp_path / "big.pte", 8 * 1024 * 1024 + 16)
    with pytest.raises(CapacityError, match="corstone-300's FLASH holds 8388608"):
        cortexm.render(c300, arm_body(c300, big), big, tmp_path / "p")


# -- The runtime an install must hold ----------------------------------------------------------


def test_missing_runtime_lists_everything_for_an_empty_folder(tmp_path):
    expected = [cortexm.RUNTIME_HEADER] + [f"lib/{lib}" for lib in cortexm.RUNTIME_LIBS]
    assert cortexm.missing_runtime(tmp_path) == expected
    assert cortexm.missing_runtime(None) == expected
    for name in ("libexecutorch.a", "libexecutorch_core.a", "libexecutorch_delegate_ethos_u.a",
                 "libportable_kernels.a", "libcortex_m_kernels.a", "libethosu_core_driver.a"):
        assert f"lib/{name}" in expected


def test_missing_runtime_is_empty_for_a_complete_folder(tmp_path):
    (tmp_path / cortexm.RUNTIME_HEADER).parent.mkdir(parents=True)
    (tmp_path / cortexm.RUNTIME_HEADER).write_text("")
    (tmp_path / "lib").mkdir()
    for lib in cortexm.RUNTIME_LIBS[1:]:
        (tmp_path / "lib" / lib).write_bytes(b"!<arch>\n")
    assert cortexm.missing_runtime(tmp_path) == [f"lib/{cortexm.RUNTIME_LIBS[0]}"]
    (tmp_path / "lib" / cortexm.RUNTIME_LIBS[0]).write_bytes(b"!<arch>\n")
    assert cortexm.missing_runtime(tmp_path) == []


# -- Compiling ---------------------------------------------------------------------------------


def _symbol(elf: Path, name: str) -> int:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        addr, _kind, sym = line.split()[:3] if len(line.split()) == 3 else ("", "", "")
        if sym == name:
            return int(addr, 16)
    raise AssertionError(f"{name} not in {elf}")


def test_own_sources_compile_with_werror_and_link_the_selftest(board, pte, tmp_path):
    body = arm_body(board, pte)
    project = cortexm.render(board, body, pte, tmp_path / "p")
    objects = cortexm.compile_own_sources(board, project)
    assert sorted(o.name for o in objects) == sorted(Path(s).stem + ".o" for s in
                                                     cortexm.OWN_C_SOURCES + ("program.S",))
    elf = project / cortexm.SELFTEST_ELF
    assert elf.read_bytes()[:4] == b"\x7fELF" and elf.read_bytes()[18] == 40  # e_machine EM_ARM
    mm = cortexm.memory_map(board)
    program = mm.region(board.program_memory)
    start = _symbol(elf, "edgelm_program_start")
    assert program.origin <= start < program.origin + program.length
    assert _symbol(elf, "edgelm_program_end") - start == pte.stat().st_size
    assert _symbol(elf, "__arena_end") - _symbol(elf, "__arena_start") == ARENA
    assert _symbol(elf, "__npu_scratch_end") - _symbol(elf, "__npu_scratch_start") == SCRATCH
    assert _symbol(elf, "Reset_Handler") >= mm.region(mm.code).origin


def test_werror_is_live(pte, tmp_path):
    c300 = boards.get("corstone-300")
    project = cortexm.render(c300, arm_body(c300, pte), pte, tmp_path / "p")
    (project / "warns.c").write_text("int f(int x) { int unused; return x; }\n")
    with pytest.raises(BuildError, match="unused"):
        cortexm.compile_source(c300, project, "warns.c")


def test_build_links_no_runner_without_the_runtime(pte, tmp_path, monkeypatch):
    c300 = boards.get("corstone-300")
    # No arm C++ library (apt may have brought Debian's libstdc++-arm-none-eabi-newlib as a
    # recommendation of gcc-arm-none-eabi: the test says it is absent, whatever this machine has).
    no_cxx = ["libstdc++.a for arm-none-eabi (Debian: libstdc++-arm-none-eabi-newlib)"]
    monkeypatch.setattr(cortexm, "missing_cxx_runtime", lambda board: list(no_cxx))
    fake = tmp_path / "et"  # every file there, but no arm C++ library: still not linked
    (fake / cortexm.RUNTIME_HEADER).parent.mkdir(parents=True)
    (fake / cortexm.RUNTIME_HEADER).write_text("")
    (fake / "lib").mkdir()
    for lib in cortexm.RUNTIME_LIBS:
        (fake / "lib" / lib).write_bytes(b"!<arch>\n")
    said = []
    result = cortexm.build(c300, arm_body(c300, pte), pte, tmp_path / "out", executorch_dir=None, progress=said.append)
    assert not result.linked and result.runner_elf is None
    assert result.missing[:len(cortexm.RUNTIME_LIBS) + 1] == cortexm.missing_runtime(None)
    assert result.selftest_elf.is_file() and result.arena_bytes == ARENA
    assert any("runner not linked" in s for s in said)
    result = cortexm.build(c300, arm_body(c300, pte), pte, tmp_path / "out2", executorch_dir=fake)
    assert result.missing == no_cxx
    assert not result.linked and result.runner_elf is None


# -- The runner's C++ against ExecuTorch's headers ---------------------------------------------


def test_runner_cm_compiles_against_the_executorch_headers(pte, tmp_path):
    """No ExecuTorch for Cortex-M here: the host g++ checks runner_cm.cpp's syntax and types against
    the x86 wheel's headers (the same API), with the defines executorch-config.cmake gives consumers.
    board.h and uart_cmsdk.h are plain declarations and stand in for the HAL as they are."""
    assert (WHEEL_INCLUDE / "executorch/runtime/executor/program.h").is_file(), WHEEL_INCLUDE
    gxx = shutil.which("g++")
    assert gxx, "g++ not found"
    c300 = boards.get("corstone-300")
    project = cortexm.render(c300, arm_body(c300, pte), pte, tmp_path / "p")
    cmd = [gxx, "-fsyntax-only", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-I", str(project),
           "-isystem", str(WHEEL_INCLUDE),
           "-isystem", str(WHEEL_INCLUDE / "executorch/runtime/core/portable_type/c10"),
           "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED", "-DEDGELM_BARE_METAL",
           str(project / "runner_cm.cpp")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # ... and it really is checked: a type error in it is reported
    bad = project / "runner_cm.cpp"
    bad.write_text(bad.read_text().replace("rt->method->execute();", "rt->method->execute(42);"))
    assert subprocess.run(cmd, capture_output=True, text=True).returncode != 0
