"""``cloudsession import <url>``: download a share and turn it into an opencode export file.

``opencode import <url>`` needs a live share server; ``opencode import FILE`` does not. This
module fetches a share (from cloudsession, or from any server speaking the share API) and writes
the JSON that ``opencode export`` prints and ``opencode import FILE`` reads::

    {"info": <Session>, "messages": [{"info": <Message>, "parts": [<Part>, ...]}, ...]}

Two payload shapes are understood: the flat ``[{type, data}, ...]`` array of
``GET /api/share/<id>/data`` (what ``opencode import <url>`` reads) and the reference Worker's
object (``GET /api/share/<id>``: ``{session, messages, parts, ...}``), which is what a server
without ``/data`` answers. The conversion follows the real client's reading rules
(compat-contract.md §4.4): the first ``session`` item wins, a later message or part with the same
id replaces an earlier one, parts of absent messages are dropped; messages and parts come out in
id order, as ``opencode export`` writes them.

Private shares: their read token travels in the ``x-opencode-share-token`` header, never in the
query string (it would end up in proxy logs). It is taken from ``--token`` / the environment, or
from a ``?token=`` in the pasted share link, and it is dropped if a redirect leaves the origin.

Every failure is an ``ImportFailed`` subclass carrying the process exit code and a message for
the user; nothing else escapes :func:`import_share`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import orjson

from cloudsession import __version__
from cloudsession.credentials import SHARE_ID_RE
from cloudsession.protocol import READ_TOKEN_HEADER

# Share page, API object and /data URLs all name the share; the id rule is the server's.
_PATH_RE = re.compile(r"^/(?:share|api/shares?)/(?P<id>[^/]+)(?:/data)?/?$")
MAX_URL_LENGTH = 2048
MAX_REDIRECTS = 5
DEFAULT_TIMEOUT = 60.0
# The server's default per-share limit (Settings.limits.max_share_bytes).
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
READ_CHUNK = 256 * 1024


class ImportFailed(Exception):
    """An import that cannot complete; ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class InvalidShareURL(ImportFailed):
    exit_code = 2


class RemoteShareNotFound(ImportFailed):
    exit_code = 3


class RemoteShareGone(ImportFailed):
    exit_code = 4


class BadShareData(ImportFailed):
    """The server answered, but not with a share we can read (HTTP error, not JSON, wrong shape)."""

    exit_code = 5


class NetworkFailure(ImportFailed):
    exit_code = 6


@dataclass(frozen=True, slots=True)
class ShareLocation:
    origin: str
    share_id: str
    token: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The share link without any token, for messages."""
        return f"{self.origin}/share/{self.share_id}"

    @property
    def data_url(self) -> str:
        return f"{self.origin}/api/share/{self.share_id}/data"

    @property
    def object_url(self) -> str:
        return f"{self.origin}/api/share/{self.share_id}"


def parse_share_url(url: str, token: str | None = None) -> ShareLocation:
    """Where to fetch from. Accepts ``<origin>/share/<id>`` (the link opencode prints), the API
    forms ``/api/share/<id>`` and ``/api/share/<id>/data``, a trailing slash and ``?token=``.
    An explicit ``token`` wins over one in the URL."""
    text = url.strip()
    expected = "expected http(s)://HOST/share/SHARE_ID"
    if len(text) > MAX_URL_LENGTH:
        raise InvalidShareURL(f"Invalid share URL: longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidShareURL(f"Invalid share URL {_shown(text)}: {expected}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidShareURL(f"Invalid share URL {_shown(text)}: {expected}")
    if parts.username is not None or parts.password is not None:
        raise InvalidShareURL("Invalid share URL: credentials in the URL are not supported; use --token for private shares")
    match = _PATH_RE.match(parts.path)
    if match is None or not SHARE_ID_RE.match(match["id"]):
        raise InvalidShareURL(f"Invalid share URL {_shown(text)}: {expected}")
    query = parse_qs(parts.query)
    return ShareLocation(f"{parts.scheme}://{parts.netloc.lower()}", match["id"], token or next(iter(query.get("token", [])), None))


def _shown(url: str) -> str:
    """A URL fit for a message: no query string (it may hold a token), bounded length."""
    bare = url.split("?", 1)[0].split("#", 1)[0]
    return repr(bare if len(bare) <= 200 else bare[:200] + "...")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"


@dataclass(slots=True)
class Fetched:
    status: int
    reason: str
    content_type: str
    body: bytes


async def _get(session: aiohttp.ClientSession, url: str, token: str | None, max_bytes: int) -> Fetched:
    """GET ``url``, following redirects by hand so the token never leaves its origin."""
    origin = _origin_of(url)
    for _ in range(MAX_REDIRECTS + 1):
        headers = {"Accept": "application/json", "User-Agent": f"cloudsession/{__version__}"}
        if token and _origin_of(url) == origin:
            headers[READ_TOKEN_HEADER] = token
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                if urlsplit(url).scheme not in ("http", "https"):
                    raise BadShareData(f"The server redirected to an unsupported URL {_shown(url)}")
                continue
            too_large = BadShareData(f"The share is larger than the limit of {max_bytes} bytes (see --max-bytes)")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise too_large
            # StreamReader.read(n) returns what is buffered (often one chunk), not n bytes:
            # read to the end, counting, so a large share arrives whole and a huge one is refused.
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                chunks.append(chunk)
            return Fetched(resp.status, resp.reason or "", resp.headers.get("Content-Type", ""), b"".join(chunks))
    raise BadShareData(f"Too many redirects (more than {MAX_REDIRECTS})")


async def fetch_share(location: ShareLocation, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """The share's JSON payload: ``/data`` first, then the object form when ``/data`` is missing
    (a reference Worker has no such route)."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            answer = await _get(session, location.data_url, location.token, max_bytes)
            if answer.status == 404:
                answer = await _get(session, location.object_url, location.token, max_bytes)
    except ImportFailed:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else (str(exc) or type(exc).__name__)
        raise NetworkFailure(f"Could not reach {location.origin}: {reason}") from None
    return _payload(location, answer)


def _payload(location: ShareLocation, answer: Fetched) -> Any:
    where = location.display
    if answer.status == 404:
        hint = " (or it is private: pass its read token with --token)" if not location.token else ""
        raise RemoteShareNotFound(f"Share not found: {where}. It may have been deleted{hint}.")
    if answer.status == 410:
        raise RemoteShareGone(f"Share expired: {where} is no longer available.")
    if answer.status in (401, 403):
        raise BadShareData(f"Access to {where} was refused (HTTP {answer.status}).")
    if not 200 <= answer.status < 300:
        raise BadShareData(f"The server answered HTTP {answer.status} {answer.reason} for {where}.")
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        kind = answer.content_type.split(";")[0].strip() or "no content type"
        raise BadShareData(f"The server's answer for {where} is not JSON ({kind}); is this a share server?") from None


@dataclass(slots=True)
class Conversion:
    """The export document and what was left out of it, for the user to see."""

    document: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _entities(value: Any, what: str, warnings: list[str], *, need: tuple[str, ...] = ("id",)) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadShareData(f"The share's {what} are not a list")
    good = [v for v in value if isinstance(v, dict) and all(isinstance(v.get(k), str) and v.get(k) for k in need)]
    if len(good) != len(value):
        warnings.append(f"skipped {len(value) - len(good)} {what} without {' and '.join(need)}")
    return good


def _from_items(payload: list[Any], warnings: list[str]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    session: Any = None
    messages: list[Any] = []
    parts: list[Any] = []
    for item in payload:
        if not isinstance(item, dict):
            raise BadShareData("The share data holds an item that is not an object")
        kind, data = item.get("type"), item.get("data")
        if kind == "session" and session is None:
            session = data
        elif kind == "message":
            messages.append(data)
        elif kind == "part":
            parts.append(data)
    return session, _entities(messages, "messages", warnings), _entities(parts, "parts", warnings, need=("id", "messageID"))


def to_export(payload: Any) -> Conversion:
    """Convert a share payload (flat ``/data`` array or the reference's object) to opencode's
    export format. Raises BadShareData when there is no session or no message to import."""
    warnings: list[str] = []
    if isinstance(payload, list):
        session, messages, parts = _from_items(payload, warnings)
    elif isinstance(payload, dict) and "session" in payload:
        session = payload.get("session")
        messages = _entities(payload.get("messages"), "messages", warnings)
        parts = _entities(payload.get("parts"), "parts", warnings, need=("id", "messageID"))
    else:
        raise BadShareData("The share data is neither a [{type, data}] array nor a {session, messages, parts} object")
    if not isinstance(session, dict) or not isinstance(session.get("id"), str) or not session["id"]:
        raise BadShareData("The share has no session (or its session has no id)")
    by_id: dict[str, dict[str, Any]] = {}
    for message in messages:
        by_id[message["id"]] = message  # a later copy is newer: the client reads it that way too
    if not by_id:
        raise BadShareData("The share is empty: it has no messages yet")
    grouped: dict[str, dict[str, dict[str, Any]]] = {mid: {} for mid in by_id}
    orphans = 0
    for part in parts:
        bucket = grouped.get(part["messageID"])
        if bucket is None:
            orphans += 1
            continue
        bucket[part["id"]] = part
    if orphans:
        warnings.append(f"skipped {orphans} parts whose message is not in the share")
    document = {
        "info": session,
        "messages": [
            {"info": by_id[mid], "parts": [grouped[mid][pid] for pid in sorted(grouped[mid])]} for mid in sorted(by_id)
        ],
    }
    return Conversion(document, warnings)


async def import_share(
    url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES
) -> Conversion:
    """Download the share at ``url`` and convert it (see the module docstring)."""
    location = parse_share_url(url, token)
    return to_export(await fetch_share(location, timeout=timeout, max_bytes=max_bytes))


def export_json(document: dict[str, Any]) -> bytes:
    """Indented like ``opencode export`` output, with a final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def write_output(data: bytes, path: Path | None) -> None:
    """Write to ``path`` atomically (a reader never sees half a file), or to stdout."""
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
