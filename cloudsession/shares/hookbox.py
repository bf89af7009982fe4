"""The hook box: share events recorded in the store until the configured webhooks and commands
have them (``cloudsession/hooks/`` delivers them; ``docs/hooks.md`` is the contract).

Why the store: delivery is at least once across restarts (a recorded event stays until every
target has it) and once across replicas. Each event has an id; recording is a create-if-absent
write of ``hooks/<id>``, so replicas that notice the same event (an idle share, a sync window)
record it once, and a replica delivers only the events it claims with a lease.

Recording never delays or fails the request that caused it: ``emit`` schedules the write in the
background and returns at once. ``share.synced`` is coalesced: the first sync of a share in each
``synced_interval`` records one event due at the end of the interval, whose payload is built then
(so it carries the count at that moment); every other event is due at once.

Payloads hold only public data: the share id, its URL, the public session id, title, counts,
labels and flags, passed through the share's redaction; never a secret, a read token, the admin
key or the real session id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import orjson

from cloudsession.config import HookSettings
from cloudsession.errors import SessionNotFound, ShareError
from cloudsession.jsonio import json_bytes
from cloudsession.shares import audit
from cloudsession.shares.storage import HOOK_PREFIX, hook_key
from cloudsession.store.base import PreconditionFailed, iter_keys

if TYPE_CHECKING:
    from cloudsession.shares.service import ShareService
    from cloudsession.shares.state import ShareState

log = logging.getLogger(__name__)

# Delivered records are kept this long so the same event (an idle share, a sync window) is not
# recorded and delivered again by a replica that notices it later.
KEEP_DONE_MS = 48 * 3600 * 1000
# Background record writes in flight at most; beyond it events are dropped (and logged) rather
# than letting a store outage grow memory without bound.
MAX_PENDING_WRITES = 1000
# Shares whose current sync window is remembered (the oldest forgotten first).
MAX_REMEMBERED_WINDOWS = 10_000


def _now() -> int:
    return int(time.time() * 1000)


def event_id(*parts: Any) -> str:
    """A deterministic id: the same event noticed twice gets the same id."""
    return hashlib.sha256(json_bytes(list(parts))).hexdigest()[:32]


class HookBox:
    """Records events for delivery, and gives the dispatcher what is due."""

    def __init__(self, service: ShareService, settings: HookSettings, public_url: str) -> None:
        self.service = service
        self.settings = settings
        self.public_url = public_url.rstrip("/")
        self._writes: set[asyncio.Task[None]] = set()
        # Records already delivered (kept in the store for de-duplication) -> when: not read
        # again, deleted once older than KEEP_DONE_MS.
        self._finished: dict[str, int] = {}
        # share id -> the sync window last recorded here: one store write per share per window,
        # not one per sync (the create-if-absent still de-duplicates across replicas).
        self._synced_windows: OrderedDict[str, int] = OrderedDict()
        # When the idle scan last ran: each scan looks only at shares that went quiet since.
        self._last_idle_scan = 0

    # -- recording --------------------------------------------------------------------------

    def emit(self, kind: str, share_id: str, state: ShareState | None = None) -> None:
        """Record ``kind`` for ``share_id`` in the background. ``state`` (the share as it was) is
        given for events after which the share is gone (deleted, expired): their payload is built
        now. Never raises, never waits."""
        now = _now()
        if kind == "share.synced":
            window = self.settings.synced_interval * 1000
            slot = now // window
            if self._synced_windows.get(share_id) == slot:
                return  # this window's event is recorded already
            self._synced_windows[share_id] = slot
            self._synced_windows.move_to_end(share_id)
            while len(self._synced_windows) > MAX_REMEMBERED_WINDOWS:
                self._synced_windows.popitem(last=False)
            ident, due, payload = event_id(kind, share_id, slot), (slot + 1) * window, None
        else:
            # Noticed by the one replica that made the change: a unique id.
            ident, due = uuid.uuid4().hex, now
            payload = self.payload(kind, share_id, state) if state is not None else None
        self._write_later(ident, {"id": ident, "kind": kind, "share": share_id, "at": now, "due": due, "payload": payload, "requestId": audit.current_actor.get().request_id})

    def emit_once(self, kind: str, share_id: str, key: Any) -> None:
        """Record an event noticed by scanning (every replica may notice it): ``key`` makes its id."""
        ident = event_id(kind, share_id, key)
        now = _now()
        self._write_later(ident, {"id": ident, "kind": kind, "share": share_id, "at": now, "due": now, "payload": None})

    def _write_later(self, ident: str, record: dict[str, Any]) -> None:
        if len(self._writes) >= MAX_PENDING_WRITES:
            log.error("hooks: %d event records waiting for the store; dropping %s of share %s", len(self._writes), record["kind"], record["share"])
            return
        task = asyncio.get_running_loop().create_task(self._write(ident, record))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, ident: str, record: dict[str, Any]) -> None:
        record["attempts"], record["done"], record["lease"] = {}, [], 0
        try:
            await self.service.store_call(self.service.store.put_if_absent(hook_key(ident), json_bytes(record)))
        except PreconditionFailed:
            pass  # recorded already (another replica, or an earlier sync of the same window)
        except ShareError as exc:
            log.error("hooks: could not record %s of share %s: %s", record["kind"], record["share"], exc.message)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait briefly for records still being written (at shutdown)."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout)

    # -- payloads ---------------------------------------------------------------------------

    def payload(self, kind: str, share_id: str, state: ShareState | None) -> dict[str, Any]:
        """The event's public JSON: what every webhook receives and commands see as variables."""
        share: dict[str, Any] = {"id": share_id, "url": f"{self.public_url}/share/{share_id}"}
        if state is not None:
            view = self.service.public_view(state)
            title = view.session.get("title")
            share.update(
                sessionId=view.session.get("id"),
                title=title if isinstance(title, str) else "",
                syncCount=view.sync_count,
                messageCount=view.message_count,
                lastUpdated=view.last_updated,
                labels=view.labels,
                private=view.private,
                final=view.final,
                expiresAt=view.expires_at,
            )
            # The last line of defence: the real session id never leaves in any field.
            share = orjson.loads(view.redact(json_bytes(share).decode("utf-8")))
        return {"event": kind, "share": share}

    async def current_payload(self, record: dict[str, Any]) -> dict[str, Any]:
        """The payload of a due record: as recorded, or built from the share as it is now."""
        if record.get("payload") is not None:
            return dict(record["payload"])
        try:
            state = await self.service.load(record["share"])
        except SessionNotFound:
            state = None
        return self.payload(record["kind"], record["share"], state)

    # -- delivery bookkeeping (used by the dispatcher) ----------------------------------------

    async def due(self, limit: int = 100) -> list[tuple[str, dict[str, Any], str]]:
        """(key, record, etag) of records due now and not leased by anyone; old done ones are
        deleted on the way."""
        now, found = _now(), []
        for key, finished in list(self._finished.items()):
            if now - finished > KEEP_DONE_MS:
                await self.service.store_call(self.service.store.delete(key))
                del self._finished[key]
        async for key in iter_keys(self.service.store, HOOK_PREFIX):
            if key in self._finished:
                continue
            stored = await self.service.store_call(self.service.store.get(key))
            if stored is None:
                continue
            try:
                record = orjson.loads(stored.body)
            except orjson.JSONDecodeError:
                log.error("hooks: unreadable record %s removed", key)
                await self.service.store_call(self.service.store.delete(key))
                continue
            if record.get("finished"):
                if now - int(record["finished"]) > KEEP_DONE_MS:
                    await self.service.store_call(self.service.store.delete(key))
                else:
                    self._finished[key] = int(record["finished"])
                continue
            if int(record.get("due", 0)) <= now and int(record.get("lease", 0)) <= now:
                found.append((key, record, stored.etag))
                if len(found) >= limit:
                    break
        return found

    async def save(self, key: str, record: dict[str, Any], etag: str) -> str | None:
        """Write ``record`` back if nobody else did meanwhile; the new etag, or None when lost."""
        try:
            new_etag = str(await self.service.store_call(self.service.store.put_if_match(key, json_bytes(record), etag)))
        except PreconditionFailed:
            return None
        if record.get("finished"):
            self._finished[key] = int(record["finished"])
        return new_etag

    async def record_idle(self, idle_ms: int) -> None:
        """Notice shares that went quiet (no change for ``idle_ms``) since the last scan (at start,
        within the last day): one ``share.idle`` per share per last update, however many
        replicas notice it."""
        now = _now()
        since = self._last_idle_scan or now - 24 * 3600 * 1000
        # The listing is ordered by last update: only the shares that went quiet are read.
        async for entry in self.service.iter_listing(newest=now - idle_ms, oldest=since - idle_ms):
            self.emit_once("share.idle", entry.share_id, entry.last_updated)
        self._last_idle_scan = now
