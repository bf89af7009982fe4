"""The sweep: expired shares deleted, folded journal entries pruned, old delete records dropped.

Run periodically by the server (``web/lifecycle.py``) and on demand by ``cloudsession gc``. Safe
on every replica at once: each deletion is conditional or idempotent.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloudsession.errors import (
    SessionNotFound,
    ShareNotFound,
)
from cloudsession.shares.idempotency import DELETE_RECORD_TTL_MS
from cloudsession.shares.listing import Entry
from cloudsession.shares.service import ShareService, is_expired, now_ms
from cloudsession.shares.storage import (
    DELETE_RECORD_PREFIX,
    INDEX_PREFIX,
    JOURNAL_PREFIX,
    LISTING_PREFIX,
    journal_key,
    parse_listing_key,
    snapshot_key,
)
from cloudsession.store.base import iter_keys

log = logging.getLogger(__name__)

# -- expiry sweep and journal pruning -----------------------------------------------------------


Tick = Callable[[int], None]
# ``start(phase, total)`` -> the tick of that phase's progress; phases: "expiry", "journals", "records".
PhaseStart = Callable[[str, int], Tick]
PHASES = ("expiry", "journals", "records")
# A listing key that is newer than its share's index entry, or whose index entry is gone, is
# deleted only once it is this old: until then it may be a write in progress (shares/listing.py).
LISTING_GRACE_MS = 3600 * 1000


def _no_progress(phase: str, total: int) -> Tick:
    return lambda count: None


@dataclass(slots=True)
class SweepReport:
    """What the sweep deleted, or with ``dry_run`` what it would have deleted."""

    expired: list[str] = field(default_factory=list)
    journal_entries_deleted: int = 0
    records_deleted: int = 0
    # Index entries whose share was already gone (an interrupted delete), removed.
    stale_index_entries: list[str] = field(default_factory=list)
    # Listing keys that were not their share's current one (a crash in the index writer).
    stale_listing_keys: int = 0
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "expired": self.expired,
            "journalEntriesDeleted": self.journal_entries_deleted,
            "recordsDeleted": self.records_deleted,
            "staleIndexEntries": self.stale_index_entries,
            "staleListingKeys": self.stale_listing_keys,
            "dryRun": self.dry_run,
        }


async def sweep(service: ShareService, *, now: int | None = None, dry_run: bool = False, start: PhaseStart | None = None) -> SweepReport:
    """Delete expired shares, journal entries folded long ago or left by deleted shares, and old
    delete records. Safe to run on every replica at once: each deletion is conditional or
    idempotent. ``dry_run`` changes nothing and reports what would go; ``start(phase, total)``
    is called once per phase and returns the tick its progress advances by."""
    now = now_ms() if now is None else now
    start = start or _no_progress
    report = SweepReport(dry_run=dry_run)
    if not dry_run:
        await service.ensure_listing()  # a store from before the listing keys: built once
    built = not await service.store_call(service.listing.needs_backfill())
    expired: list[str] = []

    async def collect(entry: Entry | None) -> None:
        nonlocal expired
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            expired.append(entry.share_id)
        if len(expired) >= 100:
            for share_id in expired:
                await _delete_if_expired(service, share_id, now, report)
            expired = []

    # Every listed share, a listing page at a time (never all of them in memory); a progress
    # bar's total costs one more pass over the keys alone.
    prefix = LISTING_PREFIX if built else INDEX_PREFIX
    tick = start("expiry", await service.listing.count_keys(prefix) if start is not _no_progress else 0)
    if built:
        scan = service.listing.scan(None, batch=1000, evict=False)
        scan.stale_grace_ms = LISTING_GRACE_MS
        while (step := await scan.next()) is not None:
            if parse_listing_key(step[0]) is not None:
                await collect(step[1])
                tick(1)
    else:  # only a dry run on a store from before the listing keys gets here
        async for entry in service.listing.index_entries():
            await collect(entry)
            tick(1)
    for share_id in expired:
        await _delete_if_expired(service, share_id, now, report)
    if built:
        report.stale_listing_keys = len(scan.stale)
        if not dry_run:
            await service.delete_keys(scan.stale)
    # In a dry run the expired shares are still there; a real run would have deleted them, journal and all.
    doomed_shares = set(report.expired) if dry_run else set()
    report.journal_entries_deleted = await _prune_journals(service, now, dry_run=dry_run, start=start, doomed=doomed_shares)
    report.records_deleted = await _prune_delete_records(service, now, dry_run=dry_run, start=start)
    return report


async def _delete_if_expired(service: ShareService, share_id: str, now: int, report: SweepReport) -> None:
    try:
        state = await service.load(share_id)
    except SessionNotFound:
        # An index entry left by an interrupted delete.
        if not report.dry_run:
            await service.purge(share_id)
        report.stale_index_entries.append(share_id)
        return
    if not is_expired(state, now):
        return  # the index lagged behind a new expiry
    if report.dry_run:
        report.expired.append(share_id)
        return
    try:
        await service.delete(share_id, None, admin=True, reason="share.expired")
    except ShareNotFound:
        return  # another replica's sweep got there first
    report.expired.append(share_id)


async def _prune_journals(service: ShareService, now: int, *, dry_run: bool, start: PhaseStart, doomed: set[str]) -> int:
    grace_ms = service.settings.journal_grace_seconds * 1000
    by_share: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    async for key in iter_keys(service.store, JOURNAL_PREFIX):
        parts = key.split("/")
        if len(parts) == 4:
            by_share[parts[1]][parts[2]].append(key)
    deleted = 0
    tick = start("journals", len(by_share))
    # Listed before the snapshots are looked at: an entry written after the listing belongs to a
    # snapshot that exists now, and entries of a snapshot that is gone can never be read again.
    for share_id, incarnations in by_share.items():
        tick(1)
        if share_id in doomed:
            continue  # a dry run's expired share: deleting it removes its journal (not counted here)
        try:
            state = await service.load(share_id)
            current, folded_before = state.meta.incarnation, state.compacted_at
        except SessionNotFound:
            if await service.store_call(service.store.head(snapshot_key(share_id))) is not None:
                continue  # unreadable but present: leave it for an operator
            current, folded_before = None, None
        for incarnation, keys in incarnations.items():
            if incarnation != current:
                keys_to_delete = keys
            elif folded_before is not None and now - folded_before >= grace_ms:
                last = journal_key(share_id, incarnation, state.snapshot_seq)
                keys_to_delete = [k for k in keys if k <= last]
            else:
                keys_to_delete = []
            if not dry_run:
                await service.delete_keys(keys_to_delete)
            deleted += len(keys_to_delete)
    return deleted


async def _prune_delete_records(service: ShareService, now: int, *, dry_run: bool, start: PhaseStart) -> int:
    deleted = 0
    keys = [key async for key in iter_keys(service.store, DELETE_RECORD_PREFIX)]
    tick = start("records", len(keys))
    for key in keys:
        stored = await service.store_call(service.store.get(key))
        try:
            at = orjson.loads(stored.body).get("at", 0) if stored is not None else 0
        except (orjson.JSONDecodeError, AttributeError):
            at = 0
        if stored is not None and now - at >= DELETE_RECORD_TTL_MS:
            if not dry_run:
                await service.store_call(service.store.delete(key))
            deleted += 1
        tick(1)
    return deleted
