"""REST door of the durable sync protocol (``durable.py``; wire format in ``docs/protocol.md``).

New routes under ``/api/share/<id>/``: ``ops`` (appendOps), ``redeem``, ``rotate``,
``read-token``, ``privacy`` and ``expiry``, all POST with the secret in the JSON body (never in
a URL, where logs and referrers would keep it). The legacy create, sync and delete routes are
served here too so that they honour an ``Idempotency-Key`` header and the create options;
without them they behave exactly as ``api.py``'s handlers, which they call.
"""

from __future__ import annotations

from aiohttp import web

from cloudsession import api, durable
from cloudsession.app_keys import SERVICE, SETTINGS
from cloudsession.models import CreateShareBody, SecretBody, SyncBody, parse_body, parse_sync_items


def _key(request: web.Request) -> str | None:
    return durable.idempotency_key(request.headers.get(durable.IDEMPOTENCY_HEADER))


async def create_share(request: web.Request) -> web.Response:
    body = parse_body(CreateShareBody, await api.read_json(request))
    options = durable.CreateOptions(body.private, body.ttl, body.expiresAt)
    service, origin, key = request.app[SERVICE], api.public_origin(request), _key(request)
    if key is None:
        answer = await durable.create(service, body.sessionID, origin=origin, options=options)
    else:
        answer = await durable.create_once(service, body.sessionID, key, origin=origin, options=options)
    return api.json_response(answer)


async def sync_share(request: web.Request) -> web.Response:
    key = _key(request)
    if key is None:
        return await api.sync_share(request)
    body = parse_body(SyncBody, await api.read_json(request))
    items = parse_sync_items(body.data, max_items=request.app[SETTINGS].limits.max_items_per_sync)
    return api.json_response(await durable.sync_once(request.app[SERVICE], request.match_info["id"], body.secret, items, key))


async def delete_share(request: web.Request) -> web.Response:
    key = _key(request)
    if key is None:
        return await api.delete_share(request)
    body = parse_body(SecretBody, await api.read_json(request))
    return api.json_response(await durable.delete_once(request.app[SERVICE], request.match_info["id"], body.secret, key))


async def append_ops(request: web.Request) -> web.Response:
    limit = min(durable.MAX_OPS_PER_REQUEST, request.app[SETTINGS].limits.max_items_per_sync)
    secret, epoch, ops = durable.parse_ops_request(await api.read_json(request), max_items=limit)
    return api.json_response(await durable.append_ops(request.app[SERVICE], request.match_info["id"], secret, epoch, ops))


async def _secret(request: web.Request) -> str:
    return parse_body(SecretBody, await api.read_json(request)).secret


async def redeem(request: web.Request) -> web.Response:
    secret = await _secret(request)
    return api.json_response(await durable.redeem(request.app[SERVICE], request.match_info["id"], secret, api.public_origin(request)))


async def rotate(request: web.Request) -> web.Response:
    secret = await _secret(request)
    answer = await durable.rotate_secret(request.app[SERVICE], request.match_info["id"], secret, api.public_origin(request))
    return api.json_response(answer)


async def read_token(request: web.Request) -> web.Response:
    secret = await _secret(request)
    return api.json_response(await durable.read_token(request.app[SERVICE], request.match_info["id"], secret))


async def privacy(request: web.Request) -> web.Response:
    body = parse_body(durable.PrivacyBody, await api.read_json(request))
    return api.json_response(await durable.set_private(request.app[SERVICE], request.match_info["id"], body.secret, body.private))


async def expiry(request: web.Request) -> web.Response:
    body = parse_body(durable.ExpiryBody, await api.read_json(request))
    answer = await durable.set_expiry(request.app[SERVICE], request.match_info["id"], body.secret, body.ttl, body.expiresAt)
    return api.json_response(answer)


def add_routes(router: web.UrlDispatcher, share: str) -> None:
    """The protocol's routes under ``share`` (the ``/api/share/{id}`` pattern of routes.py)."""
    router.add_post(share + "/ops", append_ops, name="durable.ops")
    router.add_post(share + "/redeem", redeem, name="durable.redeem")
    router.add_post(share + "/rotate", rotate, name="durable.rotate")
    router.add_post(share + "/read-token", read_token, name="durable.read_token")
    router.add_post(share + "/privacy", privacy, name="durable.privacy")
    router.add_post(share + "/expiry", expiry, name="durable.expiry")
