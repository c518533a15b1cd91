"""edgelm's one cache (toolchain/cache.py): an entry appears whole or not at all, two processes that want the
same entry make it once, `edgelm cache list|prune` see and remove entries nobody uses, least recently used first."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from toolchain import cache, paths

REPO = Path(__file__).resolve().parents[2]

# One process's way to an entry: its make writes a first file, waits, writes a second; it counts its makes in
# MADE. Whoever gets the entry checks both files are there (nobody sees half an entry).
WANT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from toolchain import cache

    made = Path(sys.argv[1])

    def make(tmp):
        with made.open("a") as f:
            f.write(f"{os.getpid()}\\n")
        (tmp / "first").write_text("1")
        time.sleep(float(sys.argv[2]))
        (tmp / "second").write_text("2" * 1000)

    waits = []
    folder, reused = cache.entry("exports", "k1", make, waiting=waits.append)
    assert (folder / "first").read_text() == "1" and (folder / "second").read_text() == "2" * 1000, "half an entry"
    print(json.dumps({"folder": str(folder), "reused": reused, "waited": waits}), flush=True)
    time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 0)
""")


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def want(root: Path, made: Path, make_s: float, hold_s: float = 0) -> subprocess.Popen:
    env = {**os.environ, "EDGELM_CACHE": str(root), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WANT, str(made), str(make_s), str(hold_s)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_that_want_the_same_entry_make_it_once_and_both_get_it_whole(root, tmp_path):
    made = tmp_path / "made"
    first = want(root, made, 2.0)
    deadline = time.monotonic() + 30
    while not made.exists():  # the first is making it
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.02)
    second = want(root, made, 2.0)
    outs = []
    for proc in (first, second):
        out, errs = proc.communicate(timeout=60)
        assert proc.returncode == 0, errs
        outs.append(json.loads(out))
    assert len(made.read_text().split()) == 1  # made once
    assert outs[0]["folder"] == outs[1]["folder"] == str(root / "exports" / "k1")
    assert [o["reused"] for o in outs] == [False, True]
    assert outs[1]["waited"] and "waiting for pid" in outs[1]["waited"][0]  # the second said whom it waited for
    assert [e.key for e in cache.entries()] == ["k1"]
    assert not [p for p in (root / "exports").iterdir() if p.name not in ("k1", cache.LOCKS)]  # no leftovers


def test_a_make_that_fails_leaves_nothing_and_the_next_makes_it(root):
    def broken(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("killed half way")

    with pytest.raises(RuntimeError):
        cache.entry("builds", "host-1", broken)
    assert not (root / "builds" / "host-1").exists()
    assert [p.name for p in (root / "builds").iterdir()] == [cache.LOCKS]
    folder, reused = cache.entry("builds", "host-1", lambda tmp: (tmp / "whole").write_text("y"))
    assert not reused and [p.name for p in folder.iterdir()] == ["whole"]


def test_an_entry_that_is_not_ready_is_made_again_in_place(root):
    cache.entry("exports", "k", lambda tmp: (tmp / "old").write_text("damaged"))
    folder, reused = cache.entry("exports", "k", lambda tmp: (tmp / "new").write_text("good"),
                                 ready=lambda f: (f / "new").exists())
    assert not reused and [p.name for p in folder.iterdir()] == ["new"]
    assert cache.entry("exports", "k", lambda tmp: None, ready=lambda f: (f / "new").exists())[1]


def test_keys_that_could_leave_the_cache_are_refused(root):
    for kind, key in (("exports", "../x"), ("exports", ".hidden"), ("exports", ""), ("other", "k")):
        with pytest.raises(ValueError):
            cache.entry(kind, key, lambda tmp: None)


def test_prune_removes_the_least_recently_used_first_down_to_keep_bytes(root):
    for i, key in enumerate(("a", "b", "c")):
        folder, _ = cache.entry("exports", key, lambda tmp: (tmp / "data").write_bytes(b"x" * 1000))
        os.utime(folder, (1000 + i, 1000 + i))  # a used longest ago, c last
    cache.release()  # as if another process had made them and ended
    result = cache.prune(keep_bytes=2000)
    assert [e["key"] for e in result["removed"]] == ["a"] and result["remaining_bytes"] == 2000
    assert [e.key for e in cache.entries()] == ["c", "b"]
    assert [e["key"] for e in cache.prune()["removed"]] == ["b", "c"] and cache.entries() == []


def test_prune_never_removes_an_entry_a_process_uses(root, tmp_path):
    user = want(root, tmp_path / "made", 0.0, hold_s=30)  # gets the entry and goes on using it
    line = user.stdout.readline()
    try:
        assert json.loads(line)["reused"] is False
        result = cache.prune()
        assert result["removed"] == [] and [e["key"] for e in result["in_use"]] == ["k1"]
        assert (root / "exports" / "k1" / "second").exists()
    finally:
        user.kill()
        user.wait()
    assert [e["key"] for e in cache.prune()["removed"]] == ["k1"]  # its user ended: removable


def edgelm(*args, env):
    return subprocess.run([sys.executable, "-m", "toolchain.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env, "COLUMNS": "200"}, timeout=120)


def test_cache_list_and_prune_on_the_command_line(root):
    for key in ("older", "newer"):
        folder, _ = cache.entry("builds", key, lambda tmp: (tmp / "bundle").write_bytes(b"y" * 3000))
    os.utime(root / "builds" / "older", (1000, 1000))
    cache.release()
    env = {"EDGELM_CACHE": str(root)}
    listing = json.loads(edgelm("cache", "list", "--json", env=env).stdout)
    assert listing["root"] == str(root) and listing["total_bytes"] == 6000
    assert [(e["kind"], e["key"], e["size_bytes"]) for e in listing["entries"]] == [("builds", "newer", 3000),
                                                                                   ("builds", "older", 3000)]
    text = edgelm("cache", "list", env=env).stdout
    assert "newer" in text and "2.9 KiB" in text and str(root) in text
    proc = edgelm("cache", "prune", "--keep-bytes", "3K", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [e["key"] for e in json.loads(proc.stdout)["removed"]] == ["older"]
    bad = edgelm("cache", "prune", "--keep-bytes", "lots", env=env)
    assert bad.returncode == 2 and "--keep-bytes lots" in bad.stderr
    assert "removed builds/newer" in edgelm("cache", "prune", env=env).stdout


def test_the_cache_is_under_xdg_cache_home_unless_edgelm_cache_says(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGELM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "edgelm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert paths.cache_dir() == Path.home() / ".cache" / "edgelm"
    monkeypatch.setenv("EDGELM_CACHE", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"


def test_the_suite_keeps_its_cache_out_of_the_user_s():
    """tests/conftest.py: exports and builds of a test session never land in ~/.cache/edgelm."""
    assert os.environ["EDGELM_CACHE"] == os.environ["EDGELM_SUITE_CACHE"]
    assert Path.home() / ".cache" / "edgelm" != cache.root()
