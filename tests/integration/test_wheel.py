"""`pip install edgelm` from a wheel: the wheel carries boards/, firmware/ and models/, and an install of it in a
fresh virtual environment outside the repository lists the boards, exports fortune and runs it on the host.

The wheel is built as a user would from a fresh clone: a copy of the working tree's files (tracked, and untracked
but not ignored: no build/, out/ or egg-info), `pip wheel --no-deps --no-build-isolation` (no network for the
build's own dependencies). The new environment sees this environment's site-packages for torch, executorch and the
rest through a .pth file (written after the wheel is installed, so pip never sees the checkout's editable edgelm),
and must import the wheel's `toolchain`, never the checkout's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = ("boards", "firmware", "models")
WHEEL_LIMIT = 20 * 2**20  # fortune and fortune-draft are ~12 MB of the ~13 MB


def _git_files(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths],
                         cwd=REPO, capture_output=True, check=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (REPO / f).is_file()})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    clone = tmp_path_factory.mktemp("clone") / "edgelm"
    for name in _git_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, clone / name)
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "-w", str(dist), str(clone)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = dist.glob("edgelm-*.whl")
    return whl


def test_the_wheel_holds_every_board_firmware_and_model_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"toolchain/_data/{f}" for f in _git_files(*DATA)}
    assert expected <= names, sorted(expected - names)[:20]
    assert {"toolchain/_data/boards/rpi5.toml", "toolchain/_data/firmware/CMakeLists.txt",
            "toolchain/_data/firmware/cortex-m/runner_cm.cpp", "toolchain/_data/models/fortune/model.safetensors",
            "toolchain/_data/models/fortune-draft/tokenizer.json"} <= names
    extra = sorted(n for n in names if n.startswith("toolchain/_data/") and n not in expected)
    assert not extra, extra  # nothing a build left lying around
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert wheel.stat().st_size <= WHEEL_LIMIT, wheel.stat().st_size


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "--quiet", str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_edgelm_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    return env


def _edgelm_env(env: Path, home: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out["PATH"] = os.pathsep.join([str(env / "bin"), os.environ.get("PATH", "")])
    out["EDGELM_CACHE"] = str(home / "cache")  # nothing shared with the checkout's runs
    out["XDG_CACHE_HOME"] = str(home / "xdg-cache")
    out["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    return out


def test_the_installed_wheel_lists_boards_exports_and_runs_fortune_from_elsewhere(venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert REPO not in elsewhere.parents and REPO not in venv.parents
    env = _edgelm_env(venv, tmp_path)

    def sh(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(argv), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{argv}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    where = sh(str(venv / "bin" / "python"), "-c",
               "import toolchain; from toolchain import paths, boards; from toolchain.model import checkpoint; "
               "print(toolchain.__file__); print(paths.FIRMWARE_DIR); print(boards.BOARDS_DIR); "
               "print(checkpoint.SHIPPED['fortune'])").stdout.split()
    # the wheel's package and data, not the checkout's
    assert len(where) == 4 and all(Path(p).is_relative_to(venv) and Path(p).exists() for p in where), where

    edgelm = str(venv / "bin" / "edgelm")
    listed = sh(edgelm, "boards").stdout
    assert all(name in listed for name in ("host", "rpi5", "pizero2w", "corstone-300")), listed
    assert "0.1.0+" in sh(edgelm, "--version").stdout

    sh(edgelm, "export", "--model", "fortune")
    assert list(tmp_path.rglob("model.pte"))  # in ./out, or in the cache above
    proc = sh(edgelm, "run", "--board", "host", "--target", "local", "--model", "fortune", "--tokens", "16")
    assert "PASS" in proc.stdout, proc.stdout[-3000:]
    assert not (REPO / "toolchain" / "_data").exists()
