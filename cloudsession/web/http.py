"""HTTP concerns every door shares: JSON and HTML responses, request bodies, the public origin
and forwarded headers, and read tokens.

``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are read here and nowhere else; only their first
value counts (the proxy nearest the client).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import sys
from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_response import ContentCoding

from cloudsession.errors import BodyAborted, BodyTooLarge, RequestTimeout
from cloudsession.jsonio import json_bytes, parse_json
from cloudsession.protocol import LABELS_HEADER, READ_TOKEN_HEADER, TTL_HEADER
from cloudsession.shares.lifecycle import CreateContext, labels_from_header
from cloudsession.web.keys import SETTINGS

log = logging.getLogger(__name__)

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
    return parse_json(await read_body(request))


async def read_body(request: web.Request) -> bytes:
    """The whole request body, at most ``max_body_bytes`` (413 beyond), arriving in time.

    The deadline moves with progress: the body may take ``body_timeout_seconds`` plus one
    second for every ``body_min_bytes_per_second`` bytes received so far. A client that
    trickles its body is answered 408 and disconnected after about ``body_timeout_seconds``;
    one that uploads a large body at any sane speed is never cut off.
    """
    settings = request.app[SETTINGS]
    limit = settings.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"Request body exceeds {limit} bytes")
    loop = asyncio.get_running_loop()
    started, grace, rate = loop.time(), settings.body_timeout_seconds, settings.body_min_bytes_per_second
    chunks: list[bytes] = []
    size = 0
    async with body_deadline(request, timeout=None):
        while True:
            async with asyncio.timeout_at(started + grace + size / rate):
                chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"Request body exceeds {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


@asynccontextmanager
async def body_deadline(request: web.Request, timeout: float | None = -1.0) -> AsyncIterator[None]:
    """Around every read of a request body: a body that does not arrive within ``timeout``
    (default ``body_timeout_seconds``; None: the caller keeps its own deadline) is a 408 and the
    connection is closed, and a client that goes away in the middle of its body is one debug
    line and a 400, not an unhandled error with a traceback."""
    if timeout is not None and timeout < 0:
        timeout = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        log.info("%s %s: request body not received in time; closing", request.method, request.path)
        raise RequestTimeout() from None
    except (web.RequestPayloadError, ConnectionError) as exc:
        log.debug("%s %s: request body aborted: %s", request.method, request.path, exc)
        raise BodyAborted() from None


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


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_ip(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> Address | None:
    """The peer, or the client a chain of trusted proxies reports in ``X-Forwarded-For``: read
    from the right, believed only as far as the hops are trusted proxies (entries further left
    are the client's to invent)."""
    peer = parse_address(request.remote or "")
    if peer is None or not _trusted(peer, trusted):
        return peer
    hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
    address: Address = peer
    for hop in reversed(hops):
        parsed = parse_address(hop)
        if parsed is None:
            break  # a malformed hop: believe no further than the last trusted proxy
        address = parsed
        if not _trusted(parsed, trusted):
            break
    return address


def _trusted(address: Address, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(request: web.BaseRequest) -> str:
    """The client's address as every per-client feature counts it (rate limits, viewer caps, the
    audit trail, the access log): ``TRUSTED_PROXIES`` decide how far ``X-Forwarded-For`` is
    believed (docs/operations.md)."""
    app = request.app if isinstance(request, web.Request) else None
    trusted = app[SETTINGS].rate_limits.trusted_proxies if app is not None and SETTINGS in app else ()
    address = client_ip(request, trusted)
    return str(address) if address is not None else (request.remote or "")


def request_read_token(request: web.Request) -> str | None:
    """A private share's read token: the ``x-opencode-share-token`` header, or ``?token=`` (how a
    browser link carries it; the access log leaves query strings out). See docs/protocol.md."""
    return request.headers.get(READ_TOKEN_HEADER) or request.query.get("token")


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-level logger (``aiohttp.server``), made quiet about the client's faults.

    Requests that break HTTP (a malformed request line or header, a line too long, a bad chunk)
    and connections dropped mid-request are the internet's background noise: one INFO line
    each, without a traceback. Anything else keeps its traceback at ERROR.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, (HttpProcessingError, web.RequestPayloadError, ConnectionError)):
            text = str(msg) % args if args else str(msg)
            detail = getattr(error, "message", None) or str(error) or type(error).__name__
            # One line: the detail may quote the client's bytes, newlines included.
            self.info("%s: %s: %s", text, type(error).__name__, " ".join(str(detail).split())[:200])
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs


def create_context(request: web.Request) -> tuple[dict[str, str], CreateContext]:
    """What a create request's headers add to its body: labels (``X-Cloudsession-Labels``), and
    the TTL header and User-Agent that retention reads (docs/lifecycle.md)."""
    labels = labels_from_header(request.headers.get(LABELS_HEADER))
    return labels, CreateContext(header_ttl=request.headers.get(TTL_HEADER), user_agent=request.headers.get("User-Agent", ""))


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
