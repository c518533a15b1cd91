"""Where edgelm keeps things between runs."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout, when edgelm runs from one


def data_dir(name: str) -> Path:
    """boards/, firmware/ or models/: in an installed wheel the package's copy, toolchain/_data/NAME (setup.py puts
    it there), else the checkout's top-level folder (an editable install, or a run from the repository)."""
    packaged = resources.files("toolchain") / "_data" / name
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return REPO / name


BOARDS_DIR = data_dir("boards")
FIRMWARE_DIR = data_dir("firmware")
MODELS_DIR = data_dir("models")


def cache_dir() -> Path:
    """Fetched runtimes, trained preset weights, exports and builds (toolchain/cache.py): $EDGELM_CACHE, else
    $XDG_CACHE_HOME/edgelm, else ~/.cache/edgelm."""
    if os.environ.get("EDGELM_CACHE"):
        return Path(os.environ["EDGELM_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "edgelm"
