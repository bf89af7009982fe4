"""REST handlers under ``/api/``: parse the request, call the share service, shape the response.
(Create, and sync and delete with an Idempotency-Key, are served by ``durable_api.py``.)

The routes, status codes and error strings follow the reference Worker (compat-contract.md §3)
except where it was unsafe: reads never contain the secret or the real session ID, create is
idempotent, and bad input gets a 400 before anything is read or written.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from cloudsession.app_keys import SERVICE, SETTINGS
from cloudsession.credentials import secrets_equal
from cloudsession.errors import Unauthorized
from cloudsession.models import SecretBody, SyncBody, json_bytes, parse_body, parse_json, parse_sync_items

# The reference parses a body as JSON only for these content types (hono's rule); anything else
# is treated as an empty object, which then fails validation with a 400.
_JSON_TYPE_RE = re.compile(r"^application/([a-z.\-]+\+)?json(\s*;.*)?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json_bytes(data), status=status, content_type="application/json", headers=headers)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or ``{}`` when the content type is not JSON (reference rule)."""
    if not _JSON_TYPE_RE.match(request.headers.get("Content-Type", "")):
        return {}
    # Beyond client_max_size aiohttp raises HTTPRequestEntityTooLarge; app.py's error
    # middleware answers it as our 413.
    return parse_json(await request.read())


def public_origin(request: web.Request) -> str:
    """Origin for share URLs: PUBLIC_URL / API_DOMAIN, else the request's forwarded or own host."""
    configured = request.app[SETTINGS].public_url
    if configured:
        return configured
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if proto not in ("http", "https"):
        proto = request.scheme
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
    if not _HOST_RE.match(host):
        host = "localhost"
    return f"{proto}://{host}"


async def sync_share(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = parse_body(SyncBody, await read_json(request))
    items = parse_sync_items(body.data, max_items=settings.limits.max_items_per_sync)
    sync_count = await request.app[SERVICE].sync(request.match_info["id"], body.secret, items)
    return json_response({"success": True, "syncCount": sync_count})


async def delete_share(request: web.Request) -> web.Response:
    body = parse_body(SecretBody, await read_json(request))
    await request.app[SERVICE].delete(request.match_info["id"], body.secret)
    return json_response({"success": True})


READ_TOKEN_HEADER = "x-opencode-share-token"


def request_read_token(request: web.Request) -> str | None:
    """A private share's read token: the ``x-opencode-share-token`` header, or ``?token=`` (how a
    browser link carries it; the access log leaves query strings out). See docs/protocol.md."""
    return request.headers.get(READ_TOKEN_HEADER) or request.query.get("token")


async def get_share(request: web.Request) -> web.Response:
    view = await request.app[SERVICE].public_share(request.match_info["id"], request_read_token(request))
    return _public_json(view.agent_session(), view.redact)


async def get_share_data(request: web.Request) -> web.Response:
    view = await request.app[SERVICE].public_share(request.match_info["id"], request_read_token(request))
    return _public_json(view.data_items(), view.redact)


def _public_json(data: Any, redact: Any) -> web.Response:
    text = redact(json_bytes(data).decode("utf-8"))
    # A live share changes every second: never let a cache serve a stale copy.
    return web.Response(text=text, content_type="application/json", headers={"Cache-Control": "no-store"})


async def get_share_metadata(request: web.Request) -> web.Response:
    metadata = await request.app[SERVICE].metadata(request.match_info["id"], request_read_token(request))
    return json_response(metadata, headers={"Cache-Control": "no-store"})


def require_admin(request: web.Request) -> None:
    """``x-opencode-share-key`` must equal SESSIONS_RPC_SHARED_KEY (constant time)."""
    key = request.app[SETTINGS].rpc_shared_key
    given = request.headers.get("x-opencode-share-key")
    if key is None or not key.get_secret_value() or given is None or not secrets_equal(given, key.get_secret_value()):
        raise Unauthorized()


async def list_sessions(request: web.Request) -> web.Response:
    require_admin(request)
    sessions = await request.app[SERVICE].list_index()
    return json_response({"sessions": sessions, "count": len(sessions)})


async def api_not_found(request: web.Request) -> web.Response:
    return json_response({"error": "Not Found"}, status=404)


async def api_options(request: web.Request) -> web.Response:
    """CORS preflight (hono ``cors()`` defaults)."""
    headers = {"Access-Control-Allow-Methods": "GET,HEAD,PUT,POST,DELETE,PATCH"}
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested:
        headers["Access-Control-Allow-Headers"] = requested
        headers["Vary"] = "Access-Control-Request-Headers"
    return web.Response(status=204, headers=headers)
