"""pytest plugin for board-in-the-loop tests.

Tests marked ``hil`` that take the ``hil_board`` fixture run once per selected board:

    pytest --board rpi5:qemu --board host:local     # the default: both emulated/simulated boards
    pytest --board rpi4:qemu                        # another profile under emulation
    pytest --board rpi5:ssh://pi@raspberrypi.local  # a real Pi 5 on the network (SSH channel link)
    pytest --board rpi5:ssh://pi@rpi5 --hil-port usb:0403:6001   # ...with its UART on a USB-serial adapter

``hil_up(bundle)`` brings the selected board up with a bundle, through the one bring-up routine
(:func:`toolchain.deploy.bringup.bring_up`): tests never compose deploy, link and start themselves.

``hil_workdir`` is shared by the whole session, so exports and builds are reused across tests.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
                    help=f"board and target spec for hil tests (repeatable; default {' '.join(DEFAULT_BOARDS)})")
    group.addoption("--hil-port", default=None, metavar="PORT",
                    help="the host's serial port wired to the board's UART (a path, URL or usb:VID:PID[:SERIAL])")
    group.addoption("--hil-board-port", default=None, metavar="DEV", help="the board's serial device")
    group.addoption("--hil-ssh-config", default=None, metavar="FILE", help="an ssh_config file for ssh:// targets")
    group.addoption("--hil-accept-new-host-key", action="store_true", help="trust a host key seen for the first time")


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


@pytest.fixture(scope="session")
def hil_options(request: pytest.FixtureRequest) -> Any:
    """The TargetOptions the command line gave for the boards in the loop."""
    from toolchain.deploy.registry import TargetOptions

    cfg = request.config.getoption("--hil-ssh-config")
    return TargetOptions(port=request.config.getoption("--hil-port"),
                         board_port=request.config.getoption("--hil-board-port"),
                         ssh_config=Path(cfg) if cfg else None,
                         accept_new_host_key=request.config.getoption("--hil-accept-new-host-key"))


@pytest.fixture()
def hil_up(hil_board: HilBoard, hil_workdir: Path, hil_options: Any) -> Callable[..., AbstractContextManager[Any]]:
    """``with hil_up(bundle, **bring_up_options) as up:`` the selected board serving ``bundle``."""
    from toolchain import api
    from toolchain.deploy.bringup import bring_up

    def up(bundle: Any, **kw: Any) -> AbstractContextManager[Any]:
        target = api.target_for(hil_board.board, hil_board.target, hil_workdir, hil_options)
        return bring_up(target, bundle, **kw)

    return up
