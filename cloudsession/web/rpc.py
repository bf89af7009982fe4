"""The ``/rpc/share`` door: the reference's ``ShareRpc`` contract over Cap'n Web.

``createShare``, ``syncShare`` and ``deleteShare`` call the same ``ShareService`` as REST, with
the same validation, limits and error messages; a ``ShareError`` becomes the rejection
``["error", e.rpc_name, e.message]`` and anything unexpected a generic "Internal error". The
reference's diagnostic methods (``probeValue``, ``probeCallback``) are deliberately absent.
``appendOps``, ``redeemShare``, ``rotateSecret``, ``getReadToken``, ``setPrivate`` and
``setExpiry`` serve the durable sync protocol (``shares/ops.py`` and ``shares/owner.py``, ``docs/protocol.md``).

Auth runs before anything else: with ``SESSIONS_RPC_SHARED_KEY`` set, the header
``x-opencode-share-key`` must match it (constant time) or the answer is 401 JSON, before any
message is read. Without a key the endpoint is open, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cloudsession.errors import ShareError, Unauthorized, ValidationFailed
from cloudsession.rpc.codec import INVALID_DATE, UNDEFINED, BigInt, RpcError, RpcLimits, RpcTarget
from cloudsession.rpc.transport import serve_rpc
from cloudsession.shares import lifecycle, owner
from cloudsession.shares import ops as share_ops
from cloudsession.shares.inputs import MAX_OPS_PER_REQUEST, ExpiryBody, parse_body
from cloudsession.shares.items import parse_sync_items
from cloudsession.shares.lifecycle import CreateContext
from cloudsession.shares.service import ShareService
from cloudsession.web.auth import rpc_allowed
from cloudsession.web.http import create_context, json_response, public_origin
from cloudsession.web.keys import SERVICE, SETTINGS
from cloudsession.web.ratelimit import rpc_limiter


class ShareRpc(RpcTarget):
    """The main object of one RPC session. Method names are the wire contract (camelCase)."""

    def __init__(
        self,
        service: ShareService,
        *,
        origin: str,
        max_items: int,
        labels: dict[str, str] | None = None,
        context: CreateContext = CreateContext(),
        limit: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._service = service
        self._origin = origin
        self._max_items = max_items
        # What the HTTP request's headers add to a create (labels, TTL, User-Agent).
        self._labels = labels or {}
        self._context = context
        # Counts a call against the caller's rate limit ("create", "sync"); see web/ratelimit.py.
        self._limit = limit

    async def _count(self, name: str) -> None:
        if self._limit is not None:
            await self._limit(name)

    async def createShare(self, sessionID: Any, initialData: Any = UNDEFINED, options: Any = UNDEFINED) -> dict[str, Any]:
        """Create (or return, idempotently) the share of ``sessionID``; ``initialData`` is one sync;
        ``options`` ``{private?, ttl?, expiresAt?, labels?}`` apply to a new share (shares/owner.py)."""
        with _rejections():
            await self._count("create")
            items = None
            if initialData is not UNDEFINED and initialData is not None:
                items = self._items(initialData, "initialData")
            chosen = owner.CreateOptions.parse(_options(options, "options"), extra_labels=self._labels, context=self._context)
            return await owner.create(self._service, sessionID, origin=self._origin, options=chosen, initial_items=items)

    async def syncShare(self, id: Any, secret: Any, data: Any) -> dict[str, Any]:
        with _rejections():
            await self._count("sync")
            share_id, secret = _text(id, "id"), _text(secret, "secret")
            items = self._items(data, "data")
            sync_count = await self._service.sync(share_id, secret, items)
            return {"success": True, "syncCount": sync_count}

    async def deleteShare(self, id: Any, secret: Any) -> dict[str, bool]:
        with _rejections():
            await self._service.delete(_text(id, "id"), _text(secret, "secret"))
            return {"success": True}

    # -- the durable sync protocol (docs/protocol.md) --------------------------------

    async def appendOps(self, shareID: Any, secret: Any, epoch: Any, ops: Any) -> dict[str, Any]:
        with _rejections():
            await self._count("sync")
            raw = {"secret": secret, "epoch": None if epoch is UNDEFINED else epoch, "ops": json_data(ops, "ops")}
            limit = min(MAX_OPS_PER_REQUEST, self._max_items)
            secret, epoch, parsed = share_ops.parse_ops_request(raw, max_items=limit)
            return await share_ops.append_ops(self._service, _text(shareID, "shareID"), secret, epoch, parsed)

    async def redeemShare(self, shareID: Any, secret: Any) -> dict[str, Any]:
        with _rejections():
            return await owner.redeem(self._service, _text(shareID, "shareID"), _text(secret, "secret"), self._origin)

    async def rotateSecret(self, shareID: Any, secret: Any) -> dict[str, Any]:
        with _rejections():
            return await owner.rotate_secret(self._service, _text(shareID, "shareID"), _text(secret, "secret"), self._origin)

    async def getReadToken(self, shareID: Any, secret: Any) -> dict[str, Any]:
        with _rejections():
            return await owner.read_token(self._service, _text(shareID, "shareID"), _text(secret, "secret"))

    async def setPrivate(self, shareID: Any, secret: Any, private: Any) -> dict[str, Any]:
        with _rejections():
            if not isinstance(private, bool):
                raise ValidationFailed("private must be a boolean", [{"path": ["private"], "message": "must be a boolean"}])
            return await owner.set_private(self._service, _text(shareID, "shareID"), _text(secret, "secret"), private)

    async def setExpiry(self, shareID: Any, secret: Any, expiry: Any = UNDEFINED) -> dict[str, Any]:
        """``expiry`` is ``{ttl}`` or ``{expiresAt}``; null or nothing: never expire."""
        with _rejections():
            body = parse_body(ExpiryBody, {**_options(expiry, "expiry"), "secret": _text(secret, "secret")})
            return await owner.set_expiry(self._service, _text(shareID, "shareID"), body.secret, body.ttl, body.expiresAt)

    async def finalizeShare(self, shareID: Any, secret: Any) -> dict[str, Any]:
        with _rejections():
            return await lifecycle.set_final(self._service, _text(shareID, "shareID"), _text(secret, "secret"), True)

    async def unfinalizeShare(self, shareID: Any, secret: Any) -> dict[str, Any]:
        with _rejections():
            return await lifecycle.set_final(self._service, _text(shareID, "shareID"), _text(secret, "secret"), False)

    def _items(self, raw: Any, name: str) -> list[dict[str, Any]]:
        return parse_sync_items(json_data(raw, name), max_items=self._max_items, path=(name,))


async def handle(request: web.Request) -> web.StreamResponse:
    """``/rpc/share``, every method: auth, then batch (POST), WebSocket (GET upgrade) or 400."""
    settings = request.app[SETTINGS]
    if not await rpc_allowed(request):
        return json_response(Unauthorized().body(), status=401)
    # One sync may be as large over RPC as over REST; the other limits keep their defaults.
    size = settings.limits.max_body_bytes
    limits = RpcLimits(
        max_message_bytes=size,
        max_batch_bytes=size,
        max_batch_seconds=settings.body_timeout_seconds,
        min_batch_bytes_per_second=settings.body_min_bytes_per_second,
    )
    service = request.app[SERVICE]
    origin = public_origin(request)
    labels, context = create_context(request)
    return await serve_rpc(
        request,
        lambda: ShareRpc(
            service, origin=origin, max_items=settings.limits.max_items_per_sync, labels=labels, context=context, limit=rpc_limiter(request)
        ),
        limits,
    )


@contextmanager
def _rejections() -> Iterator[None]:
    """Domain errors cross the wire with their own name and message (no status, no detail)."""
    try:
        yield
    except ShareError as error:
        raise RpcError(error.rpc_name, error.rpc_message) from None


def _options(value: Any, name: str) -> dict[str, Any]:
    """An optional options object: absent and null mean none."""
    if value is UNDEFINED or value is None:
        return {}
    data = json_data(value, name)
    if not isinstance(data, dict):
        raise ValidationFailed(f"{name} must be an object", [{"path": [name], "message": "must be an object"}])
    return data


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be a string", [{"path": [name], "message": "must be a string"}])
    return value


def json_data(value: Any, name: str) -> Any:
    """What JSON.stringify would store for a decoded RPC value (the reference stores that).

    ``undefined`` members are dropped (``null`` inside arrays), dates become ISO strings and
    non-finite numbers ``null``. Values JSON cannot carry (bytes, bigints, errors, stubs) and
    strings with lone surrogates are a validation error instead of a later storage failure.
    """
    return _json_data(value, [name])


def _json_data(value: Any, path: list[Any]) -> Any:
    if isinstance(value, dict):
        return {k: _json_data(v, [*path, k]) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, list):
        return [None if v is UNDEFINED else _json_data(v, [*path, i]) for i, v in enumerate(value)]
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _not_json(path, "a string with a lone surrogate") from None
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        # Date.prototype.toJSON: "1970-01-01T00:00:00.000Z".
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if value is INVALID_DATE or value is None or value is UNDEFINED:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and not isinstance(value, BigInt)):
        return value
    raise _not_json(path, f"a value of type {type(value).__name__}")


def _not_json(path: list[Any], what: str) -> ValidationFailed:
    where = ".".join(str(p) for p in path)
    return ValidationFailed(f"{where} holds {what}, which JSON data cannot contain", [{"path": path, "message": what}])
