"""The REST share API under ``/api/``: parse the request, call the share domain, shape the answer.

Two families, one module:

- **reference routes** (the Worker's contract, compat-contract.md §3): create, sync, read
  (``/data``, the object, ``/metadata``), delete and the admin list. Create, sync and delete
  also honour an ``Idempotency-Key`` header and the create options of the durable protocol.
- **durable routes** (``docs/protocol.md``): ``ops``, ``redeem``, ``rotate``, ``read-token``,
  ``privacy`` and ``expiry`` under ``/api/share/<id>/``, all POST with the secret in the JSON
  body (never in a URL, where logs and referrers would keep it).

Status codes and error strings follow the reference except where it was unsafe: reads never
contain the secret or the real session ID, create is idempotent, and bad input gets a 400 before
anything is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from cloudsession.errors import ValidationFailed
from cloudsession.protocol import IDEMPOTENCY_HEADER
from cloudsession.shares import idempotency, lifecycle, ops, owner
from cloudsession.shares.inputs import (
    MAX_OPS_PER_REQUEST,
    CreateShareBody,
    ExpiryBody,
    PrivacyBody,
    SecretBody,
    SyncBody,
    parse_body,
)
from cloudsession.shares.items import parse_sync_items
from cloudsession.shares.listing import Filters
from cloudsession.shares.public import PublicShare
from cloudsession.web.auth import checked_admin_header, require_admin
from cloudsession.web.http import (
    PRIVATE_PAGE_CACHE,
    VARY_ENCODING,
    create_context,
    json_response,
    not_modified,
    public_origin,
    read_json,
    read_json_sized,
    request_read_token,
)
from cloudsession.web.keys import SERVICE, SETTINGS

# The admin list's largest page (and its default: the reference answered one listing page).
MAX_SESSIONS_PER_PAGE = 1000
MAX_QUERY_CHARS = 200

# -- reference routes ---------------------------------------------------------------------------


def _idempotency_key(request: web.Request) -> str | None:
    return idempotency.idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))


def create_options(request: web.Request, raw: Any) -> owner.CreateOptions:
    """The create options of a body plus what the request's headers add: labels
    (``X-Cloudsession-Labels``), a TTL (``X-Cloudsession-TTL``) and the User-Agent for retention."""
    labels, context = create_context(request)
    return owner.CreateOptions.parse(raw, extra_labels=labels, context=context)


async def create_share(request: web.Request) -> web.Response:
    raw = await read_json(request)
    body = parse_body(CreateShareBody, raw)
    options = create_options(request, raw)
    service, origin, key = request.app[SERVICE], public_origin(request), _idempotency_key(request)
    if key is None:
        answer = await owner.create(service, body.sessionID, origin=origin, options=options)
    else:
        answer = await idempotency.create_once(service, body.sessionID, key, origin=origin, options=options)
    return json_response(answer)


async def sync_share(request: web.Request) -> web.Response:
    key = _idempotency_key(request)
    raw, size = await read_json_sized(request)
    if isinstance(raw, dict) and type(secret := raw.get("secret")) is str and type(data := raw.get("data")) is list:
        pass  # what SyncBody accepts, checked without building the model (the hot path)
    else:
        body = parse_body(SyncBody, raw)  # anything else: the model's verdict, and its 400
        secret, data = body.secret, body.data
    items = parse_sync_items(data, max_items=request.app[SETTINGS].limits.max_items_per_sync)
    service, share_id = request.app[SERVICE], request.match_info["id"]
    if key is not None:
        return json_response(await idempotency.sync_once(service, share_id, secret, items, key))
    sync_count = await service.sync(share_id, secret, items, size=size)
    return json_response({"success": True, "syncCount": sync_count})


async def delete_share(request: web.Request) -> web.Response:
    key = _idempotency_key(request)
    body = parse_body(SecretBody, await read_json(request))
    service, share_id = request.app[SERVICE], request.match_info["id"]
    if key is not None:
        return json_response(await idempotency.delete_once(service, share_id, body.secret, key))
    await service.delete(share_id, body.secret)
    return json_response({"success": True})


async def get_share(request: web.Request) -> web.Response:
    view = await request.app[SERVICE].public_share(request.match_info["id"], request_read_token(request))
    return _public_json(request, view, view.object_etag, view.object_json)


async def get_share_data(request: web.Request) -> web.Response:
    view = await request.app[SERVICE].public_share(request.match_info["id"], request_read_token(request))
    return _public_json(request, view, view.data_etag, view.data_json)


def _public_json(request: web.Request, view: PublicShare, etag: str | None, body: Callable[[], bytes]) -> web.Response:
    """A public read: revalidated by its version's ETag (a 304 without a body when the client
    has it), assembled from the view's serialised pieces otherwise. Public shares may be kept
    by caches but must be revalidated (a live share changes every second); private ones are
    never stored, and a reader without the token never gets this far (404, no ETag)."""
    cache = PRIVATE_PAGE_CACHE if view.private else "no-cache"
    headers = {"Cache-Control": cache}
    if etag is not None:
        headers["ETag"] = etag
        if not_modified(request, etag):
            return web.Response(status=304, headers={**headers, **VARY_ENCODING})
    # The redaction middleware passes the body through the request's redactor (this share's
    # owners) on its way out, as every response.
    return web.Response(body=body(), content_type="application/json", charset="utf-8", headers=headers)


async def get_share_metadata(request: web.Request) -> web.Response:
    metadata = await request.app[SERVICE].metadata(request.match_info["id"], request_read_token(request))
    return json_response(metadata, headers={"Cache-Control": "no-store"})


async def list_sessions(request: web.Request) -> web.Response:
    """The admin list, newest first, a page at a time: ``?limit=`` (1-1000, default 1000, the
    reference's one page), ``?cursor=`` (the previous answer's ``next``), ``?q=`` (search in
    titles, directories, ids and labels) and ``?label=k=v`` (repeatable: shares carrying every
    such label). Answers ``{sessions, count, next?, skipped?}``; ``next`` is absent at the end."""
    await require_admin(request)
    service = request.app[SERVICE]
    query = request.query
    filters = Filters(
        query=query.get("q", "").strip()[:MAX_QUERY_CHARS],
        labels=[lifecycle.parse_label_filter(text) for text in query.getall("label", [])[: lifecycle.MAX_LABEL_FILTERS]],
    )
    page = await service.list_page(_cursor(request), _limit(request), filters)
    sessions = [entry.doc() for entry in page.entries]
    body: dict[str, Any] = {"sessions": sessions, "count": len(sessions)}
    if page.cursor is not None:
        body["next"] = page.cursor
    if page.skipped:
        body["skipped"] = page.skipped  # unreadable index entries (logged; see fsck)
    if page.building:
        body["building"] = True  # a store from before the listing keys: the list is being built
    return json_response(body)


def _cursor(request: web.Request) -> str | None:
    values = request.query.getall("cursor", [])
    if len(values) > 1:
        raise ValidationFailed("cursor given more than once", [{"path": ["cursor"], "message": "at most one"}])
    return values[0] if values else None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return MAX_SESSIONS_PER_PAGE
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= MAX_SESSIONS_PER_PAGE):
        raise ValidationFailed(f"limit must be a whole number from 1 to {MAX_SESSIONS_PER_PAGE}", [{"path": ["limit"], "message": "out of range"}])
    return int(raw)


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


# -- durable routes (docs/protocol.md) ------------------------------------------------------------


async def append_ops(request: web.Request) -> web.Response:
    limit = min(MAX_OPS_PER_REQUEST, request.app[SETTINGS].limits.max_items_per_sync)
    secret, epoch, parsed = ops.parse_ops_request(await read_json(request), max_items=limit)
    return json_response(await ops.append_ops(request.app[SERVICE], request.match_info["id"], secret, epoch, parsed))


async def _secret(request: web.Request) -> str:
    body: SecretBody = parse_body(SecretBody, await read_json(request))
    return body.secret


async def redeem(request: web.Request) -> web.Response:
    secret = await _secret(request)
    return json_response(await owner.redeem(request.app[SERVICE], request.match_info["id"], secret, public_origin(request)))


async def rotate(request: web.Request) -> web.Response:
    secret = await _secret(request)
    answer = await owner.rotate_secret(request.app[SERVICE], request.match_info["id"], secret, public_origin(request))
    return json_response(answer)


async def read_token(request: web.Request) -> web.Response:
    secret = await _secret(request)
    return json_response(await owner.read_token(request.app[SERVICE], request.match_info["id"], secret))


async def privacy(request: web.Request) -> web.Response:
    body = parse_body(PrivacyBody, await read_json(request))
    return json_response(await owner.set_private(request.app[SERVICE], request.match_info["id"], body.secret, body.private))


async def finalize(request: web.Request) -> web.Response:
    """Freeze the share (its owner's secret); later writes answer 409."""
    secret = await _secret(request)
    return json_response(await lifecycle.set_final(request.app[SERVICE], request.match_info["id"], secret, True))


async def unfinalize(request: web.Request) -> web.Response:
    """Unfreeze the share: its owner's secret in the body, or the admin key in the header."""
    admin = await checked_admin_header(request)  # throttled like every admin-key check
    secret = None if admin else await _secret(request)
    return json_response(await lifecycle.set_final(request.app[SERVICE], request.match_info["id"], secret, False, admin=admin))


async def audit_trail(request: web.Request) -> web.Response:
    """The share's audit trail: ``POST`` with its owner's secret, or ``GET`` with the admin key."""
    if request.method == "GET":
        await require_admin(request)
        answer = await owner.audit_trail(request.app[SERVICE], request.match_info["id"], None, admin=True)
    else:
        answer = await owner.audit_trail(request.app[SERVICE], request.match_info["id"], await _secret(request))
    return json_response(answer, headers={"Cache-Control": "no-store"})


async def expiry(request: web.Request) -> web.Response:
    body = parse_body(ExpiryBody, await read_json(request))
    answer = await owner.set_expiry(request.app[SERVICE], request.match_info["id"], body.secret, body.ttl, body.expiresAt)
    return json_response(answer)
