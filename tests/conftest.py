"""Shared fixtures. Exports are slow (a minute each on 2 cores), so each scheme is exported once per session.

``fakes``: a manifest with every field, and a host bundle made of small files. A fake bundle is a
real bundle in every respect a deploy checks (the required files, bundle.json with their hashes,
a manifest whose digest holds, an optional signature); only the runner is a shell script and the
libraries are a few bytes, so no compiler and no torch are needed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from fakebundle import FAKE_PTE, full_manifest, rewrite_info, snapshot, write_bundle

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


class Fakes:
    """The helpers above, handed to tests as the ``fakes`` fixture (no import of conftest needed)."""

    FAKE_PTE = FAKE_PTE
    full_manifest = staticmethod(full_manifest)
    write_bundle = staticmethod(write_bundle)
    rewrite_info = staticmethod(rewrite_info)
    snapshot = staticmethod(snapshot)


@pytest.fixture
def fakes() -> type[Fakes]:
    return Fakes
