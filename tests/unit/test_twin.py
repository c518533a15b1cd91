"""Where the board's twin runs, and what judges when it cannot (no torch, no runner needed)."""

import dataclasses
import platform

import pytest

from toolchain import boards
from toolchain.validate import compare
from toolchain.validate.judge import Judge
from toolchain.validate.twin import command


def test_the_host_boards_twin_runs_natively_and_an_arm_boards_under_qemu_with_its_cpu():
    host = dataclasses.replace(boards.get("host"), arch=platform.machine())
    assert command(host) == ([], "native")
    prefix, how = command(boards.get("rpi5"))
    assert prefix is not None and prefix[0] == "qemu-aarch64" and prefix[-2:] == ["-cpu", "cortex-a76"]
    assert "-L" in prefix and how == "qemu-aarch64 -cpu cortex-a76"


def test_without_qemu_there_is_no_twin_and_the_reference_judges_saying_why(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    prefix, why = command(boards.get("rpi5"))
    assert prefix is None and "qemu-aarch64 is not installed" in why
    judge = Judge(board=boards.get("rpi5"), bundle_root=None, reference=object(), near_tie=0.05)
    assert judge.rule == compare.REFERENCE and "no twin" in judge.describe
    with pytest.raises(ValueError, match="a twin or a reference"):
        Judge(board=boards.get("rpi5"), bundle_root=None)


def test_a_bare_metal_board_has_no_twin_here():
    prefix, why = command(boards.get("corstone-300"))
    assert prefix is None and "armv8.1-m" in why


def test_a_thread_count_from_the_board_is_confined_before_a_twin_starts(tmp_path):
    from toolchain.errors import DeviceError
    from toolchain.link import protocol as P
    from toolchain.link.session import Collected

    judge = Judge(board=boards.get("rpi5"), bundle_root=tmp_path, reference=object())
    assert judge.rule == compare.TWIN
    c = Collected([5], [None], P.Stats(3, 1, P.STOP_LIMIT, 1.0, 1.0, 1.0, 0.0, 1), times_us=[10],
                  request=P.Request((1, 2, 3), 1))
    with pytest.raises(DeviceError, match="says it runs 1000000 threads"):
        judge.judge(c, P.Hello(1, "fw", "rpi5", "ab" * 32, 64, 10, 1_000_000, 1.0))
