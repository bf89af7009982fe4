"""``opencode run`` end to end, offline: the real opencode CLI (``opencode_cli.Sandbox``) answered by
the fake model (``fake_model.FakeModel``), sharing to a real ``cloudsession serve``, and what
lands on the share compared with opencode's own state (``opencode export``).

Used by tests/test_opencode_runs.py and scripts/opencode_run_share.py (which prints the figures
for the stock share client alone and with the plugin).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fake_model import MODEL, PROVIDER, provider_config
from opencode_cli import Sandbox

import cloudsession

RECORDER = Path(__file__).resolve().parent / "plugin" / "event-recorder.js"

# One prompt with a tool call (a bash command that works offline), one plain answer.
PROMPTS = ("please run: `echo cloudsession-tool-output`", "say hello", "and now run: `ls -a`")


def sandbox_for(root: Path, server_url: str, model_url: str, *, stock_share: bool = True) -> Sandbox:
    """An opencode sandbox whose config names the share server (``enterprise.url``) and uses the fake
    model; with ``stock_share`` the stock share client is on (``--share`` works)."""
    sandbox = Sandbox(root)
    if stock_share:
        sandbox.env.pop("OPENCODE_DISABLE_SHARE", None)
    config = {
        "$schema": "https://opencode.ai/config.json",
        "enterprise": {"url": server_url},
        "provider": provider_config(model_url),
        "model": f"{PROVIDER}/{MODEL}",
        "small_model": f"{PROVIDER}/{MODEL}",
    }
    write_config(sandbox, config)
    return sandbox


def config_path(sandbox: Sandbox) -> Path:
    return Path(sandbox.env["XDG_CONFIG_HOME"]) / "opencode" / "opencode.json"


def write_config(sandbox: Sandbox, config: dict[str, Any]) -> None:
    path = config_path(sandbox)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))


def install_plugin(sandbox: Sandbox, server_url: str, *extra: str) -> None:
    """``cloudsession opencode install``, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "cloudsession", "opencode", "install", "--server", server_url, *extra],
        env=sandbox.env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr


def add_recorder(sandbox: Sandbox, events_file: Path) -> None:
    """Add tests/plugin/event-recorder.js, which writes every event the plugins see to ``events_file``."""
    plugin_dir = Path(cloudsession.__file__).resolve().parent / "opencode_plugin"
    config = json.loads(config_path(sandbox).read_text())
    config.setdefault("plugin", []).append([RECORDER.as_uri(), {"file": str(events_file), "pluginDir": str(plugin_dir)}])
    write_config(sandbox, config)


@dataclass
class Run:
    session_id: str
    share_id: str
    returncode: int
    output: str


def run(sandbox: Sandbox, prompt: str, *args: str) -> Run:
    """``opencode run [args] --format json <prompt>``; the session from its JSON events, the share id
    from the share URL it prints (when it shares)."""
    done = sandbox.run("run", *args, "--format", "json", prompt)
    output = done.stdout + done.stderr
    found = re.search(r'"sessionID":"(ses_[A-Za-z0-9]+)"', done.stdout)
    assert done.returncode == 0 and found, output[-4000:]
    url = re.search(r"https?://\S+/share/([A-Za-z0-9_-]+)", done.stderr)
    return Run(found.group(1), url.group(1) if url else "", done.returncode, output)


def share_items(server_url: str, share_id: str) -> list[dict[str, Any]]:
    """GET /api/share/<id>/data ([] when the share does not exist)."""
    try:
        with urllib.request.urlopen(f"{server_url}/api/share/{share_id}/data", timeout=10) as resp:
            items: list[dict[str, Any]] = json.loads(resp.read())
            return items
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


@dataclass
class Comparison:
    """What a share holds of one opencode session."""

    messages: int  # in opencode's state
    parts: int
    messages_on_share: int  # of those, on the share with the same content
    parts_on_share: int
    missing: list[str] = field(default_factory=list)  # ids in opencode, absent from the share
    differ: list[str] = field(default_factory=list)  # ids on the share with other content
    extra: list[str] = field(default_factory=list)  # ids on the share that opencode does not hold

    @property
    def complete(self) -> bool:
        return not (self.missing or self.differ or self.extra)

    def line(self) -> str:
        return (
            f"messages {self.messages_on_share}/{self.messages}, parts {self.parts_on_share}/{self.parts}"
            f" (missing {len(self.missing)}, different {len(self.differ)}, extra {len(self.extra)})"
        )


def compare(items: list[dict[str, Any]], exported: dict[str, Any]) -> Comparison:
    """The share's items against ``opencode export``. The share shows a public session ID instead of
    the real one (everywhere, in any letter case): the export is compared with it replaced."""
    session = next((i["data"] for i in items if i["type"] == "session"), None)
    real = exported["info"]["id"]
    if session is not None:
        text = re.sub(re.escape(real), session["id"], json.dumps(exported), flags=re.IGNORECASE)
        exported = json.loads(text)
    want: dict[str, dict[str, Any]] = {}
    for message in exported["messages"]:
        want[message["info"]["id"]] = message["info"]
        for part in message["parts"]:
            want[part["id"]] = part
    have = {i["data"]["id"]: i["data"] for i in items if i["type"] in ("message", "part")}
    same = {key for key, value in want.items() if have.get(key) == value}
    messages = {m["info"]["id"] for m in exported["messages"]}
    return Comparison(
        messages=len(messages),
        parts=len(want) - len(messages),
        messages_on_share=len(same & messages),
        parts_on_share=len(same - messages),
        missing=sorted(set(want) - set(have)),
        differ=sorted(key for key in set(want) & set(have) if key not in same),
        extra=sorted(set(have) - set(want)),
    )
