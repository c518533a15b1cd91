"""Fixtures for tests that flash a stand-in runner (see standin.py)."""

from __future__ import annotations

import subprocess
import time

import pytest
from standin import kill_leftovers, make_bundle


@pytest.fixture
def workdir(tmp_path):
    """A workdir for edgelm; whatever a failing test leaves running from it is killed afterwards."""
    work = tmp_path / "work"
    yield work
    kill_leftovers(work)


@pytest.fixture
def standin_bundle(tmp_path):
    """make(name, serving=True) -> a host bundle folder whose runner is a Python script."""
    return lambda name, serving=True: make_bundle(tmp_path / "bundles", name, serving)


@pytest.fixture
def sleeper():
    """A process of our own that lives a minute (a pid that means something)."""
    proc = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)
    yield proc
    proc.kill()
    proc.wait()
