"""What a share's owner does with its secret: create with options (private, expiring), redeem
(where the server is), rotate the secret, read tokens, privacy and expiry.

Every function raises the domain errors of ``errors.py``: 403 for a secret that is not the
share's current capability, 404 for an unknown share, 410 for an expired one. Wire format in
``docs/protocol.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from cloudsession import credentials
from cloudsession.config import RetentionSettings
from cloudsession.errors import (
    InvalidSecret,
    SessionNotFound,
    ShareGone,
    ShareNotFound,
    ValidationFailed,
)
from cloudsession.shares import audit
from cloudsession.shares.inputs import ShareOptionsBody, parse_body
from cloudsession.shares.lifecycle import MAX_TTL_SECONDS, CreateContext, cap_expiry, parse_labels, retention_ttl
from cloudsession.shares.service import ShareCredentials, ShareService, is_expired, now_ms
from cloudsession.shares.state import ShareMeta, ShareState

log = logging.getLogger(__name__)


# -- redeem, rotation, read tokens, privacy, expiry ------------------------------------------------


async def load_owned(service: ShareService, share_id: str, secret: str) -> ShareState:
    state = await service.load(share_id, missing=ShareNotFound)
    service.check_secret(state, secret)
    service.ensure_live(state)
    return state


async def redeem(service: ShareService, share_id: str, secret: str, origin: str) -> dict[str, Any]:
    """Where the server is: the ack cursor, the capability epoch and the share's metadata."""
    state = await load_owned(service, share_id, secret)
    return {
        "id": state.share_id,
        "url": service.share_url(origin, state.share_id),
        "cursor": state.meta.cursor,
        "capabilityEpoch": state.meta.epoch,
        "private": bool(state.meta.extra.get("private")),
        "expiresAt": state.meta.extra.get("expiresAt"),
        "metadata": service.public_index(state.index_doc()),
    }


async def _change(
    service: ShareService, share_id: str, secret: str, action: str, content: Any, *, allow_final: bool = False, **detail: Any
) -> ShareMeta:
    """Commit a metadata change by the share's owner, with its audit record in the same entry;
    returns the metadata it was built on (a copy: the cached state moves on with the commit)."""
    seen: list[ShareMeta] = []
    note = audit.record(action, **detail)

    def build(state: ShareState) -> dict[str, Any]:
        service.check_secret(state, secret)
        seen[:] = [replace(state.meta, extra=dict(state.meta.extra))]  # extra is mutated in place by the fold
        entry: dict[str, Any] = content(state)
        return {**entry, "audit": [note]}

    try:
        await service.commit(share_id, build, allow_final=allow_final)
    except InvalidSecret:
        audit.log_event(share_id, action, "denied")
        raise
    return seen[0]


async def rotate_secret(service: ShareService, share_id: str, secret: str, origin: str) -> dict[str, Any]:
    """Bump the capability epoch: the old secret and read token stop working everywhere."""
    # Rotating is no change to a share's content: a final share's owner may still revoke a leak.
    before = await _change(service, share_id, secret, "rotate", lambda s: {"meta": {"epoch": s.meta.epoch + 1}}, allow_final=True)
    epoch = before.epoch + 1
    await service.notify_access_changed(share_id)  # viewers holding the old read token
    service.emit("share.rotated", share_id)
    return {
        "id": share_id,
        "secret": service.secret_for(before.session_id, epoch),
        "url": service.share_url(origin, share_id),
        "capabilityEpoch": epoch,
        "readToken": credentials.derive_read_token(service.namespace, before.session_id, epoch),
    }


async def read_token(service: ShareService, share_id: str, secret: str) -> dict[str, Any]:
    state = await load_owned(service, share_id, secret)
    return {"readToken": service.read_token_for(state), "capabilityEpoch": state.meta.epoch}


async def set_private(service: ShareService, share_id: str, secret: str, private: bool) -> dict[str, Any]:
    meta = await _change(service, share_id, secret, "privacy", lambda s: {"meta": {"extra": {"private": True if private else None}}}, private=private)
    if private:
        await service.notify_access_changed(share_id)  # viewers without a read token
    if bool(meta.extra.get("private")) != private:
        service.emit("share.privacy_changed", share_id)
    token = credentials.derive_read_token(service.namespace, meta.session_id, meta.epoch)
    return {"private": private, "readToken": token, "capabilityEpoch": meta.epoch}


def resolve_expiry(ttl: int | None, expires_at: int | None, now: int) -> int | None:
    """``ttl`` seconds or ``expiresAt`` epoch ms -> epoch ms (None: never expires)."""
    if ttl is not None and expires_at is not None:
        raise ValidationFailed("Give either ttl or expiresAt, not both")
    if ttl is not None:
        if not 1 <= ttl <= MAX_TTL_SECONDS:
            raise ValidationFailed(f"ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
        return now + ttl * 1000
    if expires_at is not None and not now < expires_at <= now + MAX_TTL_SECONDS * 1000:
        raise ValidationFailed("expiresAt must be in the future (epoch milliseconds) and at most 10 years ahead")
    return expires_at


async def set_expiry(service: ShareService, share_id: str, secret: str, ttl: int | None, expires_at: int | None) -> dict[str, Any]:
    now = now_ms()
    when = cap_expiry(service.settings.retention, resolve_expiry(ttl, expires_at, now), now)
    await _change(service, share_id, secret, "expiry", lambda s: {"meta": {"extra": {"expiresAt": when}}}, expiresAt=when)
    return {"expiresAt": when}


# -- create -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateOptions:
    private: bool = False
    ttl: int | None = None
    expires_at: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    context: CreateContext = CreateContext()

    @classmethod
    def parse(cls, raw: Any, *, extra_labels: dict[str, str] | None = None, context: CreateContext = CreateContext()) -> CreateOptions:
        """From ``{private?, ttl?, expiresAt?, labels?}`` (a create body or the RPC options
        argument), plus labels and context the request carried in its headers."""
        body: ShareOptionsBody = parse_body(ShareOptionsBody, raw)
        labels = parse_labels({**(extra_labels or {}), **parse_labels(body.labels)})
        return cls(body.private, body.ttl, body.expiresAt, labels, context)

    def expiry(self, policy: RetentionSettings, now: int) -> int | None:
        """Epoch ms: the share's own ttl/expiresAt, else what retention chooses; capped."""
        explicit = resolve_expiry(self.ttl, self.expires_at, now)
        if explicit is None and self.ttl is None and self.expires_at is None:
            chosen = retention_ttl(policy, self.labels, self.context)
            explicit = None if chosen is None else now + chosen * 1000
        return cap_expiry(policy, explicit, now)


async def create(
    service: ShareService,
    session_id: Any,
    *,
    origin: str,
    options: CreateOptions = CreateOptions(),
    initial_items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Create (idempotently) with options applied to a new share; the create answer, plus
    ``readToken`` and ``expiresAt`` when the share is private or expiring.

    A share whose expiry has passed is deleted here rather than answering 410, so that a
    script re-creating its share starts afresh without waiting for the sweep."""
    expires_at = options.expiry(service.settings.retention, now_ms())

    def on_create(state: ShareState) -> None:
        if options.private:
            state.meta.extra["private"] = True
        if expires_at is not None:
            state.meta.extra["expiresAt"] = expires_at
        if options.labels:
            state.meta.extra["labels"] = dict(options.labels)
        state.meta.record_audit([audit.record("create", private=options.private, expiresAt=expires_at)])

    try:
        creds = await service.create(session_id, origin=origin, initial_items=initial_items, on_create=on_create)
    except ShareGone:
        await _delete_expired_share_of(service, session_id)
        creds = await service.create(session_id, origin=origin, initial_items=initial_items, on_create=on_create)
    return await _create_answer(service, creds)


async def _create_answer(service: ShareService, creds: ShareCredentials) -> dict[str, Any]:
    answer: dict[str, Any] = creds.as_json()
    state = await service.load(creds.id)
    if state.meta.extra.get("private"):
        answer["readToken"] = service.read_token_for(state)
    if state.meta.extra.get("expiresAt") is not None:
        answer["expiresAt"] = state.meta.extra["expiresAt"]
    if state.meta.extra.get("labels"):
        answer["labels"] = state.meta.extra["labels"]
    return answer


async def _delete_expired_share_of(service: ShareService, session_id: str) -> None:
    for share_id in credentials.share_id_candidates(service.namespace, session_id):
        try:
            state = await service.load(share_id)
        except SessionNotFound:
            continue
        if credentials.secrets_equal(state.meta.session_id, session_id) and is_expired(state, now_ms()):
            await service.delete(share_id, None, admin=True, reason="share.expired")


async def audit_trail(service: ShareService, share_id: str, secret: str | None, *, admin: bool = False) -> dict[str, Any]:
    """The share's audit records, oldest first: for its owner (the secret) or the admin."""
    state = await service.load(share_id, missing=ShareNotFound)
    if not admin:
        service.check_secret(state, secret)
    return {"id": share_id, "events": list(state.meta.audit)}
