"""``Idempotency-Key`` on create, sync and delete: a retried request gets the first answer and is
not applied twice.

Create and sync record the key's digest in the share's own bounded ledger (``state.ShareMeta``),
inside the commit that applies them, so the decision holds across replicas. A delete removes
that ledger, so its record is kept beside the share (``storage.delete_record_key``) for a day.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from typing import Any

import orjson

from cloudsession import credentials
from cloudsession.errors import (
    ShareConflict,
    ShareNotFound,
    ValidationFailed,
)
from cloudsession.jsonio import json_bytes
from cloudsession.protocol import IDEMPOTENCY_HEADER
from cloudsession.shares.owner import CreateOptions, create
from cloudsession.shares.service import ShareService, now_ms
from cloudsession.shares.state import ShareState
from cloudsession.shares.storage import delete_record_key
from cloudsession.store.base import PreconditionFailed

log = logging.getLogger(__name__)

# Idempotency records of deleted shares (the share's own ledger went with it) are kept this long.
DELETE_RECORD_TTL_MS = 24 * 3600 * 1000
_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")

# -- Idempotency-Key on the legacy routes -------------------------------------------------------


def idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY_RE.match(raw):
        raise ValidationFailed(f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters without spaces")
    return raw


def _digest(service: ShareService, purpose: str, *parts: Any) -> str:
    # Keyed, so stored digests say nothing about the keys or requests they came from.
    message = json_bytes([purpose, *parts])
    return hmac.new(service.namespace.bytes, message, hashlib.sha256).hexdigest()[:32]


def _replay(record: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    if not hmac.compare_digest(str(record.get("fp", "")), fingerprint):
        raise ShareConflict(f"This {IDEMPOTENCY_HEADER} was already used for a different request")
    return dict(record["body"])


async def sync_once(service: ShareService, share_id: str, secret: str, items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """A legacy sync under an Idempotency-Key: applied once; a retry gets the first answer."""
    digest, fingerprint = _digest(service, "key", share_id, key), _digest(service, "sync", share_id, items)
    outcome: list[tuple[bool, dict[str, Any]]] = []

    def build(state: ShareState) -> dict[str, Any] | None:
        service.check_secret(state, secret)
        record = state.meta.idempotency.get(digest)
        if record is not None:
            outcome[:] = [(False, _replay(record, fingerprint))]
            return None
        body = {"success": True, "syncCount": state.meta.sync_count + 1}
        outcome[:] = [(True, body)]
        return {"items": items, "syncs": 1, "idem": {digest: {"fp": fingerprint, "body": body}}}

    result = await service.commit(share_id, build)
    applied, body = outcome[0]
    if applied:
        await service.notify_sync(result.state, items, result.sync_count)
    return body


async def create_once(service: ShareService, session_id: Any, key: str, *, origin: str, options: CreateOptions) -> dict[str, Any]:
    """Create under an Idempotency-Key: a retry gets the first answer (the secret of the epoch
    it was given at, even after a rotation: the key replays the answer, not the state)."""
    answer = await create(service, session_id, origin=origin, options=options)
    share_id = answer["id"]
    digest = _digest(service, "key", share_id, key)
    fingerprint = _digest(service, "create", session_id, options.private, options.ttl, options.expires_at, options.labels)
    first: list[dict[str, Any]] = []

    def build(state: ShareState) -> dict[str, Any] | None:
        record = state.meta.idempotency.get(digest)
        if record is not None:
            first[:] = [{**_replay(record, fingerprint), "epoch": record.get("epoch", 0)}]
            return None
        # The secret and the read token are derived again on replay, never stored.
        public = {k: v for k, v in answer.items() if k not in ("secret", "readToken")}
        first[:] = [{**public, "epoch": state.meta.epoch}]
        return {"idem": {digest: {"fp": fingerprint, "body": public, "epoch": state.meta.epoch}}}

    # Recording a create's key is no change to the share: allowed on a final one too.
    result = await service.commit(share_id, build, allow_final=True)
    body = first[0]
    epoch = body.pop("epoch")
    session = result.state.meta.session_id
    out = {"id": body.pop("id"), "secret": service.secret_for(session, epoch), **body}
    if "readToken" in answer:
        out["readToken"] = credentials.derive_read_token(service.namespace, session, epoch)
    return out


def _delete_record_key(share_id: str, digest: str) -> str:
    # Read before the share is loaded (which checks the id): a malformed id from the URL is an
    # unknown share, not a key the store refuses (a 503).
    if not credentials.SHARE_ID_RE.match(share_id):
        raise ShareNotFound()
    return delete_record_key(share_id, digest)


async def delete_once(service: ShareService, share_id: str, secret: str, key: str) -> dict[str, Any]:
    """DELETE under an Idempotency-Key. The share's own ledger goes with the share, so the key
    is recorded beside it (``idem/<id>/<digest>``, swept after a day) before the delete: a
    retry then answers as the first request did, and completes a delete that was cut short."""
    digest = _digest(service, "key", share_id, key)
    fingerprint = _digest(service, "delete", share_id, secret)
    record_key = _delete_record_key(share_id, digest)
    body = {"success": True}
    for _ in range(4):
        stored = await service.store_call(service.store.get(record_key))
        if stored is not None:
            record = orjson.loads(stored.body)
            answer = _replay(record, fingerprint)
            try:
                state = await service.load(share_id, missing=ShareNotFound)
            except ShareNotFound:
                return answer
            if state.meta.incarnation == record.get("incarnation"):
                await service.delete(share_id, secret)  # the first attempt did not finish
            return answer
        state = await service.load(share_id, missing=ShareNotFound)
        service.check_secret(state, secret)
        record = {"fp": fingerprint, "body": body, "incarnation": state.meta.incarnation, "at": now_ms()}
        try:
            await service.store_call(service.store.put_if_absent(record_key, json_bytes(record)))
        except PreconditionFailed:
            continue  # the same key raced us: answer from its record
        await service.delete(share_id, secret)
        return body
    raise ShareConflict(f"Concurrent requests with the same {IDEMPOTENCY_HEADER}; retry")
