"""Which glibc the runner is linked for: the compiler's own, or (for a board with an older glibc)
the runtime libraries' floor, linked by zig cc. A stand-in compiler and objdump on PATH play the
toolchain: the compiler reports its glibc, objdump prints a fake library's text as its symbols."""

import dataclasses

import pytest

from toolchain import boards
from toolchain.bundle import cross, sdk
from toolchain.errors import BuildError, CapacityError

LIB_GLIBC = {"libexecutorch.so": "2.27", "libexecutorch_kernels_optimized.so": "2.27"}  # the others: 2.17


@pytest.fixture
def toolchain(tmp_path, monkeypatch):
    """make(compiler_glibc, board) -> the runtime whose libraries need LIB_GLIBC; stand-ins on PATH."""
    def make(compiler_glibc: str | None, board: boards.Board) -> sdk.Sdk:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        macros = "" if compiler_glibc is None else \
            "#define __GLIBC__ {}\n#define __GLIBC_MINOR__ {}\n".format(*compiler_glibc.split("."))
        for tool, body in (("gcc", f"printf '{macros}'"), ("g++", "exit 0"), ("objdump", 'cat "$2"')):
            script = bin_dir / f"{board.cross_prefix}{tool}"
            script.write_text(f"#!/bin/sh\n{body}\n")
            script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        (tmp_path / "sdk" / "lib").mkdir(parents=True, exist_ok=True)
        for name in sdk.RUNTIME_LIBS:
            version = LIB_GLIBC.get(name, "2.17")
            (tmp_path / "sdk" / "lib" / name).write_text(
                f"0000000000000000      DF *UND*  0000000000000000 (GLIBC_{version}) memcpy\n"
                "0000000000000000      DF *UND*  0000000000000000 (GLIBCXX_3.4.22) _Znwm\n")
        return sdk.Sdk(arch=board.arch, version="test", root=tmp_path / "sdk")
    return make


def _board(name, glibc):
    return dataclasses.replace(boards.get(name), glibc=glibc)


def test_the_compilers_glibc_is_read_from_its_headers(toolchain):
    board = boards.get("rpi4")
    toolchain("2.36", board)
    assert cross.compiler_glibc(f"{board.cross_prefix}gcc") == (2, 36)


def test_a_board_with_the_compilers_glibc_is_linked_by_the_compiler(toolchain):
    board = boards.get("rpi5")
    assert cross.link_glibc(board, toolchain("2.36", board)) is None


def test_a_board_with_an_older_glibc_is_linked_for_the_runtime_libraries_floor(toolchain):
    board = boards.get("rpi4")  # Pi OS bullseye: glibc 2.31
    assert cross.link_glibc(board, toolchain("2.36", board)) == (2, 27)


def test_runtime_libraries_newer_than_the_board_are_refused_naming_the_first(toolchain):
    board = _board("rpi4", "2.26")
    with pytest.raises(CapacityError, match=r"^libexecutorch\.so needs GLIBC_2\.27 but rpi4 has glibc 2\.26$"):
        cross.link_glibc(board, toolchain("2.36", board))


def test_a_compiler_without_glibc_is_a_build_error(toolchain):
    board = boards.get("rpi4")
    with pytest.raises(BuildError, match="does not build against glibc"):
        cross.link_glibc(board, toolchain(None, board))


def test_a_missing_zig_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(cross, "ZIG_PACKAGE", "edgelm_no_such_package")
    with pytest.raises(BuildError, match="zig, which links the runner .* is not installed") as err:
        cross.zig_binary()
    assert "pip install ziglang" in err.value.hint and "edgelm doctor" in err.value.hint


def test_zig_comes_from_the_ziglang_package():
    assert cross.zig_binary().name == "zig"
