"""The basics of a published package: the project's licence (PEP 639 metadata), a changelog, the version written in
one place (`edgelm --version` also names the firmware sources), shell completion, and the data folders found in an
installed wheel as in a checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

import toolchain
from toolchain import boards, paths
from toolchain.bundle import cortexm, render
from toolchain.cli import main
from toolchain.model import checkpoint

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EDGELM = Path(sys.executable).with_name("edgelm")


def test_the_project_states_its_licence_as_pep_639_metadata_with_its_text():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not the {text = ...} table setuptools drops
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text
    requires = PYPROJECT["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d)(\.\d+)*", r) for r in requires), requires
    # third-party files keep their own notices
    assert (REPO / "tests/data/lfm2-350m/LICENSE").is_file()
    assert all("BSD" in (REPO / "models" / m / "README.md").read_text() for m in ("fortune", "fortune-draft"))
    assert all((REPO / "models" / m / "CORPUS.md").is_file() for m in ("fortune", "fortune-draft"))


def test_the_version_is_written_once():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "toolchain.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", toolchain.__version__)


def test_the_changelog_starts_at_the_current_version():
    text = (REPO / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", text, flags=re.M)
    assert versions and versions[0] == toolchain.__version__, versions


def test_version_names_the_firmware_sources():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"edgelm {toolchain.__version__}")
    assert render.firmware_version() in line and cortexm.firmware_version() in line, line
    assert re.search(r"firmware \d+\.\d+\.\d+\+[0-9a-f]{10}\b", line), line


@pytest.mark.parametrize("shell, marker", [
    ("bash", "complete -o nosort -F _edgelm_completion edgelm"),
    ("zsh", "#compdef edgelm"),
    ("fish", "complete --no-files --command edgelm"),
])
def test_the_console_script_prints_a_completion_script(shell, marker):
    if not EDGELM.exists():
        pytest.skip(f"no edgelm console script beside {sys.executable}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("_EDGELM")}
    env["_EDGELM_COMPLETE"] = f"{shell}_source"
    proc = subprocess.run([str(EDGELM)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert marker in proc.stdout, proc.stdout


def test_completion_completes_command_names():
    env = {"_EDGELM_COMPLETE": "bash_complete", "COMP_WORDS": "edgelm bo", "COMP_CWORD": "1"}
    result = CliRunner().invoke(main, [], env=env, prog_name="edgelm")
    assert "plain,boards" in result.output.split(), result.output


def test_the_readme_documents_completion():
    text = (REPO / "README.md").read_text()
    assert "_EDGELM_COMPLETE=bash_source edgelm" in text and "_EDGELM_COMPLETE=zsh_source edgelm" in text


def test_a_checkout_reads_the_top_level_folders():
    """In the repository (the editable install) there is no toolchain/_data: the folders are the checkout's."""
    assert not (REPO / "toolchain" / "_data").exists()
    assert paths.BOARDS_DIR == REPO / "boards" and boards.BOARDS_DIR == paths.BOARDS_DIR
    assert paths.FIRMWARE_DIR == REPO / "firmware" and render.FIRMWARE_DIR == paths.FIRMWARE_DIR
    assert checkpoint.SHIPPED["fortune"] == REPO / "models" / "fortune"


def test_an_installed_package_reads_its_own_copy(tmp_path, monkeypatch):
    pkg = tmp_path / "toolchain"
    for name in ("boards", "firmware", "models"):
        (pkg / "_data" / name).mkdir(parents=True)
    monkeypatch.setattr(paths.resources, "files", lambda package: pkg)
    assert paths.data_dir("boards") == pkg / "_data" / "boards"
    assert paths.data_dir("models") == pkg / "_data" / "models"
    (pkg / "_data" / "firmware").rmdir()
    assert paths.data_dir("firmware") == REPO / "firmware"
