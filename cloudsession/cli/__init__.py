"""The ``cloudsession`` command: the only place commands are defined.

Thin by design: each command parses its flags, builds Settings through ``config.load_settings``
and calls the library. One module per command group: ``serve`` (serve, check-config), ``tools``
(import, export, admin, gc), ``push`` and ``opencode`` (the opencode plugin). Configuration problems are printed as one clear
message with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from cloudsession import __version__
from cloudsession.cli import opencode, push, serve, tools
from cloudsession.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudsession", description="Self-hostable share server for opencode sessions.")
    parser.add_argument("--version", action="version", version=f"cloudsession {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_subcommands(sub)  # serve, check-config
    tools.add_subcommands(sub)  # import, export, admin ..., gc
    push.add_subcommands(sub)  # push
    opencode.add_subcommands(sub)  # opencode install | uninstall | status
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except ConfigError as exc:
        print(f"cloudsession: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
