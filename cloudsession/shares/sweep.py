"""The sweep: expired shares deleted, folded journal entries pruned, old delete records dropped.

Run periodically by the server (``web/lifecycle.py``) and on demand by ``cloudsession gc``. Safe
on every replica at once: each deletion is conditional or idempotent.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloudsession.errors import (
    SessionNotFound,
    ShareNotFound,
)
from cloudsession.shares.idempotency import DELETE_RECORD_TTL_MS
from cloudsession.shares.service import ShareService, is_expired, now_ms
from cloudsession.shares.storage import DELETE_RECORD_PREFIX, JOURNAL_PREFIX, journal_key, snapshot_key
from cloudsession.store.base import iter_keys

log = logging.getLogger(__name__)

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
        await service.delete(share_id, None, admin=True, reason="share.expired")
    except ShareNotFound:
        return  # another replica's sweep got there first
    report.expired.append(share_id)


async def _prune_journals(service: ShareService, now: int) -> int:
    grace_ms = service.settings.journal_grace_seconds * 1000
    by_share: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    async for key in iter_keys(service.store, JOURNAL_PREFIX):
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
    async for key in iter_keys(service.store, DELETE_RECORD_PREFIX):
        stored = await service.store_call(service.store.get(key))
        try:
            at = orjson.loads(stored.body).get("at", 0) if stored is not None else 0
        except orjson.JSONDecodeError:
            at = 0
        if stored is not None and now - at >= DELETE_RECORD_TTL_MS:
            await service.store_call(service.store.delete(key))
            deleted += 1
    return deleted
