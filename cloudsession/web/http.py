"""HTTP concerns every door shares: JSON and HTML responses, request bodies, the public origin
and forwarded headers, and read tokens.

``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are read here and nowhere else; only their first
value counts (the proxy nearest the client).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from cloudsession.jsonio import json_bytes, parse_json, scrub_text
from cloudsession.protocol import READ_TOKEN_HEADER
from cloudsession.web.keys import SETTINGS

# The reference parses a body as JSON only for these content types (hono's rule); anything else
# is treated as an empty object, which then fails validation with a 400.
_JSON_TYPE_RE = re.compile(r"^application/([a-z.\-]+\+)?json(\s*;.*)?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# On every HTML page and the JSON the pages fetch.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json_bytes(data), status=status, content_type="application/json", headers=headers)


def html_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in a Worker-written share: U+FFFD at the edge
        body = scrub_text(text).encode("utf-8")
    response = web.Response(body=body, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    if headers:
        response.headers.update(headers)
    return response


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or ``{}`` when the content type is not JSON (reference rule)."""
    if not _JSON_TYPE_RE.match(request.headers.get("Content-Type", "")):
        return {}
    # Beyond client_max_size aiohttp raises HTTPRequestEntityTooLarge; the error middleware
    # answers it as our 413.
    return parse_json(await request.read())


def _first(request: web.Request, header: str) -> str:
    return request.headers.get(header, "").split(",")[0].strip()


def forwarded_proto(request: web.Request) -> str:
    """``http`` or ``https``: the first ``X-Forwarded-Proto`` when sane, else the request's own."""
    proto = _first(request, "X-Forwarded-Proto").lower()
    return proto if proto in ("http", "https") else request.scheme


def forwarded_host(request: web.Request) -> str | None:
    """The first ``X-Forwarded-Host``, when present."""
    return _first(request, "X-Forwarded-Host") or None


def is_https(request: web.Request) -> bool:
    return request.scheme == "https" or forwarded_proto(request) == "https"


def public_origin(request: web.Request) -> str:
    """Origin for share URLs: PUBLIC_URL / API_DOMAIN, else the request's forwarded or own host."""
    configured = request.app[SETTINGS].public_url
    if configured:
        return configured
    host = forwarded_host(request) or request.host
    if not _HOST_RE.match(host):
        host = "localhost"
    return f"{forwarded_proto(request)}://{host}"


def request_read_token(request: web.Request) -> str | None:
    """A private share's read token: the ``x-opencode-share-token`` header, or ``?token=`` (how a
    browser link carries it; the access log leaves query strings out). See docs/protocol.md."""
    return request.headers.get(READ_TOKEN_HEADER) or request.query.get("token")
