"""``cloudsession serve`` and ``cloudsession check-config``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aiohttp import web

from cloudsession import __version__
from cloudsession.cli.common import add_config_flags, settings_from_args
from cloudsession.config import load_settings
from cloudsession.logs import configure as configure_logging
from cloudsession.web.app import create_app

# One line per request without the query string (read tokens travel in ``?token=``), with the
# request id, route, share id and public session id: web/observability.py.
from cloudsession.web.observability import AccessLogger


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, host=args.host, port=args.port)
    configure_logging(settings.log_level, settings.log_format)  # text or JSON lines (LOG_FORMAT)
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


def add_subcommands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the share server")
    add_config_flags(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8787)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="print the effective configuration, secrets redacted")
    add_config_flags(check)
    check.set_defaults(func=cmd_check_config)
