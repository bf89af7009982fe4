"""The share list: index entries written off the request path, read a page at a time.

**Writing.** A commit hands the share's new index entry to :class:`IndexWriter` and returns:
the sync's answer never waits for it. The writer keeps one task per share and the newest entry
not yet written; it waits ``index_write_delay_seconds`` so a burst of changes costs one write,
then writes (see :meth:`IndexWriter._write`):

1. ``listing/<inverted lastUpdated>-<id>`` (``storage.listing_key``),
2. ``index/<id>``, conditional on the ETag it last saw (never over a newer entry: another
   replica's write of a later change wins, so the entry never goes backwards),
3. then deletes the share's previous listing key, and checks the share still exists (a delete
   on another replica may have raced it: it then removes what it wrote).

A failed write is retried with backoff for as long as the process lives; a newer change
replaces the entry waiting to be retried. ``close()`` writes what is pending within a deadline.
A crash can leave the index behind the share (the next change, ``admin backfill-index`` or
``admin fsck --repair`` rewrites it) or a listing key that is not the share's current one.

**Reading.** A listing key is *valid* only while ``index/<id>``'s ``lastUpdated`` is the
key's own; readers skip the others, so a key left by a crash between steps 1 and 3 never
shows a share twice, and the sweep (``shares/sweep.py``) removes it. A page is one listing
call from its cursor plus a read of each entry it shows that this process has not read at
that ``lastUpdated`` before (:class:`Listing` keeps them, within ``listing_cache_mib``):
store work depends on the page, not on the number of shares. Deleted shares lose their
listing key first, so they leave the list as soon as they are deleted. This process's own
changes are in its pages at once, even before their entries are written.

Search and filters scan on from the cursor, newest first, until the page is full or
``SCAN_BUDGET`` entries were looked at; the answer's cursor goes on from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloudsession import credentials
from cloudsession.errors import StoreUnavailable, ValidationFailed
from cloudsession.jsonio import json_bytes, parse_stored, stored_bytes
from cloudsession.shares.storage import (
    INDEX_PREFIX,
    LISTING_BUILT_KEY,
    LISTING_PREFIX,
    index_key,
    listing_cursor,
    listing_cursor_key,
    listing_key,
    listing_position,
    parse_listing_key,
    snapshot_key,
)
from cloudsession.store.base import ObjectStore, PreconditionFailed, StoreError, iter_keys

log = logging.getLogger(__name__)

# Entries looked at per request at most when a search or filter leaves most of them out.
SCAN_BUDGET = 5000
# Index reads in flight at once per page.
READ_CONCURRENCY = 16
# A write that failed is retried after this (doubling up to the maximum).
RETRY_FIRST_SECONDS = 0.5
# A share that keeps changing while its entries are written waits longer between writes: the
# pause doubles after each write that found a newer entry pending, up to this many times the
# delay (1 s, 2 s with the default 0.5 s), and is back to the delay once the share is quiet. 32
# busy shares so cost a quarter of the index writes (each a new listing key and a replaced index
# file, two files made and two removed).
BUSY_DELAY_FACTOR = 4
RETRY_MAX_SECONDS = 30.0
# Written entries stay in this process's pages this long after their write, so a listing call
# that started before the write landed cannot miss them.
LINGER_SECONDS = 5.0
# Shares this process deleted stay out of its pages this long (a listing call that started
# before the delete may still return their key).
FORGET_SECONDS = 60.0
# Shares whose last written index ETag the writer remembers (one GET saved per write).
KNOWN_ETAGS = 10_000
MAX_CURSOR_CHARS = 200
# Counted per cached entry besides its bytes (the dict slot, tuple and ints).
ENTRY_OVERHEAD = 560


def entry_time(doc: Mapping[str, Any]) -> int:
    """An index entry's ``lastUpdated``; 0 (the oldest) for an entry without one (the
    Worker's, or damaged), which is still listed, last."""
    value = doc.get("lastUpdated")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- writing --------------------------------------------------------------------------------------


class IndexWriter:
    """Writes index entries (and their listing keys) after the commits that made them: one
    task per share, the newest entry wins, a burst of changes is one write."""

    def __init__(self, store: ObjectStore, *, delay: float, on_written: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.store = store
        self.delay = delay
        self.on_written = on_written
        self._pending: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._writing: set[str] = set()
        # share id -> (entry, None while pending or being written, else when it stops lingering)
        self._local: dict[str, tuple[dict[str, Any], float | None]] = {}
        self._deleted: dict[str, float] = {}
        # share id -> (ETag of index/<id> as we wrote it, its lastUpdated)
        self._known: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._hurry = asyncio.Event()
        # Index writes done (for tests and metrics): entries written, and writes that failed.
        self.written = 0
        self.failed = 0

    # -- scheduling ---------------------------------------------------------------------------

    def schedule(self, share_id: str, doc: dict[str, Any]) -> None:
        """Write ``doc`` as the share's index entry soon (the newest scheduled entry wins)."""
        self._deleted.pop(share_id, None)
        self._pending[share_id] = doc
        if len(self._local) >= 1024:
            self.local_entries()  # drop the ones done lingering
        self._local[share_id] = (doc, None)
        if share_id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._run(share_id), name=f"index-writer {share_id}")
            self._tasks[share_id] = task

    @property
    def pending(self) -> int:
        """Shares whose newest entry is not written yet."""
        return len(self._pending)

    def local_entries(self) -> dict[str, dict[str, Any]]:
        """The newest entry this process made of each share it changed lately (written or not):
        pages show these over what the store says."""
        now = time.monotonic()
        gone = [sid for sid, (_, until) in self._local.items() if until is not None and until < now]
        for sid in gone:
            del self._local[sid]
        return {sid: doc for sid, (doc, _) in self._local.items()}

    def recently_deleted(self) -> set[str]:
        now = time.monotonic()
        for sid in [sid for sid, until in self._deleted.items() if until < now]:
            del self._deleted[sid]
        return set(self._deleted)

    def known_time(self, share_id: str) -> int | None:
        known = self._known.get(share_id)
        return known[1] if known is not None else None

    async def forget(self, share_id: str, timeout: float) -> int | None:
        """The share is being deleted: drop its pending entry, and wait (at most ``timeout``)
        for a write in flight, so that the delete removes what it wrote. (A write still going
        after that finds the share gone when it checks, and removes what it wrote itself.)
        Returns the ``lastUpdated`` of the entry this process last wrote, if it knows one."""
        self._pending.pop(share_id, None)
        self._local.pop(share_id, None)
        self._deleted[share_id] = time.monotonic() + FORGET_SECONDS
        task = self._tasks.get(share_id)
        if task is not None:
            if share_id in self._writing:
                await asyncio.wait({task}, timeout=timeout)
            else:
                task.cancel()  # waiting for a burst to end, or to retry: nothing in flight
        known = self._known.pop(share_id, None)
        return known[1] if known is not None else None

    async def flush(self, timeout: float) -> int:
        """Write every pending entry now (no more waiting for bursts); wait at most ``timeout``
        seconds. Returns how many shares' entries are still unwritten."""
        self._hurry.set()
        try:
            tasks = list(self._tasks.values())
            if tasks:
                _, still = await asyncio.wait(tasks, timeout=timeout)
                for task in still:
                    task.cancel()
                await asyncio.gather(*still, return_exceptions=True)
            left = len(self._pending)
            if left:
                log.warning(
                    "index entries of %d shares were not written before shutdown (e.g. %s); the next change of each "
                    "or `cloudsession admin backfill-index` writes them", left, next(iter(self._pending))
                )
            return left
        finally:
            self._hurry.clear()

    async def settle(self) -> None:
        """Wait until nothing is pending (without hurrying): for tests and tools."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._hurry.is_set():
            return
        try:
            await asyncio.wait_for(self._hurry.wait(), seconds)
        except TimeoutError:
            pass

    async def _run(self, share_id: str) -> None:
        failures = 0
        busy = 1  # the pause after a write that found a newer entry pending, in delays
        try:
            await self._pause(self.delay)
            while True:
                doc = self._pending.pop(share_id, None)
                if doc is None:
                    return
                self._writing.add(share_id)
                try:
                    current = await self._write(share_id, doc)
                except asyncio.CancelledError:
                    self._pending.setdefault(share_id, doc)
                    raise
                except Exception as exc:
                    failures += 1
                    self.failed += 1
                    self._pending.setdefault(share_id, doc)  # unless a newer entry came meanwhile
                    wait = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (failures - 1))
                    log.warning("share %s: index write failed (%s); retrying in %gs", share_id, exc, wait)
                    if self._hurry.is_set() and failures >= 3:
                        return  # shutting down: flush() reports it
                    self._writing.discard(share_id)
                    await self._pause(wait)
                    continue
                finally:
                    self._writing.discard(share_id)
                failures = 0
                self.written += 1
                if share_id not in self._pending and share_id in self._local and self._local[share_id][0] is doc:
                    if current:
                        self._local[share_id] = (doc, time.monotonic() + LINGER_SECONDS)
                    else:
                        del self._local[share_id]  # a newer entry from elsewhere is in the store
                if share_id in self._pending:
                    busy = min(busy * 2, BUSY_DELAY_FACTOR)
                    await self._pause(self.delay * busy)
        finally:
            self._tasks.pop(share_id, None)

    # -- the write ------------------------------------------------------------------------------

    async def _write(self, share_id: str, doc: dict[str, Any], *, force: bool = False) -> bool:
        """Write ``doc`` as ``index/<id>`` with its listing key (module docstring). False when
        the store already holds a newer entry (written by another replica), left as it is,
        unless ``force`` (the repair tools, which read the share itself)."""
        when = entry_time(doc)
        store = self.store
        body = stored_bytes(doc)
        new_key = listing_key(share_id, when)
        known = self._known.get(share_id)
        etag: str | None = known[0] if known is not None else None
        previous: int | None = known[1] if known is not None else None
        trusted = known is not None
        key_written = False
        for _ in range(8):
            if not trusted:
                etag, previous, same = await self._read_index(share_id, body)
                if previous is not None and previous > when and not force:
                    self._remember(share_id, etag, previous)
                    if key_written:
                        await store.delete(new_key)
                    return False
                if same:
                    if not key_written:
                        await store.put(new_key, _listing_body(share_id, when))
                    self._remember(share_id, etag, previous)
                    self._tell(share_id, doc)
                    return True
            if not key_written:
                await store.put(new_key, _listing_body(share_id, when))
                key_written = True
            try:
                if etag is None:
                    new_etag = await store.put_if_absent(index_key(share_id), body)
                else:
                    new_etag = await store.put_if_match(index_key(share_id), body, etag)
            except PreconditionFailed:
                trusted = False
                continue
            break
        else:
            raise StoreUnavailable("the index entry kept changing while it was being written")
        if previous is not None and previous != when:
            await store.delete(listing_key(share_id, previous))
        if await store.head(snapshot_key(share_id)) is None:
            # Deleted meanwhile (on another replica): leave nothing of it behind.
            await store.delete(new_key)
            try:
                await store.delete_if_match(index_key(share_id), new_etag)
            except PreconditionFailed:
                pass
            self._known.pop(share_id, None)
            return False
        self._remember(share_id, new_etag, when)
        self._tell(share_id, doc)
        return True

    def _tell(self, share_id: str, doc: dict[str, Any]) -> None:
        if self.on_written is not None:
            try:
                self.on_written(share_id, doc)
            except Exception:  # the entry is written; a listing cache problem must not undo that
                log.exception("share %s: noting the written index entry failed", share_id)

    async def _read_index(self, share_id: str, body: bytes) -> tuple[str | None, int | None, bool]:
        """(ETag, lastUpdated, equal to ``body``) of the stored index entry; (None, None, False)
        when there is none. An unreadable entry has an ETag and no time."""
        obj = await self.store.get(index_key(share_id))
        if obj is None:
            return None, None, False
        try:
            stored = parse_stored(obj.body)
        except ValueError:
            return obj.etag, None, False
        when = entry_time(stored) if isinstance(stored, dict) else None
        return obj.etag, when, obj.body == body

    def _remember(self, share_id: str, etag: str | None, when: int | None) -> None:
        if etag is None or when is None:
            self._known.pop(share_id, None)
            return
        self._known[share_id] = (etag, when)
        self._known.move_to_end(share_id)
        while len(self._known) > KNOWN_ETAGS:
            self._known.popitem(last=False)


def _listing_body(share_id: str, when: int) -> bytes:
    # The key says it all; the body only helps someone looking at the bucket.
    return stored_bytes({"id": share_id, "lastUpdated": when})


async def write_entry(store: ObjectStore, share_id: str, doc: dict[str, Any], *, force: bool = False) -> bool:
    """Write one index entry and its listing key now, the way the writer does (the store tools
    use this; ``force``: even over an entry that claims to be newer)."""
    return await IndexWriter(store, delay=0)._write(share_id, doc, force=force)


async def entry_state(store: ObjectStore, share_id: str, expected: dict[str, Any]) -> str:
    """How the stored index entry and listing key of a share compare with ``expected``: "ok",
    "missing" (no entry), "stale" (another or an unreadable one) or "unlisted" (the entry is
    right but its listing key is missing)."""
    obj = await store.get(index_key(share_id))
    if obj is None:
        return "missing"
    try:
        current = parse_stored(obj.body)
    except ValueError:
        return "stale"
    if current != expected:
        return "stale"
    if await store.head(listing_key(share_id, entry_time(expected))) is None:
        return "unlisted"
    return "ok"


async def remove_entry(store: ObjectStore, share_id: str, also: Iterable[int] = ()) -> None:
    """Delete a share's listing key(s) and then its index entry (a delete, or an orphan)."""
    times = set(also)
    obj = await store.get(index_key(share_id))
    if obj is not None:
        try:
            stored = parse_stored(obj.body)
        except ValueError:
            stored = None
        if isinstance(stored, dict):
            times.add(entry_time(stored))
    for when in times:
        await store.delete(listing_key(share_id, when))
    await store.delete(index_key(share_id))


# -- reading --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """One index entry as the list shows it (public form, kept as JSON bytes: a third of the
    memory of the dict)."""

    share_id: str
    last_updated: int
    body: bytes
    search: str
    owner: tuple[str, str] | None
    private: bool
    expires_at: int | None
    labels: dict[str, str] | None

    def doc(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    @property
    def cost(self) -> int:
        return len(self.body) + len(self.search) + ENTRY_OVERHEAD


@dataclass(slots=True)
class Page:
    entries: list[Entry]
    # Where the next page starts (``?cursor=``); None at the end of the list.
    cursor: str | None
    # Listing keys looked at, entries shown, and those that could not be read.
    scanned: int = 0
    skipped: int = 0
    # Search or filters stopped at SCAN_BUDGET before the page was full.
    partial: bool = False
    # The one-time build of the listing keys (a store from before them) is still running.
    building: bool = False


@dataclass(slots=True)
class Filters:
    query: str = ""
    labels: list[tuple[str, str]] = field(default_factory=list)
    include_private: bool = True
    include_expired: bool = False

    @property
    def narrowing(self) -> bool:
        return bool(self.query or self.labels or not self.include_private)

    def keep(self, entry: Entry, now: int) -> bool:
        if not self.include_expired and entry.expires_at is not None and entry.expires_at <= now:
            return False
        if not self.include_private and entry.private:
            return False
        if self.labels and not all(entry.labels is not None and entry.labels.get(k) == v for k, v in self.labels):
            return False
        return not self.query or self.query.lower() in entry.search


def parse_cursor(cursor: str | None) -> str | None:
    """The listing key a ``?cursor=`` names (ValidationFailed for anything else)."""
    if cursor is None or cursor == "":
        return None
    key = listing_cursor_key(cursor) if len(cursor) <= MAX_CURSOR_CHARS else None
    parsed = parse_listing_key(key) if key is not None else None
    if parsed is None or not credentials.is_served_id(parsed[1]):
        raise ValidationFailed("cursor is not a cursor this list gave", [{"path": ["cursor"], "message": "unknown cursor"}])
    return key


Publish = Callable[[dict[str, Any]], tuple[dict[str, Any], tuple[str, str] | None]]


class Listing:
    """Pages of the share list, newest first (module docstring), and every entry for the
    sweep, read through a bounded cache of entries keyed by share and ``lastUpdated``."""

    def __init__(self, store: ObjectStore, writer: IndexWriter, publish: Publish, *, cache_bytes: int) -> None:
        self.store = store
        self.writer = writer
        self.publish = publish
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, Entry] = OrderedDict()
        self._cached_bytes = 0
        # Index reads made (for tests: what a page cost).
        self.reads = 0

    # -- the cache ------------------------------------------------------------------------------

    def entry_of(self, doc: dict[str, Any]) -> Entry | None:
        """The list entry of a stored index entry; None when it cannot be listed."""
        share_id, when = doc.get("id"), entry_time(doc)
        if not isinstance(share_id, str) or not credentials.is_served_id(share_id):
            return None
        public, owner = self.publish(doc)
        labels = public.get("labels")
        texts = [public.get(k) for k in ("title", "directory", "id")]
        if isinstance(labels, dict):
            texts += [f"{k}={v}" for k, v in labels.items()]
        expires = public.get("expiresAt")
        return Entry(
            share_id=share_id,
            last_updated=when,
            # The output edge: lone surrogates become U+FFFD. Copied: orjson's result keeps its
            # 4 KiB buffer, eight times this small entry.
            body=bytes(memoryview(json_bytes(public))),
            search="\n".join(t for t in texts if isinstance(t, str)).lower(),
            owner=owner,
            private=bool(public.get("private")),
            expires_at=expires if isinstance(expires, int) and not isinstance(expires, bool) else None,
            labels={k: v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, dict) else None,
        )

    def remember(self, entry: Entry, *, evict: bool = True) -> None:
        """Keep ``entry``; without ``evict`` only if it fits without evicting others (a scan of
        every share, larger than the cache, would otherwise evict each entry before its reuse)."""
        old = self._cache.pop(entry.share_id, None)
        if old is not None:
            self._cached_bytes -= old.cost
        if entry.cost > self.cache_bytes or (not evict and self._cached_bytes + entry.cost > self.cache_bytes):
            return
        self._cache[entry.share_id] = entry
        self._cached_bytes += entry.cost
        while self._cached_bytes > self.cache_bytes and self._cache:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.cost

    def written(self, share_id: str, doc: dict[str, Any]) -> None:
        """The writer wrote ``doc``: it is the entry now (saves reading it back)."""
        entry = self.entry_of(doc)
        if entry is not None:
            self.remember(entry)

    def forget(self, share_id: str) -> None:
        old = self._cache.pop(share_id, None)
        if old is not None:
            self._cached_bytes -= old.cost

    @property
    def cached(self) -> int:
        return len(self._cache)

    # -- scanning -------------------------------------------------------------------------------

    async def _read(self, share_ids: list[str], *, evict: bool = True) -> tuple[dict[str, Entry | None], int, int]:
        """Read the index entries of ``share_ids``: ({id: entry, or None when absent}, how many
        could not be listed, failed reads); unlistable and failed ones are left out."""
        semaphore = asyncio.Semaphore(READ_CONCURRENCY)
        found: dict[str, Entry | None] = {}
        unreadable = failures = 0

        async def one(share_id: str) -> None:
            nonlocal unreadable, failures
            async with semaphore:
                try:
                    obj = await self.store.get(index_key(share_id))
                except (StoreUnavailable, StoreError) as exc:
                    log.error("listing: index entry of %r cannot be read: %s", share_id, exc)
                    failures += 1
                    return
            self.reads += 1
            if obj is None:
                found[share_id] = None
                self.forget(share_id)
                return
            try:
                doc = parse_stored(obj.body)
            except ValueError:
                doc = None
            entry = self.entry_of(doc) if isinstance(doc, dict) and doc.get("id") == share_id else None
            if entry is None:
                unreadable += 1  # skipped, counted, and left for `admin fsck`
                return
            found[share_id] = entry
            self.remember(entry, evict=evict)

        await asyncio.gather(*(one(s) for s in share_ids))
        return found, unreadable, failures

    def scan(self, start_after: str | None, *, batch: int, evict: bool = True) -> Scan:
        """Every listing key after ``start_after``, in order (:class:`Scan`); ``evict=False``
        for a walk over every share."""
        return Scan(self, start_after, batch, evict=evict)

    async def page(self, cursor: str | None, limit: int, filters: Filters, *, budget: int = SCAN_BUDGET) -> Page:
        """One page of the list after ``cursor`` (``parse_cursor``), newest first."""
        start = parse_cursor(cursor)
        now = _now_ms()
        deleted = self.writer.recently_deleted()
        local_docs = self.writer.local_entries()
        local: list[tuple[str, Entry]] = []
        for share_id, doc in local_docs.items():
            entry = self.entry_of(doc)
            if entry is None:
                continue
            key = listing_key(share_id, entry.last_updated)
            if start is None or key > start:
                local.append((key, entry))
        local.sort(key=lambda pair: pair[0])
        shown: list[Entry] = []
        seen: set[str] = set()
        last = start
        scanned = 0
        li = 0

        def consider(key: str, entry: Entry) -> None:
            nonlocal last
            last = key
            if entry.share_id not in seen:
                seen.add(entry.share_id)
                if filters.keep(entry, now):
                    shown.append(entry)

        scan = self.scan(start, batch=limit if not filters.narrowing else max(limit, 200))
        while len(shown) < limit:
            if scanned >= budget:
                break
            step = await scan.next()
            upto = step[0] if step is not None else None
            while li < len(local) and (upto is None or local[li][0] < upto) and len(shown) < limit:
                consider(*local[li])
                li += 1
            if step is None or len(shown) >= limit:
                break
            scanned += 1
            key, entry = step
            last = key
            if entry is None or entry.share_id in local_docs or entry.share_id in deleted:
                continue
            consider(step[0], entry)
        more = li < len(local) or scan.more
        partial = more and len(shown) < limit
        return Page(shown, listing_cursor(last) if more and last is not None else None, scanned, scan.unreadable, partial)

    async def entries(self, *, newest: int | None = None, oldest: int | None = None, scan: Scan | None = None) -> AsyncIterator[Entry]:
        """Every valid entry (expired ones included), newest first, held a listing page at a
        time; only those updated at or before ``newest`` and after ``oldest`` when given.
        ``scan`` (from :meth:`scan`, at the start) lets the caller see what it passed."""
        start = listing_position(newest) if newest is not None else None
        scan = scan or self.scan(start, batch=1000, evict=False)
        while (step := await scan.next()) is not None:
            entry = step[1]
            if entry is None:
                continue
            if oldest is not None and entry.last_updated <= oldest:
                return
            yield entry

    async def count_keys(self, prefix: str = LISTING_PREFIX) -> int:
        """How many share keys there are under ``prefix`` (a progress bar's total), without
        holding them."""
        count = 0
        async for key in iter_keys(self.store, prefix):
            count += prefix != LISTING_PREFIX or parse_listing_key(key) is not None
        return count

    async def index_entries(self) -> AsyncIterator[Entry | None]:
        """Every ``index/`` entry, read one listing page at a time (None for one that cannot be
        listed): what the sweep reads on a store whose listing keys are not built yet."""
        batch: list[str] = []

        async def read() -> list[Entry | None]:
            ids = [key[len(INDEX_PREFIX):] for key in batch]
            found, _, _ = await self._read([i for i in ids if credentials.is_served_id(i)])
            return [found.get(i) for i in ids]

        async for key in iter_keys(self.store, INDEX_PREFIX):
            batch.append(key)
            if len(batch) >= 256:
                for entry in await read():
                    yield entry
                batch = []
        if batch:
            for entry in await read():
                yield entry

    # -- the one-time rebuild from index/ -------------------------------------------------------

    async def needs_backfill(self) -> bool:
        """Whether the listing keys must still be built from ``index/`` (a store written before
        they existed, or a build that did not finish): ``listing/built`` is missing."""
        return await self.store.head(LISTING_BUILT_KEY) is None

    async def mark_built(self, entries: int) -> None:
        await self.store.put(LISTING_BUILT_KEY, stored_bytes({"at": _now_ms(), "entries": entries}))

    async def backfill(self, *, concurrency: int = 8, report_every: float = 10.0) -> int:
        """Write the listing key of every readable index entry, then ``listing/built``
        (idempotent: an interrupted build starts over at the next start). Logs its progress;
        returns how many index entries it read."""
        semaphore = asyncio.Semaphore(concurrency)
        done = written = 0
        started = last_report = time.monotonic()

        async def one(key: str) -> None:
            nonlocal written
            share_id = key[len(INDEX_PREFIX):]
            if not credentials.is_served_id(share_id):
                return
            async with semaphore:
                obj = await self.store.get(key)
                if obj is None:
                    return
                try:
                    doc = parse_stored(obj.body)
                except ValueError:
                    return
                if not isinstance(doc, dict) or doc.get("id") != share_id:
                    return
                when = entry_time(doc)
                await self.store.put(listing_key(share_id, when), _listing_body(share_id, when))
                written += 1

        batch: list[str] = []
        async for key in iter_keys(self.store, INDEX_PREFIX):
            if not done and not batch:
                log.info("listing: building the list from the index entries (a store from before the listing keys)")
            batch.append(key)
            if len(batch) >= 1000:
                await asyncio.gather(*(one(k) for k in batch))
                done += len(batch)
                batch = []
                if time.monotonic() - last_report >= report_every:
                    last_report = time.monotonic()
                    log.info("listing: %d index entries done (%.0f/s)", done, done / max(last_report - started, 1e-9))
        await asyncio.gather(*(one(k) for k in batch))
        done += len(batch)
        await self.mark_built(written)
        if done:
            log.info("listing: built from %d index entries (%d listed) in %.1fs", done, written, time.monotonic() - started)
        return done


class Scan:
    """Listing keys after a position, in order, each with its entry when the key is valid.

    Lists ``batch`` keys at a time (doubling, up to 1,000) and reads the entries it does not
    hold in chunks as it reaches them (doubling up to 256), so a caller that stops early has
    paid for about what it used."""

    def __init__(self, listing: Listing, start_after: str | None, batch: int, *, evict: bool = True) -> None:
        self.listing = listing
        self.cursor = start_after
        self.batch = max(1, min(1000, batch))
        self.chunk = self.batch
        self.keys: deque[tuple[str, tuple[int, str] | None]] = deque()
        self.done = False
        # share id -> its entry as read during this scan (None: absent or unlistable)
        self.resolved: dict[str, Entry | None] = {}
        # share ids read during this scan that have no index entry
        self.absent: set[str] = set()
        self.unreadable = 0
        # With ``stale_grace_ms`` set: keys passed that are not their share's current one
        # (older than its index entry; or, once older than the grace, without an index entry or
        # newer than it: a crash between the writer's steps), for the sweep to delete.
        self.stale_grace_ms: int | None = None
        self.stale: list[str] = []
        # Whether entries read evict others from the cache (pages); a walk over every share
        # (sweep, fsck) keeps what is cached and adds only what fits.
        self.evict = evict

    @property
    def more(self) -> bool:
        """Whether keys are left (listed and not taken yet, or not listed yet)."""
        return bool(self.keys) or not self.done

    async def next(self) -> tuple[str, Entry | None] | None:
        """The next key and its entry (None when the key is not the share's current one); None
        at the end."""
        listing = self.listing
        if not self.keys:
            if self.done:
                return None
            page = await listing.store.list_page(LISTING_PREFIX, start_after=self.cursor, limit=min(1000, self.batch + 1))
            self.keys.extend((k, parse_listing_key(k)) for k in page.keys)
            self.done = page.next_start_after is None
            self.cursor = page.keys[-1] if page.keys else self.cursor
            self.batch = min(1000, self.batch * 2)
            if not self.keys:
                self.done = True
                return None
        key, parsed = self.keys[0]
        if parsed is None:
            self.keys.popleft()
            return key, None
        when, share_id = parsed
        cached = listing._cache.get(share_id)
        if share_id not in self.resolved and (cached is None or cached.last_updated != when):
            await self._read_ahead(share_id)
        self.keys.popleft()
        # Taken from ``resolved`` as it is used, so a scan of every share holds only what it read
        # ahead (a later key of the same share is judged from the cache, or read again).
        entry = self.resolved.pop(share_id) if share_id in self.resolved else cached
        if entry is None or entry.last_updated != when:
            if self.stale_grace_ms is not None:
                self._judge(key, when, share_id, entry)
            return key, None
        if share_id in listing._cache:
            listing._cache.move_to_end(share_id)
        return key, entry

    def _judge(self, key: str, when: int, share_id: str, current: Entry | None) -> None:
        if len(self.stale) >= 10_000:
            return  # the next sweep takes the rest
        if current is not None and current.last_updated > when:
            self.stale.append(key)  # superseded: the writer was stopped before deleting it
        elif (current is not None or share_id in self.absent) and _now_ms() - when > (self.stale_grace_ms or 0):
            self.stale.append(key)  # written, then the index write never came, long ago

    async def _read_ahead(self, share_id: str) -> None:
        wanted = [share_id]
        for _, ahead in self.keys:
            if len(wanted) >= self.chunk:
                break
            if ahead is None or ahead[1] in self.resolved or ahead[1] in wanted:
                continue
            hit = self.listing._cache.get(ahead[1])
            if hit is None or hit.last_updated != ahead[0]:
                wanted.append(ahead[1])
        found, unreadable, failures = await self.listing._read(wanted, evict=self.evict)
        if failures and failures == len(wanted):
            raise StoreUnavailable()
        self.absent.update(sid for sid, entry in found.items() if entry is None)
        self.unreadable += unreadable
        self.resolved.update(found)
        for sid in wanted:
            self.resolved.setdefault(sid, None)  # a failed read: skipped this time
        self.chunk = min(256, self.chunk * 2)
