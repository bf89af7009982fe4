"""HTTP concerns every door shares: JSON and HTML responses, request bodies, the public origin
and forwarded headers, and read tokens.

``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are read here and nowhere else; only their first
value counts (the proxy nearest the client).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
import logging
import re
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

try:  # brotli (``br``) when the package is installed; gzip always
    import brotli
except ImportError:  # pragma: no cover - a dependency; kept optional for slim installs
    brotli = None

from cloudsession.errors import BodyAborted, BodyTooLarge, RequestTimeout
from cloudsession.jsonio import json_bytes, parse_json, scrub_text
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


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; lone surrogates (a Worker-written share's text cut inside an emoji)
    become U+FFFD here, at the output edge (docs/migration.md)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return scrub_text(text).encode("utf-8")


def html_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = utf8(text)
    response = web.Response(body=body, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    if headers:
        response.headers.update(headers)
    return response


def _request_key(name: str, kind: type) -> Any:
    """A typed request key where aiohttp has them (3.13+); a plain string key before."""
    return web.RequestKey(name, kind) if hasattr(web, "RequestKey") else f"cloudsession.{name}"


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or ``{}`` when the content type is not JSON (reference rule)."""
    return (await read_json_sized(request))[0]


async def read_json_sized(request: web.Request) -> tuple[Any, int]:
    """``read_json`` and the body's decoded length in bytes (what a sync weighs in
    ``ShareService.sync``'s batches), 0 when the content type is not JSON."""
    if not _JSON_TYPE_RE.match(request.headers.get("Content-Type", "")):
        return {}, 0
    body = await read_body(request)
    return parse_json(body), len(body)


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
    content = request.content
    if content.is_eof():
        # The whole body has arrived already (the usual case for a small body): nothing to wait
        # for, so no deadline to arm. What is buffered is bounded by aiohttp's read-ahead limit.
        async with body_deadline(request, timeout=None):
            body = await content.read()
        if len(body) > limit:
            raise BodyTooLarge(f"Request body exceeds {limit} bytes")
        return body
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
    known: str | None = request.get(_CLIENT_ADDRESS)
    if known is not None:
        return known  # worked out once per request: the audit actor, the limiter and the access log all ask
    app = request.app if isinstance(request, web.Request) else None
    trusted = app[SETTINGS].rate_limits.trusted_proxies if app is not None and SETTINGS in app else ()
    address = client_ip(request, trusted)
    found = str(address) if address is not None else (request.remote or "")
    request[_CLIENT_ADDRESS] = found
    return found


_CLIENT_ADDRESS = _request_key("client_address", str)


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


# Content codings we produce, best first when the client likes them equally.
ENCODINGS = ("br", "gzip") if brotli is not None else ("gzip",)
# Bodies larger than this are compressed in a worker thread (the loop keeps serving), at most
# COMPRESS_THREADS at a time; brotli's quality drops a notch for them (4: ~4 MB/s per core less
# work than 5 for a few percent more bytes).
LARGE_BODY_BYTES = 256 * 1024
COMPRESS_THREADS = 2
# Compressed bodies of responses that carry an ETag are kept (per ETag, coding and redaction
# scope) so that a hot version is compressed once; least recently used first out.
COMPRESSED_CACHE_BYTES = 32 * 1024 * 1024
_ALREADY_COMPRESSED = ("image/png", "image/jpeg", "image/webp", "image/gif", "application/zip", "application/gzip")


def accepted_encodings(header: str) -> dict[str, float]:
    """``Accept-Encoding`` as coding -> q-value (lower-cased; at most 32 entries read)."""
    out: dict[str, float] = {}
    for entry in header.split(",")[:32]:
        name, _, params = entry.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(1.0, max(0.0, float(value)))
                except ValueError:
                    quality = 0.0
        token = name.strip().lower()
        if token == "x-gzip":
            token = "gzip"
        if token:
            out[token] = quality
    return out


def negotiate_encoding(header: str, available: tuple[str, ...] = ENCODINGS) -> str | None:
    """The coding to send for an ``Accept-Encoding`` value: the available one with the highest
    q-value (a tie goes to the first of ``available``), named or through ``*``; None when every
    one is refused (``gzip;q=0``) or none is named (``identity``, or no header)."""
    accepted = accepted_encodings(header)
    wildcard = accepted.get("*")
    best: tuple[float, str] | None = None
    for coding in available:
        quality = accepted.get(coding, wildcard)
        if quality is not None and quality > 0 and (best is None or quality > best[0]):
            best = (quality, coding)
    return best[1] if best is not None else None


def compress(body: bytes, coding: str) -> bytes:
    if coding == "br":
        assert brotli is not None
        return bytes(brotli.compress(body, quality=4 if len(body) > LARGE_BODY_BYTES else 5))
    # gzip as aiohttp writes it, with a fixed mtime: the same body always gives the same bytes.
    return gzip.compress(body, compresslevel=6, mtime=0)


class CompressedCache:
    """Compressed bodies by (ETag, coding, redaction scope), bounded in bytes (LRU)."""

    def __init__(self, limit: int = COMPRESSED_CACHE_BYTES) -> None:
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._threads = asyncio.Semaphore(COMPRESS_THREADS)

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[Any, ...], value: bytes) -> None:
        if len(value) > self.limit // 4:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= len(old)
        self._items[key] = value
        self.nbytes += len(value)
        while self.nbytes > self.limit:
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= len(evicted)

    async def compress(self, body: bytes, coding: str) -> bytes:
        if len(body) <= LARGE_BODY_BYTES:
            return compress(body, coding)
        async with self._threads:
            return await asyncio.to_thread(compress, body, coding)


def _compressible(request: web.Request, response: web.StreamResponse) -> bytes | None:
    """The body to compress, or None: streams, WebSockets, HEAD, empty statuses, small bodies,
    already-encoded bodies and types that do not compress pass untouched."""
    if not isinstance(response, web.Response) or response.compression or request.method == "HEAD":
        return None
    if "Content-Encoding" in response.headers or response.content_type not in COMPRESSIBLE_TYPES:
        return None
    body = response.body
    if not isinstance(body, (bytes, bytearray)) or len(body) < MIN_COMPRESS_BYTES or response.status in (204, 206, 304):
        return None
    return body if isinstance(body, bytes) else bytes(body)


def _add_vary(response: web.StreamResponse) -> None:
    vary = response.headers.get("Vary", "")
    if "accept-encoding" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Accept-Encoding" if vary else "Accept-Encoding"


async def compress_response(request: web.Request, response: web.StreamResponse, cache: CompressedCache | None = None) -> None:
    """Brotli or gzip, as the client prefers (q-values), for HTML, JSON and static text worth it
    (``compress_middleware``). A response with an ETag is compressed once per ETag, coding and
    body length, and served from ``cache`` after that (an ETag names one representation: the
    body passed the redaction before it gets here, and is the same for the same ETag)."""
    body = _compressible(request, response)
    if body is None:
        if isinstance(response, web.Response) and response.content_type in COMPRESSIBLE_TYPES and response.status not in (204, 304):
            _add_vary(response)
        return
    _add_vary(response)
    coding = negotiate_encoding(request.headers.get("Accept-Encoding", ""))
    if coding is None:
        return
    etag = response.headers.get("ETag")
    key = (etag, coding, response.content_type, len(body)) if cache is not None and etag else None
    packed = cache.get(key) if cache is not None and key is not None else None
    if packed is None:
        packed = await cache.compress(body, coding) if cache is not None else compress(body, coding)
        if cache is not None and key is not None:
            cache.put(key, packed)
    assert isinstance(response, web.Response)
    response.body = packed
    response.headers["Content-Encoding"] = coding


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


# What a 304 must repeat of its 200's Vary (RFC 9110 15.4.5): compressible answers vary on it.
VARY_ENCODING = {"Vary": "Accept-Encoding"}


def not_modified_response(etag: str, cache_control: str, *, compressible: bool = True) -> web.Response:
    """A 304 with the headers its 200 would carry: the ETag, Cache-Control and, for a
    compressible resource, ``Vary: Accept-Encoding`` (the compression middleware adds it to the
    200 and leaves 304s alone)."""
    response = web.Response(status=304)
    response.headers.update(SECURITY_HEADERS)
    response.headers.update({"ETag": etag, "Cache-Control": cache_control, **(VARY_ENCODING if compressible else {})})
    return response
