"""The opencode plugin shipped in cloudsession/opencode_plugin: its outbox logic under the Bun
embedded in the pinned opencode binary (``BUN_BE_BUN=1 opencode test``), and delivery to a real
``cloudsession serve`` process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from opencode_cli import binary

import cloudsession

PLUGIN_DIR = Path(cloudsession.__file__).parent / "opencode_plugin"
JS_TESTS = Path(__file__).parent / "plugin"


def run_bun(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCODE", "npm_config_"))}
    full_env.update({"BUN_BE_BUN": "1", "CLOUDSESSION_PLUGIN_DIR": str(PLUGIN_DIR), "NO_COLOR": "1"})
    full_env.update(env or {})
    return subprocess.run([str(binary()), *args], cwd=JS_TESTS, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_plugin_outbox_logic_under_the_binarys_bun() -> None:
    done = run_bun("test", "./outbox.test.mjs")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert " 0 fail" in output and " 11 pass" in output, output
