"""Shared fixtures. Exports are slow (a minute each on 2 cores), so each scheme is exported once per session.

``fakes``: a manifest with every field, and a host bundle made of small files. A fake bundle is a
real bundle in every respect a deploy checks (the required files, bundle.json with their hashes,
a manifest whose digest holds, an optional signature); only the runner is a shell script and the
libraries are a few bytes, so no compiler and no torch are needed.

``host_bundle``: the tiny model's real bundle for this machine (runner, libraries, program), built
once per session. ``sshd_server``: a real OpenSSH server on 127.0.0.1 (tests/sshd.py), one per session.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from fakebundle import FAKE_PTE, full_manifest, rewrite_info, snapshot, write_bundle
from sshd import start_sshd

pytest_plugins = ["pytester"]

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


@pytest.fixture(scope="session")
def host_bundle(hil_workdir):
    """The tiny model (8da4w) exported and built for the host board: a real runner with its libraries."""
    from toolchain import api

    exported, _ = api.cached_export("tiny", hil_workdir, quant="8da4w")
    bundle, _ = api.cached_build("host", exported.pte, hil_workdir)
    return bundle


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    """A running sshd on 127.0.0.1 for the whole session (an unprivileged board user; see tests/sshd.py).
    One that does not start fails the test with sshd's log: it is never skipped."""
    try:
        server = start_sshd(tmp_path_factory.mktemp("ssh-client"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()
