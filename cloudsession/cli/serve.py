"""``cloudsession serve`` and ``cloudsession check-config``.

Startup explains itself: every configuration or environment mistake (a bad value, an unknown
key, an unusable data dir, a port in use, a store that does not answer) ends in one line on
stderr that names the setting, and exit status 2 (1 for a store that does not answer), never a
traceback. The order is chosen so that nothing is announced before it works: settings, data
dir, the store, the listening socket, then "listening on ...".
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cloudsession import __version__
from cloudsession.cli import workers
from cloudsession.cli.common import StoreCheckFailed, add_config_flags, check_store, describe_store
from cloudsession.config import (
    FLAGS,
    VARS,
    ConfigError,
    MiB,
    Settings,
    ensure_local_admin_key,
    ensure_namespace,
    env_names,
    load_settings,
    prepare_data_dir,
)
from cloudsession.logs import configure as configure_logging
from cloudsession.web.app import create_app
from cloudsession.web.auth import enable_local_admin
from cloudsession.web.keys import IN_FLIGHT
from cloudsession.web.lifecycle import close_viewers

# One line per request without the query string (read tokens travel in ``?token=``), with the
# request id, route, share id and public session id: web/observability.py.
from cloudsession.web.observability import AccessLogger

# How long `serve` and `check-config --check-store` wait for the store's first answer.
STORE_CHECK_SECONDS = 10.0
# On SIGTERM or SIGINT: requests already being read or handled get this long to finish (below
# Kubernetes' default 30 s grace period); whatever is left then gets SHUTDOWN_TIMEOUT_SECONDS more.
DRAIN_SECONDS = 20.0
SHUTDOWN_TIMEOUT_SECONDS = 5.0
log = logging.getLogger("cloudsession.serve")


def bind(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything says "listening"; ConfigError naming the
    setting when the address is taken, not local, or not allowed."""
    where = f"{settings.host}:{settings.port}"
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"{settings.origin('host')}: cannot resolve {settings.host!r}: {getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        # An address this machine does not have is the host's fault; anything else the port's.
        name = settings.origin("host") if exc.errno == errno.EADDRNOTAVAIL else settings.origin("port")
        raise ConfigError(f"{name}: cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(config_file=args.config, env_name=args.env_name, overrides={"data_dir": args.data_dir, "host": args.host, "port": args.port})
    configure_logging(settings.log_level, settings.log_format)  # text or JSON lines (LOG_FORMAT)
    # "Found credentials in environment variables" on every start says nothing an operator needs.
    for name in ("aiobotocore.credentials", "botocore.credentials"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    count = workers.parse_workers(args.workers) if args.workers is not None else 1
    if count > 1:
        workers.require_reuseport()
    prepare_data_dir(settings)
    settings = ensure_namespace(settings)  # created once, by the parent, before any worker starts
    try:
        asyncio.run(check_store(settings, STORE_CHECK_SECONDS))
    except StoreCheckFailed as exc:
        print(f"cloudsession: {exc}", file=sys.stderr)
        return 1
    local_admin = ensure_local_admin_key(settings)
    sock = bind(settings)
    host, port = sock.getsockname()[:2]
    origin = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if count > 1:
        return serve_workers(settings, count, sock, local_admin, origin)
    app = create_app(settings)
    token = enable_local_admin(app, local_admin[0]) if local_admin is not None else None

    asyncio.run(serve_until_signalled(app, sock, lambda: announce(origin, settings, local_admin, token)))
    return 0


def announce(origin: str, settings: Settings, local_admin: tuple[str, Path] | None, token: str | None, count: int = 1) -> None:
    """The startup lines, printed once the server (every worker) listens."""
    port = origin.rsplit(":", 1)[1]
    shown_workers = f", {count} workers" if count > 1 else ""
    print(f"cloudsession {__version__} listening on {origin} (store {describe_store(settings)}{shown_workers})", flush=True)
    if local_admin is not None:
        shown = origin if settings.host not in ("0.0.0.0", "::") else f"http://127.0.0.1:{port}"
        print(
            f"sign in to {shown}/sessions once with this link (it works one time, for an hour):\n"
            f"    {shown}/sessions/login?token={token}\n"
            f"or paste the admin key kept in {local_admin[1]} into the sign-in form. "
            "Set SESSIONS_RPC_SHARED_KEY to choose the key yourself.",
            flush=True,
        )


def serve_workers(settings: Settings, count: int, probe: socket.socket, local_admin: tuple[str, Path] | None, origin: str) -> int:
    """``serve --workers N`` (N > 1): the supervising parent (cli/workers.py)."""
    reserved = workers.reserve_port(settings, probe)
    settings = settings.model_copy(update={"port": reserved.getsockname()[1]})  # --port 0: the port chosen
    token, claim = workers.sign_in_for_workers(settings) if local_admin is not None else (None, None)
    run = workers.worker_main(settings, (local_admin[0], token) if local_admin is not None and token is not None else None, serve_until_signalled)
    # A worker gets the single process's whole shutdown, and a little more, before it is killed.
    supervisor = workers.Supervisor(settings, count, reserved, run, grace=DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 5)
    try:
        return supervisor.run(lambda: announce(origin, settings, local_admin, token, count))
    finally:
        if claim is not None:
            claim.unlink(missing_ok=True)


async def serve_until_signalled(app: web.Application, sock: socket.socket, announce: Callable[[], None], parent_alive: int | None = None) -> None:
    """Serve on ``sock`` until SIGTERM or SIGINT, then shut down in order: stop accepting, close
    the live viewers (1001), let the requests in flight finish (``DRAIN_SECONDS`` at most: a sync
    still uploading completes instead of being cut off), then run the cleanups.

    A worker of ``serve --workers N`` passes ``parent_alive``, a pipe that reaches end-of-file when
    the parent is gone (a shutdown, as SIGTERM); a signal arriving once it stops is ignored (the
    parent forwards the one it got, an init system may send its own: neither may cut the drain)."""
    runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if parent_alive is not None:

        def orphaned() -> None:
            loop.remove_reader(parent_alive)
            log.warning("the supervising process is gone; shutting down")
            stop.set()

        loop.add_reader(parent_alive, orphaned)
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        announce()
        await stop.wait()
        log.info("shutting down: %d request(s) in flight", app[IN_FLIGHT].count)
        await site.stop()
        await close_viewers(app)
        if not await app[IN_FLIGHT].drained(DRAIN_SECONDS):
            log.warning("shutting down with %d request(s) still in flight after %gs", app[IN_FLIGHT].count, DRAIN_SECONDS)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            if parent_alive is not None:
                signal.signal(signum, signal.SIG_IGN)
        if parent_alive is not None:
            loop.remove_reader(parent_alive)
        await runner.cleanup()


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.reference:
        sys.stdout.write(reference_markdown())
        return 0
    settings = load_settings(config_file=args.config, env_name=args.env_name, overrides={"data_dir": args.data_dir})
    print(json.dumps(settings.redacted(), indent=2, default=str))
    if settings.shared_secret is None:
        print("note: SESSIONS_SHARED_SECRET is not set; `serve` will use a development namespace", file=sys.stderr)
    if args.check_store:
        try:
            asyncio.run(check_store(settings, args.store_timeout))
        except StoreCheckFailed as exc:
            print(f"cloudsession: {exc}", file=sys.stderr)
            return 1
        print(f"store {describe_store(settings)}: answers", file=sys.stderr)
    return 0


def add_subcommands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the share server")
    add_config_flags(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8787; 0 picks a free one)")
    serve.add_argument(
        "--workers",
        metavar="N",
        help="worker processes sharing the port with SO_REUSEPORT (Linux), under a supervising parent: a number, "
        "or auto for one per CPU (default 1: one process; docs/running.md)",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="print the effective configuration, secrets redacted")
    add_config_flags(check)
    check.add_argument("--check-store", action="store_true", help="also try the store (a one-key listing) and name the endpoint and bucket when it fails")
    check.add_argument("--store-timeout", type=float, default=STORE_CHECK_SECONDS, help="seconds to wait for the store (default %(default)s)")
    check.add_argument("--reference", action="store_true", help="print the configuration reference (docs/configuration.md) and exit")
    check.set_defaults(func=cmd_check_config)


# -- the configuration reference ----------------------------------------------------------------
# docs/configuration.md is reference_markdown()'s output, generated from the settings model
# (config.Settings, VARS and the environment rules of config.apply_environment); regenerate with
# `python scripts/gen_config_docs.py`; tests/test_config_reference.py fails when they differ.

# Settings set only from the environment or the config file's own sections, not through [vars].
ENVIRONMENT_ONLY: dict[tuple[str, ...], list[str]] = {
    ("shared_secret",): ["SESSIONS_SHARED_SECRET"],
    ("rpc_shared_key",): ["SESSIONS_RPC_SHARED_KEY"],
    ("metrics_token",): ["CLOUDSESSION_METRICS_TOKEN", "METRICS_TOKEN"],
    ("store", "backend"): ["CLOUDSESSION_STORE"],
    ("store", "bucket"): ["CLOUDSESSION_STORE"],
    ("store", "prefix"): ["CLOUDSESSION_STORE"],
    ("store", "path"): ["CLOUDSESSION_STORE"],
    ("store", "endpoint"): ["AWS_ENDPOINT_URL"],
    ("store", "region"): ["AWS_REGION", "AWS_DEFAULT_REGION"],
}
FILE_KEYS: dict[tuple[str, ...], str] = {
    ("name",): "`name` (top level)",
    ("store", "backend"): "`r2_buckets.backend`",
    ("store", "bucket"): "`r2_buckets.bucket_name`",
    ("store", "endpoint"): "`r2_buckets.endpoint`",
    ("store", "region"): "`r2_buckets.region`",
    ("store", "prefix"): "`r2_buckets.prefix`",
    ("store", "path"): "`r2_buckets.path`",
}
# Config file sections of their own (``[retention]``, ``[hooks]``), not [vars] keys.
FILE_SECTIONS = ("retention", "hooks")
# Other variables the commands read, listed for completeness.
OTHER_ENVIRONMENT = [
    ("API_DOMAIN", "`PUBLIC_URL` as `https://<API_DOMAIN>` when `PUBLIC_URL` is not set (the Worker's name); also a `[vars]` key."),
    ("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE", "S3 credentials, read by the AWS SDK; never from the config file."),
    ("XDG_DATA_HOME", "Where the default data dir lives (`$XDG_DATA_HOME/cloudsession`)."),
    ("CLOUDSESSION_SHARE_TOKEN", "`cloudsession import`: the read token of a private share."),
]


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo]]:
    out: list[tuple[tuple[str, ...], FieldInfo]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _leaves(annotation, (*prefix, name))
        else:
            out.append(((*prefix, name), info))
    return out


def settings_fields() -> list[tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf setting of ``Settings`` with its field (nested models flattened)."""
    return _leaves(Settings)


def _default(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    value: Any = info.default
    if value is PydanticUndefined:
        return "—"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"`{value}` ({value // MiB} MiB)"
    if isinstance(value, str) and value == "":
        return '`""`'
    return f"`{value}`"


def _bounds(info: FieldInfo) -> str:
    words = []
    for item in info.metadata:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(item, attr, None)
            if bound is not None:
                words.append(f"{word} {bound}")
    return f" Must be {' and '.join(words)}." if words else ""


def rows() -> list[list[str]]:
    var_of = {path: var for var, path in VARS.items()}
    table = []
    for path, info in settings_fields():
        var = var_of.get(path)
        env = env_names(var) if var else ENVIRONMENT_ONLY.get(path, [])
        flag = FLAGS.get(path[-1]) if len(path) == 1 else None
        section = f"`[{path[0]}] {'.'.join(path[1:])}`" if path[0] in FILE_SECTIONS else "—"
        where = [f"`{var}`" if var else FILE_KEYS.get(path, section)]
        table.append([
            f"`{'.'.join(path)}`",
            where[0],
            ", ".join(f"`{name}`" for name in env) or "—",
            f"`{flag}`" if flag else "—",
            _default(info),
            (info.description or "").replace("|", "\\|") + _bounds(info),
        ])
    return table


HEADER = """# Configuration reference

<!-- Generated from the settings model (cloudsession/config.py) by cloudsession/cli/serve.py.
     Do not edit by hand: change the Field(description=...) in config.py, then regenerate with
         python scripts/gen_config_docs.py
     (or: cloudsession check-config --reference > docs/configuration.md).
     tests/test_config_reference.py fails when this file and the generator disagree. -->

Precedence, lowest first: built-in defaults, the config file's top level (`--config FILE`), its
`[env.NAME]` section (`--env NAME`), environment variables, command-line flags. A `[vars]` key
`NAME` is also read from the environment as `CLOUDSESSION_NAME` (`PUBLIC_URL` and `REDIS_URL`
also under their own names). Secrets (`SESSIONS_SHARED_SECRET`, `SESSIONS_RPC_SHARED_KEY`, AWS
credentials, a Redis password) are read only from the environment. `cloudsession check-config`
prints the effective configuration with secrets redacted; `--check-store` also tries the store.

A mistake stops `serve` with one line that names the setting where it was set (the environment
variable, the flag, or the config file and key), for example
`cloudsession: configuration error: CLOUDSESSION_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'LOUD')`.

"""


def reference_markdown() -> str:
    lines = [HEADER.rstrip("\n"), "", "## Settings", ""]
    lines.append("| setting | `[vars]` key / file key | environment | flag | default | meaning |")
    lines.append("|---|---|---|---|---|---|")
    for row in rows():
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Other environment variables", "", "| variable | meaning |", "|---|---|"]
    for name, meaning in OTHER_ENVIRONMENT:
        lines.append(f"| `{name}` | {meaning} |")
    return "\n".join(lines) + "\n"


def write_reference(path: Path) -> bool:
    """Write the reference to ``path``; True when the file changed."""
    text = reference_markdown()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True
