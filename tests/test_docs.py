"""Docs that cannot drift: the README's module map and the storage layout name what the code has."""

from __future__ import annotations

import re
from pathlib import Path

import cloudsession
from cloudsession.shares.storage import KEY_FAMILIES

PACKAGE = Path(cloudsession.__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[1]


def _module_map() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Finding your way around")
    return readme[start : readme.index("\n## ", start) if "\n## " in readme[start:] else len(readme)]


def test_the_readme_module_map_names_every_module() -> None:
    rows = [line for line in _module_map().splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([\w/]+\.py)`", row.split(" | ")[0])}
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    # A package's __init__ is named only when it holds code of its own.
    modules = {m for m in modules if not (m.endswith("__init__.py") and len((PACKAGE / m).read_text().splitlines()) <= 12)}
    missing = sorted(modules - named)
    assert missing == [], f"README.md's module map misses {missing}"
    stale = sorted(n for n in named if not (PACKAGE / n).exists())
    assert stale == [], f"README.md's module map names modules that do not exist: {stale}"


def test_the_storage_layout_names_every_key_family() -> None:
    layout = (ROOT / "docs" / "storage-layout.md").read_text()
    missing = [prefix for prefix in KEY_FAMILIES if f"`{prefix}" not in layout]
    assert missing == []
