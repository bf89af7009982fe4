"""HTTP concerns every door shares: JSON and HTML responses, request bodies, the public origin
and forwarded headers, and read tokens.

``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are read here and nowhere else; only their first
value counts (the proxy nearest the client).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from aiohttp import web
from aiohttp.web_response import ContentCoding

from cloudsession.jsonio import json_bytes, parse_json
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


# Share pages may be kept this long by browsers and caches (a live page catches up over /ws on
# load anyway); private shares are never stored.
PUBLIC_PAGE_CACHE = "public, max-age=30, stale-while-revalidate=300"
PRIVATE_PAGE_CACHE = "private, no-store"
# Hashed static URLs (/static/x?v=<content hash>) never change.
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
# Bodies smaller than this are sent as they are: gzip would save little and cost a round of work.
MIN_COMPRESS_BYTES = 1024
COMPRESSIBLE_TYPES = frozenset(
    {"text/html", "application/json", "text/css", "application/javascript", "text/javascript", "image/svg+xml", "text/plain"}
)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json_bytes(data), status=status, content_type="application/json", headers=headers)


def html_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
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


# --------------------------------------------------------------------------- compression, caching


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip, honouring q-values (``gzip;q=0`` and
    ``identity`` alone mean no; ``*`` means yes unless gzip is refused by name)."""
    named: float | None = None
    wildcard: float | None = None
    for entry in header.split(",")[:32]:
        name, _, params = entry.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        token = name.strip().lower()
        if token in ("gzip", "x-gzip"):
            named = quality
        elif token == "*":
            wildcard = quality
    if named is not None:
        return named > 0
    return wildcard is not None and wildcard > 0


def compress_response(request: web.Request, response: web.StreamResponse) -> None:
    """Gzip HTML, JSON and static text when the client accepts it and the body is worth it
    (``compress_middleware``). Streams, WebSockets and already-encoded bodies pass untouched."""
    if not isinstance(response, web.Response) or response.compression:
        return
    if "Content-Encoding" in response.headers or response.content_type not in COMPRESSIBLE_TYPES:
        return
    body = response.body
    if not isinstance(body, (bytes, bytearray)) or len(body) < MIN_COMPRESS_BYTES or response.status in (204, 304):
        return
    vary = response.headers.get("Vary", "")
    if "accept-encoding" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Accept-Encoding" if vary else "Accept-Encoding"
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        response.enable_compression(ContentCoding.gzip)


def weak_etag(body: bytes) -> str:
    """A validator for a rendered representation (weak: gzip and identity share it)."""
    return 'W/"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def not_modified(request: web.Request, etag: str) -> bool:
    """``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks for GET)."""
    header = request.headers.get("If-None-Match", "")
    if not header:
        return False
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in header.split(",")[:64])


def not_modified_response(etag: str, cache_control: str) -> web.Response:
    response = web.Response(status=304)
    response.headers.update(SECURITY_HEADERS)
    response.headers.update({"ETag": etag, "Cache-Control": cache_control})
    return response
