"""The durable sync protocol: operation envelopes applied at most once, the ack cursor, redeem,
revocable capabilities, private shares, expiring shares and the expiry sweep.

Persistence lives in the protocol and the store, not in the transport. A client persists each
change as an *operation* (an envelope around one sync item, with a client-chosen UUIDv7
``op_id``) before sending it, and re-sends until it sees an acknowledgement. The server applies
every op at most once: each decision is made inside ``ShareService.commit``'s ``build`` against
the folded share, and the journal entry that applies the ops also records their ids in the
share's bounded ledger (``journal.ShareMeta``), so the decision is linearizable across
processes and replicas and survives restarts. The ledger is compacted with the share.

Both doors (REST in ``durable_api.py``, Cap'n Web in ``rpc/share_rpc.py``) call the functions
here; the wire format is documented in ``docs/protocol.md``. Every function raises the domain
errors of ``errors.py``: 403 for a secret that is not the share's current capability, 404 for
an unknown share, 410 for an expired one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from cloudsession import credentials
from cloudsession.app_keys import SERVICE, SETTINGS
from cloudsession.errors import (
    InvalidSecret,
    SessionNotFound,
    ShareConflict,
    ShareError,
    ShareGone,
    ShareNotFound,
    ValidationFailed,
)
from cloudsession.journal import ShareMeta, ShareState, journal_key, snapshot_key, uuid7_ms
from cloudsession.models import SecretBody, ShareOptionsBody, json_bytes, parse_body, parse_sync_items
from cloudsession.service import ShareCredentials, ShareService, is_expired, now_ms
from cloudsession.store import open_store
from cloudsession.store.base import PreconditionFailed, iter_keys

log = logging.getLogger(__name__)

MAX_OPS_PER_REQUEST = 1000
MAX_DEPENDENCIES = 16
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
# Idempotency records of deleted shares (the share's own ledger went with it) are kept this long.
DELETE_RECORD_TTL_MS = 24 * 3600 * 1000
IDEMPOTENCY_HEADER = "Idempotency-Key"
_UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")

# Why an op was rejected (final for that op_id: a retry gets the same answer).
OUTSIDE_WINDOW = "outside_window"
EPOCH_MISMATCH = "epoch_mismatch"
UNKNOWN_DEPENDENCY = "unknown_dependency"
DEPENDENCY_REJECTED = "dependency_rejected"
CURSOR_MISMATCH = "cursor_mismatch"


# -- envelopes --------------------------------------------------------------------------------


class OpEnvelope(BaseModel):
    """One operation: a sync item plus what makes its delivery idempotent and ordered."""

    model_config = ConfigDict(extra="ignore")

    op_id: StrictStr
    batch_id: StrictStr
    seq: StrictInt = Field(ge=0)
    depends_on: list[StrictStr] | StrictStr | None = None
    expected_cursor: StrictInt | None = Field(None, ge=0)
    capability_epoch: StrictInt | None = Field(None, ge=0)
    item: Any

    @field_validator("op_id")
    @classmethod
    def _uuid7(cls, value: str) -> str:
        value = value.lower()
        if not _UUID7_RE.match(value):
            raise ValueError("must be a UUIDv7 in canonical form")
        return value

    @field_validator("batch_id")
    @classmethod
    def _batch(cls, value: str) -> str:
        if not _BATCH_ID_RE.match(value):
            raise ValueError("must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        return value

    @field_validator("depends_on")
    @classmethod
    def _deps(cls, value: list[str] | str | None) -> list[str] | str | None:
        deps = [value] if isinstance(value, str) else value or []
        if len(deps) > MAX_DEPENDENCIES:
            raise ValueError(f"at most {MAX_DEPENDENCIES} dependencies")
        if any(not _UUID7_RE.match(d.lower()) for d in deps):
            raise ValueError("dependencies must be op ids (UUIDv7)")
        return value

    def dependencies(self) -> list[str]:
        deps = [self.depends_on] if isinstance(self.depends_on, str) else self.depends_on or []
        return [d.lower() for d in deps]


class AppendOpsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    secret: StrictStr
    epoch: StrictInt | None = None
    ops: list[OpEnvelope] = Field(max_length=MAX_OPS_PER_REQUEST)


class PrivacyBody(SecretBody):
    private: bool = Field(strict=True)


class ExpiryBody(SecretBody):
    # Neither (or ``expiresAt: null``): the share no longer expires.
    ttl: StrictInt | None = None
    expiresAt: StrictInt | None = None


@dataclass(frozen=True, slots=True)
class Op:
    op_id: str
    depends_on: list[str]
    expected_cursor: int | None
    capability_epoch: int | None
    item: dict[str, Any]


def parse_ops_request(raw: Any, *, max_items: int) -> tuple[str, int | None, list[Op]]:
    """Validate an appendOps request (``{secret, epoch?, ops}``); ValidationFailed otherwise.
    Bad input is refused as a whole before anything is read or written."""
    body: AppendOpsBody = parse_body(AppendOpsBody, raw)
    if len(body.ops) > max_items:
        raise ValidationFailed(f"Too many ops in one request: {len(body.ops)} (limit {max_items})")
    last_seq: dict[str, int] = {}
    ops = []
    for index, envelope in enumerate(body.ops):
        # A batch is sent in sequence order; anything else is a client bug worth hearing about.
        if last_seq.get(envelope.batch_id, -1) >= envelope.seq:
            raise ValidationFailed(f"ops.{index}.seq: sequence numbers must increase within batch {envelope.batch_id!r}")
        last_seq[envelope.batch_id] = envelope.seq
        [item] = parse_sync_items([envelope.item], max_items=1, path=("ops", index, "item"))
        ops.append(Op(envelope.op_id, envelope.dependencies(), envelope.expected_cursor, envelope.capability_epoch, item))
    return body.secret, body.epoch, ops


# -- appendOps --------------------------------------------------------------------------------


@dataclass(slots=True)
class OpsPlan:
    """What appending a batch to a given state does: the answer and the entry to write."""

    cursor: int
    applied: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    records: list[list[Any]] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "applied": self.applied, "duplicates": self.duplicates, "rejected": self.rejected}

    def entry(self) -> dict[str, Any] | None:
        if not self.records:
            return None  # everything was a duplicate: nothing to write
        return {"items": self.items, "syncs": len(self.applied), "ops": self.records}


def plan_ops(state: ShareState, ops: list[Op]) -> OpsPlan:
    """Decide every op against the folded state, in order. Pure: ``commit`` may call it again."""
    meta = state.meta
    plan = OpsPlan(cursor=meta.cursor)
    seen: dict[str, int | str] = {}

    def outcome_of(op_id: str) -> int | str | None:
        return seen[op_id] if op_id in seen else meta.op_ledger.get(op_id)

    for op in ops:
        known = outcome_of(op.op_id)
        if isinstance(known, int):
            plan.duplicates.append({"op_id": op.op_id, "cursor": known})
            continue
        if isinstance(known, str):
            plan.rejected.append({"op_id": op.op_id, "reason": known})
            continue
        reason = _rejection(op, state, plan.cursor, outcome_of)
        if reason is None:
            plan.cursor += 1
            outcome: int | str = plan.cursor
            plan.applied.append({"op_id": op.op_id, "cursor": plan.cursor})
            plan.items.append(op.item)
        else:
            outcome = reason
            plan.rejected.append({"op_id": op.op_id, "reason": reason})
        seen[op.op_id] = outcome
        plan.records.append([op.op_id, outcome])
    return plan


def _rejection(op: Op, state: ShareState, cursor: int, outcome_of: Any) -> str | None:
    if uuid7_ms(op.op_id) <= state.meta.op_floor_ms:
        # The ledger has forgotten ops this old: it cannot tell a retry from a new op.
        return OUTSIDE_WINDOW
    if op.capability_epoch is not None and op.capability_epoch != state.meta.epoch:
        return EPOCH_MISMATCH
    for dependency in op.depends_on:
        known = outcome_of(dependency)
        if known is None:
            return UNKNOWN_DEPENDENCY
        if isinstance(known, str):
            return DEPENDENCY_REJECTED
    if op.expected_cursor is not None and op.expected_cursor != cursor:
        return CURSOR_MISMATCH
    return None


def check_epoch(state: ShareState, epoch: int | None) -> None:
    """A client that names the epoch of its capability must hold the current one."""
    if epoch is not None and epoch != state.meta.epoch:
        raise InvalidSecret()


async def append_ops(service: ShareService, share_id: str, secret: str, epoch: int | None, ops: list[Op]) -> dict[str, Any]:
    """Apply a batch of ops; the answer is ``{cursor, applied, duplicates, rejected}``."""
    decided: list[OpsPlan] = []

    def build(state: ShareState) -> dict[str, Any] | None:
        service.check_secret(state, secret)
        check_epoch(state, epoch)
        decided[:] = [plan_ops(state, ops)]
        return decided[0].entry()

    result = await service.commit(share_id, build)
    plan = decided[0]
    if plan.items:
        await service.notify_sync(result.state, plan.items, result.sync_count)
    return plan.answer()


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


async def _change(service: ShareService, share_id: str, secret: str, content: Any) -> ShareMeta:
    """Commit a metadata change by the share's owner; returns the metadata it was built on (a
    copy: the cached state itself moves on with the commit)."""
    seen: list[ShareMeta] = []

    def build(state: ShareState) -> dict[str, Any]:
        service.check_secret(state, secret)
        seen[:] = [replace(state.meta)]
        return content(state)

    await service.commit(share_id, build)
    return seen[0]


async def rotate_secret(service: ShareService, share_id: str, secret: str, origin: str) -> dict[str, Any]:
    """Bump the capability epoch: the old secret and read token stop working everywhere."""
    before = await _change(service, share_id, secret, lambda s: {"meta": {"epoch": s.meta.epoch + 1}})
    epoch = before.epoch + 1
    await service.notify_access_changed(share_id)  # viewers holding the old read token
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
    meta = await _change(service, share_id, secret, lambda s: {"meta": {"extra": {"private": True if private else None}}})
    if private:
        await service.notify_access_changed(share_id)  # viewers without a read token
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
    when = resolve_expiry(ttl, expires_at, now_ms())
    await _change(service, share_id, secret, lambda s: {"meta": {"extra": {"expiresAt": when}}})
    return {"expiresAt": when}


# -- create -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateOptions:
    private: bool = False
    ttl: int | None = None
    expires_at: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> "CreateOptions":
        """From ``{private?, ttl?, expiresAt?}`` (a create body or the RPC options argument)."""
        body: ShareOptionsBody = parse_body(ShareOptionsBody, raw)
        return cls(body.private, body.ttl, body.expiresAt)


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
    expires_at = resolve_expiry(options.ttl, options.expires_at, now_ms())

    def on_create(state: ShareState) -> None:
        if options.private:
            state.meta.extra["private"] = True
        if expires_at is not None:
            state.meta.extra["expiresAt"] = expires_at

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
    return answer


async def _delete_expired_share_of(service: ShareService, session_id: str) -> None:
    for share_id in credentials.share_id_candidates(service.namespace, session_id):
        try:
            state = await service.load(share_id)
        except SessionNotFound:
            continue
        if credentials.secrets_equal(state.meta.session_id, session_id) and is_expired(state, now_ms()):
            await service.delete(share_id, None, admin=True)


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
    fingerprint = _digest(service, "create", session_id, options.private, options.ttl, options.expires_at)
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

    result = await service.commit(share_id, build)
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
    return f"idem/{share_id}/{digest}"


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


# -- expiry sweep and journal pruning -----------------------------------------------------------


@dataclass(slots=True)
class SweepReport:
    expired: list[str] = field(default_factory=list)
    journal_entries_deleted: int = 0
    records_deleted: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"expired": self.expired, "journalEntriesDeleted": self.journal_entries_deleted, "recordsDeleted": self.records_deleted}


async def sweep(service: ShareService, *, now: int | None = None) -> SweepReport:
    """Delete expired shares, journal entries folded long ago or left by deleted shares, and old
    delete records. Safe to run on every replica at once: each deletion is conditional or
    idempotent."""
    now = now_ms() if now is None else now
    report = SweepReport()
    for entry in await service.list_index(include_expired=True, fresh=True):
        expires = entry.get("expiresAt")
        if isinstance(expires, int) and expires <= now:
            await _delete_if_expired(service, entry["id"], now, report)
    report.journal_entries_deleted = await _prune_journals(service, now)
    report.records_deleted = await _prune_delete_records(service, now)
    return report


async def _delete_if_expired(service: ShareService, share_id: str, now: int, report: SweepReport) -> None:
    try:
        state = await service.load(share_id)
    except SessionNotFound:
        await service.purge(share_id)  # an index entry left by an interrupted delete
        return
    if not is_expired(state, now):
        return  # the index lagged behind a new expiry
    try:
        await service.delete(share_id, None, admin=True)
    except ShareNotFound:
        return  # another replica's sweep got there first
    report.expired.append(share_id)


async def _prune_journals(service: ShareService, now: int) -> int:
    grace_ms = service.settings.journal_grace_seconds * 1000
    by_share: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    async for key in iter_keys(service.store, "journal/"):
        parts = key.split("/")
        if len(parts) == 4:
            by_share[parts[1]][parts[2]].append(key)
    deleted = 0
    # Listed before the snapshots are looked at: an entry written after the listing belongs to a
    # snapshot that exists now, and entries of a snapshot that is gone can never be read again.
    for share_id, incarnations in by_share.items():
        try:
            state = await service.load(share_id)
            current, folded_before = state.meta.incarnation, state.compacted_at
        except SessionNotFound:
            if await service.store_call(service.store.head(snapshot_key(share_id))) is not None:
                continue  # unreadable but present: leave it for an operator
            current, folded_before = None, None
        for incarnation, keys in incarnations.items():
            if incarnation != current:
                doomed = keys
            elif folded_before is not None and now - folded_before >= grace_ms:
                last = journal_key(share_id, incarnation, state.snapshot_seq)
                doomed = [k for k in keys if k <= last]
            else:
                doomed = []
            await service.delete_keys(doomed)
            deleted += len(doomed)
    return deleted


async def _prune_delete_records(service: ShareService, now: int) -> int:
    deleted = 0
    async for key in iter_keys(service.store, "idem/"):
        stored = await service.store_call(service.store.get(key))
        try:
            at = orjson.loads(stored.body).get("at", 0) if stored is not None else 0
        except orjson.JSONDecodeError:
            at = 0
        if stored is not None and now - at >= DELETE_RECORD_TTL_MS:
            await service.store_call(service.store.delete(key))
            deleted += 1
    return deleted


async def periodic_sweep(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sweep every ``sweep_interval_seconds`` while the server runs."""
    interval = app[SETTINGS].sweep_interval_seconds

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                report = await sweep(app[SERVICE])
                if report.expired or report.journal_entries_deleted:
                    log.info("sweep: %d expired shares deleted, %d journal entries pruned", len(report.expired), report.journal_entries_deleted)
            except ShareError as exc:
                log.warning("sweep failed: %s", exc.message)
            except Exception:
                log.exception("sweep failed")

    task = asyncio.get_running_loop().create_task(loop()) if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- `cloudsession gc` ----------------------------------------------------------------------------


def add_subcommands(sub: Any) -> None:
    gc = sub.add_parser("gc", help="delete expired shares and prune folded journal entries (what the server's periodic sweep does)")
    from cloudsession.cli import add_config_flags  # the CLI imports this module

    add_config_flags(gc)
    gc.set_defaults(func=cmd_gc)


def cmd_gc(args: Any) -> int:
    from cloudsession.cli import settings_from_args

    settings = settings_from_args(args)

    async def run() -> SweepReport:
        async with open_store(settings) as store:
            service = ShareService(store, settings)
            try:
                return await sweep(service)
            finally:
                await service.close()

    report = asyncio.run(run())
    print(json.dumps(report.as_json()))
    return 0
