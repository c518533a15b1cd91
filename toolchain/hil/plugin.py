"""pytest plugin for board-in-the-loop tests.

Tests marked ``hil`` that take the ``hil_board`` fixture run once per selected board:

    pytest --board rpi5:qemu --board host:local     # the default: both emulated/simulated boards
    pytest --board rpi4:qemu                        # another profile under emulation

``hil_workdir`` is shared by the whole session, so exports and builds are reused across tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

DEFAULT_BOARDS = ("rpi5:qemu", "host:local")


@dataclass(frozen=True)
class HilBoard:
    board: str
    target: str

    def __str__(self) -> str:
        return f"{self.board}:{self.target}"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgelm", "edgelm board-in-the-loop")
    group.addoption("--board", action="append", default=None, metavar="BOARD:TARGET",
                    help=f"board and target for hil tests (repeatable; default {' '.join(DEFAULT_BOARDS)})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: board-in-the-loop test; runs once per --board BOARD:TARGET")


def _selected(config: pytest.Config) -> list[HilBoard]:
    out = []
    for spec in config.getoption("--board") or DEFAULT_BOARDS:
        board, _, target = spec.partition(":")
        if not board or not target:
            raise pytest.UsageError(f"--board {spec!r}: expected BOARD:TARGET, e.g. rpi5:qemu")
        out.append(HilBoard(board, target))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hil_board" in metafunc.fixturenames:
        boards = _selected(metafunc.config)
        metafunc.parametrize("hil_board", boards, ids=[str(b) for b in boards], scope="session")


@pytest.fixture(scope="session")
def hil_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edgelm-hil")
