"""Command-line entry point: ``cloudsession serve``, ``check-config`` and the tool commands.

Thin by design: each command parses its flags, builds Settings through ``config.load_settings``
and calls the library. Configuration problems are printed as one clear message with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cloudsession import __version__, admin, durable
from cloudsession.client import push
from cloudsession.config import ConfigError, Settings, ensure_namespace, load_settings

def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every command that reads the configuration shares."""
    parser.add_argument("--config", type=Path, help="wrangler-like TOML config file")
    parser.add_argument("--env", dest="env_name", help="apply the [env.NAME] section of the config file")
    parser.add_argument("--data-dir", type=Path, help="directory for the embedded store and local state")


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    settings = load_settings(config_file=args.config, env_name=args.env_name, overrides=overrides)
    return ensure_namespace(settings)


class AccessLogger(AbstractAccessLogger):
    """One line per request without the query string: read tokens of private shares may travel
    in ``?token=`` and must never reach a log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.4fs',
            request.remote, request.method, request.path, response.status, response.body_length, time,
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from cloudsession.app import create_app

    settings = settings_from_args(args, host=args.host, port=args.port)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The default data dir may not exist yet on a fresh machine.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.store.backend if settings.store.backend == "s3" else f"fs:{settings.store_path}"
    print(f"cloudsession {__version__} listening on http://{settings.host}:{settings.port} (store {store})", flush=True)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None, access_log_class=AccessLogger)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(config_file=args.config, env_name=args.env_name, overrides={"data_dir": args.data_dir})
    print(json.dumps(settings.redacted(), indent=2, default=str))
    if settings.shared_secret is None:
        print("note: SESSIONS_SHARED_SECRET is not set; `serve` will use a development namespace", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudsession", description="Self-hostable share server for opencode sessions.")
    parser.add_argument("--version", action="version", version=f"cloudsession {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the share server")
    add_config_flags(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8787)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="print the effective configuration, secrets redacted")
    add_config_flags(check)
    check.set_defaults(func=cmd_check_config)

    durable.add_subcommands(sub)  # gc
    admin.add_subcommands(sub)  # import, export, admin ...
    push.add_subcommands(sub)  # push
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"cloudsession: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
