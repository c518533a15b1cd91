"""Shared fixtures. Exports are slow (a minute each on 2 cores), so each scheme is exported once per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """model name -> ExportResult, exported lazily and cached for the session."""
    from toolchain import api

    cache: dict[tuple[str, str], object] = {}

    def get(quant: str, max_seq_len: int = 128):
        key = (quant, str(max_seq_len))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{quant}-{max_seq_len}")
            cache[key] = api.export_model("tiny", out, quant=quant, max_seq_len=max_seq_len)
        return cache[key]

    return get
