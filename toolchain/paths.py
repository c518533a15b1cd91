"""Where edgelm keeps things between runs."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO / "firmware"


def cache_dir() -> Path:
    """Fetched runtimes and trained preset weights: $EDGELM_CACHE, else ~/.cache/edgelm."""
    return Path(os.environ.get("EDGELM_CACHE", Path.home() / ".cache" / "edgelm"))
