"""``cloudsession opencode install | uninstall | status``: the opencode plugin shipped with cloudsession.

``install`` adds one entry to the user's opencode config (``$XDG_CONFIG_HOME/opencode/opencode.json``,
else ``~/.config/opencode/opencode.json``): ``"plugin": [["file:///…/cloudsession-share.js",
{"server": URL}]]``, pointing at the plugin inside the installed package, with the server URL as
its option. ``uninstall`` removes it. ``status`` reads the plugin's outbox
(``$XDG_DATA_HOME/opencode/cloudsession-outbox.sqlite``) and shows, per share, what is pending,
the last error and the last acknowledged cursor. Nothing here prints a share's secret.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import cloudsession

PLUGIN_FILE = "cloudsession-share.js"
OUTBOX_FILE = "cloudsession-outbox.sqlite"


def plugin_path() -> Path:
    """The plugin inside the installed package (a data directory, not a Python package)."""
    return Path(cloudsession.__file__).resolve().parent / "opencode_plugin" / PLUGIN_FILE


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else _home() / ".config") / "opencode"


def default_outbox() -> Path:
    base = os.environ.get("XDG_DATA_HOME")
    return (Path(base) if base else _home() / ".local" / "share") / "opencode" / OUTBOX_FILE


def add_subcommands(sub: Any) -> None:
    opencode = sub.add_parser("opencode", help="install, remove or inspect the opencode plugin that shares sessions durably")
    commands = opencode.add_subparsers(dest="opencode_command", required=True, metavar="SUBCOMMAND")

    install = commands.add_parser("install", help="add the cloudsession-share plugin to your opencode config")
    install.add_argument("--server", required=True, help="the share server's URL, e.g. https://share.example.com")
    install.add_argument("--share", choices=("auto", "manual"), help="auto: share every session; manual: only those shared with /share (default: opencode's own share setting)")
    install.add_argument("--config-file", type=Path, help="the opencode config file to edit (default: <config dir>/opencode/opencode.json)")
    install.set_defaults(func=cmd_install)

    uninstall = commands.add_parser("uninstall", help="remove the cloudsession-share plugin from your opencode config")
    uninstall.add_argument("--config-file", type=Path, help="the opencode config file to edit (default: <config dir>/opencode/opencode.json)")
    uninstall.set_defaults(func=cmd_uninstall)

    status = commands.add_parser("status", help="show the plugin's outbox: pending changes per share, last error, cursor")
    status.add_argument("--outbox", type=Path, help=f"the outbox file (default: <data dir>/opencode/{OUTBOX_FILE})")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def _config_file(args: argparse.Namespace) -> Path:
    return args.config_file or config_dir() / "opencode.json"


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"$schema": "https://opencode.ai/config.json"}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        # opencode.json may hold comments (JSONC); rewriting it would lose them.
        raise SystemExit(f"cloudsession opencode: {path} is not plain JSON ({exc}); add the plugin entry by hand (see docs/opencode-plugin.md)") from None
    if not isinstance(config, dict):
        raise SystemExit(f"cloudsession opencode: {path} does not hold a JSON object")
    return config


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _is_ours(entry: Any) -> bool:
    spec = entry[0] if isinstance(entry, list) and entry else entry
    return isinstance(spec, str) and spec.startswith("file:") and spec.rstrip("/").endswith("/" + PLUGIN_FILE)


def cmd_install(args: argparse.Namespace) -> int:
    server = args.server.rstrip("/")
    if not server.startswith(("http://", "https://")):
        print("cloudsession opencode install: --server must be an http:// or https:// URL", file=sys.stderr)
        return 2
    path = _config_file(args)
    config = _read_config(path)
    plugins = config.get("plugin") or []
    if not isinstance(plugins, list):
        print(f"cloudsession opencode install: {path}: 'plugin' is not a list", file=sys.stderr)
        return 2
    options: dict[str, Any] = {"server": server}
    if args.share:
        options["share"] = args.share
    config["plugin"] = [entry for entry in plugins if not _is_ours(entry)] + [[plugin_path().as_uri(), options]]
    _write_config(path, config)
    print(f"opencode install: the cloudsession-share plugin sends sessions to {server}; added to {path}")
    print("opencode install: on a machine without network, run opencode with npm_config_offline=true (docs/opencode-plugin.md)")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    path = _config_file(args)
    if not path.exists():
        print(f"opencode uninstall: {path} does not exist; nothing to remove")
        return 0
    config = _read_config(path)
    plugins = config.get("plugin")
    kept = [entry for entry in plugins if not _is_ours(entry)] if isinstance(plugins, list) else plugins
    if kept == plugins:
        print(f"opencode uninstall: the plugin is not in {path}")
        return 0
    if kept:
        config["plugin"] = kept
    else:
        config.pop("plugin", None)
    _write_config(path, config)
    print(f"opencode uninstall: removed the cloudsession-share plugin from {path} (its outbox stays: {default_outbox()})")
    return 0


def outbox_status(path: Path) -> list[dict[str, Any]]:
    """Per share: where it goes, what is pending, the last error and the acknowledged cursor."""
    db = sqlite3.connect(path, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        shares = db.execute("SELECT name, server, session_id, share_id, url, cursor, status, last_error FROM shares ORDER BY name").fetchall()
        counts: dict[str, dict[str, int]] = {}
        for row in db.execute("SELECT share, state, COUNT(*) AS n FROM ops GROUP BY share, state"):
            counts.setdefault(row["share"], {})[row["state"]] = row["n"]
        last_errors = {
            row["share"]: row["error"]
            for row in db.execute("SELECT share, error FROM ops WHERE error IS NOT NULL AND state != 'acked' ORDER BY seq")
        }
    finally:
        db.close()
    report = []
    for share in shares:
        c = counts.get(share["name"], {})
        report.append(
            {
                "server": share["server"],
                "sessionID": share["session_id"],
                "shareID": share["share_id"],
                "url": share["url"],
                "status": share["status"],
                "pending": c.get("pending", 0) + c.get("in_flight", 0),
                "acked": c.get("acked", 0),
                "failed": c.get("failed", 0),
                "cursor": share["cursor"],
                "lastError": share["last_error"] or last_errors.get(share["name"]),
            }
        )
    return report


def cmd_status(args: argparse.Namespace) -> int:
    path = args.outbox or default_outbox()
    configured = any(_is_ours(e) for e in (_safe_plugins(config_dir() / "opencode.json")))
    if not path.exists():
        if args.json:
            print(json.dumps({"installed": configured, "outbox": str(path), "shares": []}))
        else:
            print(f"opencode status: plugin {'installed' if configured else 'not installed'}; no outbox yet ({path})")
        return 0
    report = outbox_status(path)
    if args.json:
        print(json.dumps({"installed": configured, "outbox": str(path), "shares": report}, indent=2))
        return 0
    print(f"opencode status: plugin {'installed' if configured else 'not installed'}; outbox {path}")
    if not report:
        print("  no shares yet")
    for share in report:
        where = share["url"] or f"{share['server']} (not created yet)"
        print(
            f"  {share['sessionID']} -> {where}: {share['pending']} pending, {share['acked']} acknowledged, "
            f"{share['failed']} failed, cursor {share['cursor']}{'' if share['status'] == 'active' else ', ' + share['status']}"
        )
        if share["lastError"]:
            print(f"    last error: {share['lastError']}")
    return 0


def _safe_plugins(path: Path) -> list[Any]:
    try:
        plugins = json.loads(path.read_text(encoding="utf-8")).get("plugin")
    except (OSError, ValueError, AttributeError):
        return []
    return plugins if isinstance(plugins, list) else []
