"""The README's Layout list is the architecture: it must match the tree."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _layout_entries() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([^`]+)`", section, flags=re.M)


def test_every_layout_entry_exists():
    missing = [e for e in _layout_entries() if not (REPO / e).exists()]
    assert not missing, f"README Layout names paths that do not exist: {missing}"


def test_every_module_is_in_the_layout():
    listed = set(_layout_entries())
    modules = [p.relative_to(REPO).as_posix() for p in (REPO / "toolchain").rglob("*.py")
               if p.name != "__init__.py"]
    unlisted = [m for m in modules if m not in listed]
    assert not unlisted, f"modules missing from README Layout: {unlisted}"
