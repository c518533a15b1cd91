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
SUITE_CACHE = "EDGELM_SUITE_CACHE"  # the cache this session (and its subprocesses, xdist's workers) uses
FETCHED = ("sdk", "presets", "debs", "ssh")  # fetched or trained once per machine: shared with the user's cache


def pytest_configure(config):
    """The suite keeps edgelm's cache (toolchain/cache.py: exports, builds) out of the user's: one folder for the
    whole session, so tests still reuse each other's exports; under --edgelm-workdir DIR, DIR/cache, so the next
    session with the same DIR reuses them too. What is fetched from the network or trained once per machine (the
    runtimes, the tiny preset's weights) stays shared with the user's cache through links, where it has them."""
    import tempfile

    from toolchain.hil.plugin import option
    from toolchain.paths import cache_dir

    if os.environ.get(SUITE_CACHE):
        os.environ["EDGELM_CACHE"] = os.environ[SUITE_CACHE]
        return
    user = cache_dir()
    given = option(config, "workdir")
    if given:
        suite = Path(given).expanduser().resolve() / "cache"
    else:
        suite = Path(tempfile.mkdtemp(prefix="edgelm-suite-cache-"))
        config.add_cleanup(lambda: __import__("shutil").rmtree(suite, ignore_errors=True))
    suite.mkdir(parents=True, exist_ok=True)
    for name in FETCHED:
        link = suite / name
        if (user / name).is_dir() and not link.exists() and not link.is_symlink():
            link.symlink_to(user / name, target_is_directory=True)
    os.environ[SUITE_CACHE] = os.environ["EDGELM_CACHE"] = str(suite)


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
