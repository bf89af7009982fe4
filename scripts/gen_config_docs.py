#!/usr/bin/env python3
"""Write docs/configuration.md from the settings model (cloudsession/cli/serve.py).

Run after adding or changing a setting (a Field(description=...) in cloudsession/config.py, a
[vars] key in VARS); tests/test_config_reference.py fails until the file is regenerated.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloudsession.cli.serve import write_reference  # noqa: E402

if __name__ == "__main__":
    target = ROOT / "docs" / "configuration.md"
    changed = write_reference(target)
    print(f"{target.relative_to(ROOT)}: {'updated' if changed else 'already up to date'}")
