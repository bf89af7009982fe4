"""docs/configuration.md is what the generator makes of the settings model, and the model
documents every setting. After adding a setting: give it a Field(description=...) (and a [vars]
key in config.VARS when operators may set it), then run ``python scripts/gen_config_docs.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cloudsession.cli.serve import reference_markdown, settings_fields
from cloudsession.config import VARS, env_names

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
REGENERATE = "regenerate it with: python scripts/gen_config_docs.py"


def test_every_setting_has_a_description() -> None:
    missing = [".".join(path) for path, info in settings_fields() if not (info.description or "").strip()]
    assert not missing, f"give these Settings fields a Field(description=...): {missing}"


def test_the_reference_matches_the_settings_model() -> None:
    assert DOC.read_text(encoding="utf-8") == reference_markdown(), f"docs/configuration.md is out of date; {REGENERATE}"


def test_every_vars_key_and_variable_is_in_the_reference() -> None:
    text = DOC.read_text(encoding="utf-8")
    for var in VARS:
        assert f"`{var}`" in text, var
        for name in env_names(var):
            assert f"`{name}`" in text, name
    for name in ("SESSIONS_SHARED_SECRET", "SESSIONS_RPC_SHARED_KEY", "CLOUDSESSION_STORE", "AWS_ENDPOINT_URL", "--data-dir", "--port", "--host"):
        assert f"`{name}`" in text, name


def test_the_cli_prints_the_same_reference(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsession", "check-config", "--reference"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLOUDSESSION_LOG_LEVEL": "LOUD"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == reference_markdown()  # and it needs no valid configuration to print it
