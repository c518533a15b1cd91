"""The one build step pyproject.toml cannot say: ship boards/, firmware/ and models/ in the wheel.

The three folders stay at the top of the repository. A wheel (``pip wheel .``, ``pip install .``, ``python -m
build``) copies them into the package as ``toolchain/_data/{boards,firmware,models}``, where
``toolchain.paths.data_dir`` finds them with importlib.resources; an editable install (``pip install -e .``)
copies nothing and reads the checkout's folders. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA = ("boards", "firmware", "models")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the editable install reads the checkout's folders (toolchain/paths.py)
            return
        dest = Path(self.build_lib) / "toolchain" / "_data"
        shutil.rmtree(dest, ignore_errors=True)  # nothing left over from an earlier build of another tree
        for name in DATA:
            shutil.copytree(HERE / name, dest / name, ignore=SKIP)


setup(cmdclass={"build_py": BuildPyWithData})
