"""``cloudsession opencode install | uninstall | status`` with a throwaway HOME and XDG dirs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cloudsession


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "OPENCODE"))}
    return {**clean, "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloudsession", "opencode", *args], env=env, capture_output=True, text=True, timeout=60)


def config(env: dict[str, str]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((Path(env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json").read_text())
    return loaded


PLUGIN_URI = (Path(cloudsession.__file__).resolve().parent / "opencode_plugin" / "cloudsession-share.js").as_uri()


def test_install_adds_one_entry_with_the_server_keeping_the_rest_of_the_config(env: dict[str, str]) -> None:
    path = Path(env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"theme": "dark", "plugin": ["some-npm-plugin"]}))
    done = cli(env, "install", "--server", "https://share.example.com/")
    assert done.returncode == 0, done.stderr
    assert config(env) == {"theme": "dark", "plugin": ["some-npm-plugin", [PLUGIN_URI, {"server": "https://share.example.com"}]]}
    # again, with other options: still one entry
    assert cli(env, "install", "--server", "http://127.0.0.1:8787", "--share", "auto").returncode == 0
    assert config(env)["plugin"] == ["some-npm-plugin", [PLUGIN_URI, {"server": "http://127.0.0.1:8787", "share": "auto"}]]
    assert Path(PLUGIN_URI.removeprefix("file://")).is_file()

    done = cli(env, "uninstall")
    assert done.returncode == 0, done.stderr
    assert config(env) == {"theme": "dark", "plugin": ["some-npm-plugin"]}
    assert "not in" in cli(env, "uninstall").stdout


def test_install_creates_the_config_under_home_without_xdg(env: dict[str, str]) -> None:
    del env["XDG_CONFIG_HOME"]
    assert cli(env, "install", "--server", "http://127.0.0.1:1").returncode == 0
    created = json.loads((Path(env["HOME"]) / ".config" / "opencode" / "opencode.json").read_text())
    assert created["plugin"] == [[PLUGIN_URI, {"server": "http://127.0.0.1:1"}]]
    assert cli(env, "uninstall").returncode == 0
    assert "plugin" not in json.loads((Path(env["HOME"]) / ".config" / "opencode" / "opencode.json").read_text())


def test_install_refuses_a_bad_url_and_a_config_it_cannot_rewrite(env: dict[str, str]) -> None:
    assert cli(env, "install", "--server", "share.example.com").returncode == 2
    path = Path(env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"
    path.parent.mkdir(parents=True)
    original = '{\n  // comments make it JSONC\n  "theme": "dark"\n}\n'
    path.write_text(original)
    done = cli(env, "install", "--server", "http://127.0.0.1:1")
    assert done.returncode != 0 and "not plain JSON" in done.stderr
    assert path.read_text() == original


def test_status_shows_pending_ops_last_error_and_cursor_never_the_secret(env: dict[str, str]) -> None:
    done = cli(env, "status")
    assert done.returncode == 0 and "no outbox yet" in done.stdout
    outbox = Path(env["XDG_DATA_HOME"]) / "opencode" / "cloudsession-outbox.sqlite"
    outbox.parent.mkdir(parents=True)
    # The schema the plugin writes (cloudsession/opencode_plugin/outbox.js), filled by hand.
    db = sqlite3.connect(outbox)
    db.executescript(
        """
        CREATE TABLE shares (name TEXT PRIMARY KEY, server TEXT, session_id TEXT, share_id TEXT, secret TEXT, epoch INTEGER,
                             url TEXT, cursor INTEGER, next_seq INTEGER, status TEXT, last_error TEXT, updated_at INTEGER);
        CREATE TABLE ops (op_id TEXT PRIMARY KEY, share TEXT, entity TEXT, seq INTEGER, item TEXT, state TEXT, batch_id TEXT,
                          attempts INTEGER, next_retry_at INTEGER, ack_cursor INTEGER, error TEXT);
        INSERT INTO shares VALUES ('http://s ses_a', 'http://s', 'ses_a', 'abcd1234', 'the-secret-value', 0, 'http://s/share/abcd1234',
                                   12, 20, 'active', 'no answer (ECONNREFUSED)', 0);
        INSERT INTO shares VALUES ('http://s ses_b', 'http://s', 'ses_b', NULL, NULL, 0, NULL, 0, 1, 'failed', 'HTTP 410: Share expired', 0);
        INSERT INTO ops VALUES ('1', 'http://s ses_a', 'part:p1', 1, '{}', 'acked', 'b', 0, 0, 12, NULL);
        INSERT INTO ops VALUES ('2', 'http://s ses_a', 'part:p2', 2, '{}', 'in_flight', 'c', 1, 0, NULL, 'no answer (ECONNREFUSED)');
        INSERT INTO ops VALUES ('3', 'http://s ses_a', 'part:p3', 3, '{}', 'pending', NULL, 0, 0, NULL, NULL);
        INSERT INTO ops VALUES ('4', 'http://s ses_b', 'session', 1, '{}', 'failed', NULL, 0, 0, NULL, 'HTTP 410: Share expired');
        """
    )
    db.commit()
    db.close()
    text = cli(env, "status")
    assert text.returncode == 0, text.stderr
    assert "ses_a -> http://s/share/abcd1234: 2 pending, 1 acknowledged, 0 failed, cursor 12" in text.stdout
    assert "last error: no answer (ECONNREFUSED)" in text.stdout
    assert "ses_b -> http://s (not created yet): 0 pending, 0 acknowledged, 1 failed, cursor 0, failed" in text.stdout
    report = json.loads(cli(env, "status", "--json").stdout)
    assert [(s["sessionID"], s["pending"], s["cursor"], s["lastError"]) for s in report["shares"]] == [
        ("ses_a", 2, 12, "no answer (ECONNREFUSED)"),
        ("ses_b", 0, 0, "HTTP 410: Share expired"),
    ]
    assert "the-secret-value" not in text.stdout + cli(env, "status", "--json").stdout
