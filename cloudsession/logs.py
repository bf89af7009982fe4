"""Logging: plain text for a terminal or JSON lines for a log collector (``LOG_FORMAT``), and the
request context every line about a request carries.

JSON lines come from python-json-logger: it is a formatter for the standard ``logging`` module,
which aiohttp, redis and botocore already log through, so every library's lines become JSON
without re-routing them (structlog would need its stdlib bridge for the same result).

The request context lives in a ``ContextVar`` set by the web middleware for the duration of a
request (``web/observability.py``): ``request_id`` and ``route``, and what the domain adds with
``annotate`` once it knows it, ``share_id`` and the *public* session id (``session``). A filter
on the root handler copies them onto every record, so a line logged deep in the share service
still names its request. Nothing here ever holds a secret, token, admin key, real session ID or
session content: only those fields are copied, and callers put only those values in them.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

# The fields a request's log lines carry; ``annotate`` accepts no others.
CONTEXT_FIELDS = ("request_id", "route", "share_id", "session")

_context: ContextVar[dict[str, Any] | None] = ContextVar("cloudsession_log_context", default=None)


def bind(**fields: Any) -> Any:
    """Start a request's context (returns the token for ``unbind``)."""
    return _context.set({k: v for k, v in fields.items() if k in CONTEXT_FIELDS and v is not None})


def unbind(token: Any) -> None:
    _context.reset(token)


def current() -> dict[str, Any]:
    """The current request's context (empty outside a request). Mutable: ``annotate`` fills it."""
    return _context.get() or {}


def annotate(**fields: Any) -> None:
    """Add ``share_id`` / ``session`` (the public id) to the current request's context, if any."""
    context = _context.get()
    if context is not None:
        for key, value in fields.items():
            if key in CONTEXT_FIELDS and value is not None:
                context[key] = value


class ContextFilter(logging.Filter):
    """Copies the request context onto each record (``record.request_id`` and friends)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if context:
            for key, value in context.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """``2026-11-30 07:00:00,123 INFO name: message [request_id=... route=... share_id=...]``;
    a record with a ``config`` attribute (the startup line) shows it as JSON after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        text = super().formatMessage(record)
        # The access line's message already shows status and duration; the bracket adds the context.
        fields = [f"{key}={getattr(record, key)}" for key in CONTEXT_FIELDS if getattr(record, key, None) is not None]
        if fields:
            text = f"{text} [{' '.join(fields)}]"
        config = getattr(record, "config", None)  # the startup line's effective configuration
        return f"{text}; configuration: {json.dumps(config, default=str, sort_keys=True)}" if config is not None else text


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        json_ensure_ascii=False,
    )


def configure(level: str, fmt: str = "text", stream: Any = None) -> None:
    """Replace the root logger's handlers with one that writes ``fmt`` lines to ``stream``
    (stderr by default) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Neither format shows the calling function, the thread or the process, so no record needs
    # to look them up: a cost on every line, the access log's included (the logging HOWTO's
    # "Optimization" section names these switches).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
