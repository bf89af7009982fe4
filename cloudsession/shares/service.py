"""The share service: the only code that writes shares.

Every door (REST, Cap'n Web RPC, the HTML pages, the live hub, the CLI tools) reaches the store
through this class and the rest of the ``shares`` package; none touches it directly. It owns
credentials, validation of state transitions, the merge rules, limits and the public view of a
share. The storage design (snapshot + journal, conditional writes) is described in
``storage.py`` and ``state.py``.

Writes go through :meth:`ShareService.commit`, which appends one journal entry with
create-if-absent semantics and retries on conflict, so concurrent writers in one process or in
many never lose an update. Within a process a per-share lock keeps writers from racing each other
needlessly, and a cache of folded state means a sync reads only what changed since the last one.

No listing on the hot path (``docs/storage-layout.md`` has the whole argument):

- ``load`` sends a HEAD of the snapshot and a GET of the entry after the cached ``seq``, then
  GETs the following entries until one is absent. If the snapshot is the cached one, nothing
  after the cached seq can have been pruned (pruning stops at a seq some snapshot folded), so
  an absent entry proves the state current; reads see every write acknowledged elsewhere.
- ``commit`` with a state ``load`` checked less than ``writer_trust_seconds`` ago sends only the
  conditional write of ``seq + 1``. A conflict means another writer took the slot: GET it and
  the ones after it until absent, fold, rebuild the entry, retry.
- A slot freed by pruning is never written again: a writer appends only while its last check is
  younger than ``write_deadline_seconds`` (30 s), and an entry is deleted only once a snapshot
  that folded it, necessarily written after that check, is ``journal_grace_seconds`` (300 s)
  old. Deletes in this process drop the cache; one elsewhere is noticed within the trust window
  (a sync in it leaves an orphan under the dead incarnation, as any race with a delete can).
- ``compact`` records recent (seq, time) compactions in the snapshot and deletes, by key, the
  entries up to the newest one older than the grace period: the journal holds about one grace
  period of writes however long the share lives.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cloudsession import credentials, logs
from cloudsession.config import Settings
from cloudsession.errors import (
    InvalidSecret,
    PayloadTooLarge,
    SessionNotFound,
    ShareConflict,
    ShareError,
    ShareFinal,
    ShareGone,
    ShareNotFound,
    StoreUnavailable,
    ValidationFailed,
)
from cloudsession.jsonio import json_bytes, parse_stored, stored_bytes
from cloudsession.metrics import Metrics
from cloudsession.shares import audit
from cloudsession.shares.events import EventSink, NullSink
from cloudsession.shares.listing import Entry, Filters, IndexWriter, Listing, Page, remove_entry
from cloudsession.shares.public import PublicJSON, PublicPieces, PublicShare, Redactor, current_redactor, note_owner
from cloudsession.shares.state import PARSED_COST_FACTOR, ShareState, regression, sha256_hex
from cloudsession.shares.storage import INDEX_PREFIX, journal_key, journal_prefix, snapshot_key
from cloudsession.store import open_store
from cloudsession.store.base import MAX_DELETE_BATCH, STALE_TEMP_SECONDS, ListPage, ObjectStore, PreconditionFailed, StoredObject, StoreError, iter_keys
from cloudsession.store.instrumented import InstrumentedStore

if TYPE_CHECKING:
    from cloudsession.shares.hookbox import HookBox

log = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 64
# At shutdown, index entries not yet written get this long (shares/listing.py).
INDEX_FLUSH_SECONDS = 5.0
# A list request (or the server's start) waits this long for the one-time build of the listing
# keys of a store written before they existed; past it, the list answers with what is built.
LISTING_BUILD_WAIT_SECONDS = 5.0
# Part of every public version (ETag): bump when the public JSON of the same state changes.
PUBLIC_FORMAT = 1

EntryBuilder = Callable[[ShareState], "dict[str, Any] | None"]


def now_ms() -> int:
    return int(time.time() * 1000)


def is_expired(state: ShareState, now: int) -> bool:
    expires = state.meta.extra.get("expiresAt")
    return isinstance(expires, int) and now >= expires


@dataclass(frozen=True, slots=True)
class ShareCredentials:
    id: str
    secret: str
    url: str

    def as_json(self) -> dict[str, str]:
        # Key order of the reference's responses: id, secret, url.
        return {"id": self.id, "secret": self.secret, "url": self.url}


@dataclass(slots=True)
class CommitResult:
    # ``state`` is the live cached object and moves on with later writes; ``sync_count`` is the
    # value as of this commit.
    state: ShareState
    sync_count: int


# -- the one door to the store ------------------------------------------------------------------

T = TypeVar("T")


class GuardedStore:
    """``ObjectStore`` around another: each call under ``timeout`` seconds, every failure a 503.

    :class:`ShareService` wraps the store it is given in one, so every store access of the share
    domain (loads, commits, the index, listings through ``iter_keys``, the sweep, maintenance,
    idempotency records, hooks) goes through here without having to remember to: no call waits
    longer than ``store_timeout_seconds``, and a backend failure, a timeout or an OS error leaves
    only as :class:`~cloudsession.errors.StoreUnavailable` (503 with ``Retry-After``).
    ``PreconditionFailed`` passes through untouched: it is an answer, not a failure.

    A timed-out write may still land (S3 may have applied it; the filesystem store's worker
    thread cannot be interrupted). The journal makes that harmless: the entry is folded by the
    next read like any other, and a client retrying with op ids or an ``Idempotency-Key`` is
    answered from the ledger instead of being applied twice."""

    def __init__(self, inner: ObjectStore, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"GuardedStore({self.inner!r}, timeout={self.timeout})"

    async def _call(self, action: str, key: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except PreconditionFailed:
            raise
        except TimeoutError as exc:
            log.error("store %s of %r: no answer within %gs", action, key, self.timeout)
            raise StoreUnavailable() from exc
        except (StoreError, OSError) as exc:
            # StoreError messages name the operation and key, never credentials (store/s3.py).
            log.error("store %s of %r failed: %s", action, key, exc)
            raise StoreUnavailable() from exc

    async def get(self, key: str) -> StoredObject | None:
        return await self._call("get", key, self.inner.get(key))

    async def head(self, key: str) -> str | None:
        return await self._call("head", key, self.inner.head(key))

    async def put(self, key: str, body: bytes) -> str:
        return await self._call("put", key, self.inner.put(key, body))

    async def put_if_absent(self, key: str, body: bytes) -> str:
        return await self._call("put_if_absent", key, self.inner.put_if_absent(key, body))

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await self._call("put_if_match", key, self.inner.put_if_match(key, body, etag))

    async def delete(self, key: str) -> None:
        await self._call("delete", key, self.inner.delete(key))

    async def delete_if_match(self, key: str, etag: str) -> None:
        await self._call("delete_if_match", key, self.inner.delete_if_match(key, etag))

    async def delete_many(self, keys: list[str]) -> None:
        await self._call("delete_many", keys[0] if keys else "", self.inner.delete_many(keys))

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        return await self._call("list", prefix, self.inner.list_page(prefix, start_after=start_after, limit=limit))

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return await self._call("temp cleanup", "", self.inner.remove_stale_temp(older_than_seconds=older_than_seconds, dry_run=dry_run))

    async def close(self) -> None:
        await self.inner.close()


class _ShareLock(asyncio.Lock):
    """A share's write lock, whose wait has a deadline measured in progress.

    Writers queue for it while the ones ahead get answers from the store, however long the
    queue (a burst of syncs to one share). Once no holder has finished for a whole store
    deadline, they are stuck on a store that does not answer: a waiter gives up with a 503
    rather than wait out every stuck holder's deadline in turn."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        # Holders that released the lock without a store failure.
        self.progress = 0

    # ``async with lock:`` holds it with the waiting rule above. A class, not an
    # asynccontextmanager: it is entered on every write, and a generator-based manager costs
    # several times as much.
    async def __aenter__(self) -> None:
        await self._acquire_while_progressing(self.deadline)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None or not issubclass(exc_type, StoreUnavailable):
            self.progress += 1
        self.release()

    async def _acquire_while_progressing(self, deadline: float) -> None:
        if not self.locked() and not getattr(self, "_waiters", None):
            # Free and nobody queued (the usual case): acquire() takes it at once, without
            # waiting, so no task or deadline is needed.
            await self.acquire()
            return
        # Queued behind other writers: one acquire for the whole wait, so a waiter keeps its
        # place in the queue across deadlines while the holders ahead keep finishing.
        acquiring = asyncio.ensure_future(self.acquire())
        try:
            while True:
                seen = self.progress
                done, _ = await asyncio.wait({acquiring}, timeout=deadline)
                if done:
                    acquiring.result()
                    return
                if self.progress == seen:
                    raise _busy()
        except BaseException:
            # Given up or cancelled: never leave the lock taken by an orphaned acquire.
            if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
                self.release()
            else:
                acquiring.cancel()
            raise


@dataclass(slots=True, eq=False)
class _QueuedSync:
    """A plain sync waiting for its share's sync leader (``ShareService.sync``): its answer,
    (syncCount, state) or an error, arrives in ``future``."""

    secret: str
    items: list[dict[str, Any]]
    # The request body's bytes, decoded (a batch's bodies together stay within one body's
    # limit); 0 when the caller does not know them (in-process calls, RPC: capped by items only).
    size: int
    future: asyncio.Future[tuple[int, ShareState]]


def _settle_error(queued: _QueuedSync, exc: BaseException) -> None:
    """Answer ``queued`` with ``exc``: its own copy when it can be made (an instance raised by
    several requests would collect all their tracebacks)."""
    if queued.future.done():
        return
    try:
        own = copy.copy(exc)
        own.__cause__ = exc.__cause__
    except Exception:
        own = exc
    queued.future.set_exception(own)


def _busy() -> StoreUnavailable:
    """The answer of a sync whose write did not finish (the share's writer stopped): retry."""
    return StoreUnavailable("The share is busy; retry")


def _consume(future: asyncio.Future[Any]) -> None:
    """A done callback for an answer nobody will read (its caller went away)."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class _SharePieces:
    """A share's public view kept serialised between versions (``ShareService.public_view``)."""

    pairs: list[tuple[str, str]]
    messages: PublicPieces
    parts: PublicPieces
    diffs_source: Any = None
    diffs: Any = None
    diffs_json: bytes = b"[]"

    def nbytes(self) -> int:
        m, p = self.messages, self.parts
        return m.nbytes + p.nbytes + m.parsed_bytes + p.parsed_bytes + len(self.diffs_json) * (1 + PARSED_COST_FACTOR)


def public_version(state: ShareState) -> str:
    """Names the public representation of a share's version: its incarnation and folded seq
    (with the snapshot it was folded from), and what its output depends on besides (privacy,
    finality, the format). The same on every replica; reveals nothing about the share."""
    extra = state.meta.extra
    key = (PUBLIC_FORMAT, state.share_id, state.meta.incarnation, state.snapshot_etag, state.meta.seq,
           bool(extra.get("private")), bool(extra.get("final")), state.meta.epoch)
    return hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"), digest_size=15).hexdigest()


class ShareService:
    def __init__(self, store: ObjectStore, settings: Settings, events: EventSink | None = None, metrics: Metrics | None = None) -> None:
        # Every store access of the domain goes through the guard: a deadline on each call, and
        # every failure a StoreUnavailable (503), iterators and helpers included.
        self.store = store if isinstance(store, GuardedStore) else GuardedStore(store, settings.store_timeout_seconds)
        # Syncs, items, bytes, compactions and journal lengths go here when the server measures.
        self.metrics = metrics
        if metrics is not None:
            metrics.watch_journal(self.journal_tails)
        self.settings = settings
        self.namespace = settings.namespace
        self.events: EventSink = events or NullSink()
        # Set when event hooks are configured (web/lifecycle.py): shares/hookbox.HookBox.
        self.hooks: HookBox | None = None
        self._cache: OrderedDict[str, ShareState] = OrderedDict()
        # What the cached shares cost in memory (state, public pieces), by share and in all:
        # bounded by the cache budget (``cache_budget_bytes``).
        self._cache_bytes = 0
        self._cache_costs: dict[str, int] = {}
        self._cache_limit_bytes = settings.cache_budget_bytes
        self._cache_limit_entries = 2048
        self._locks: weakref.WeakValueDictionary[str, _ShareLock] = weakref.WeakValueDictionary()
        # share id -> ((snapshot ETag, seq), view). seq alone repeats when another process
        # deletes and re-creates the share; the snapshot and its journal entries up to seq do not.
        self._public_cache: dict[str, tuple[tuple[str | None, int], PublicShare]] = {}
        self._compacting: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        # Index entries are written off the request path, a burst of changes at a time, and the
        # list is read a page at a time (shares/listing.py).
        self.index_writer = IndexWriter(self.store, delay=settings.index_write_delay_seconds, on_written=self._index_written)
        self.listing = Listing(self.store, self.index_writer, self._publish_entry, cache_bytes=settings.listing_cache_mib * 1024 * 1024)
        self._listing_ready = False
        self._listing_build: asyncio.Task[None] | None = None
        # share id -> its messages and parts redacted and serialised, kept from one version to
        # the next: a new version redacts only the entities that changed (``public_view``).
        self._pieces: dict[str, _SharePieces] = {}
        # real session id -> public id (public_id), bounded.
        self._public_ids: dict[str, str] = {}
        self._secrets: dict[tuple[str, int], str] = {}
        # share id -> plain syncs waiting for its write lock, in order of arrival (``sync``).
        self._queued_syncs: dict[str, list[_QueuedSync]] = {}
        # ids of the shares whose queued syncs a leader task is committing (``_lead_syncs``).
        self._sync_leaders: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def ready(self) -> None:
        """Raise StoreUnavailable unless the store answers within ``ready_timeout_seconds``: a
        one-key listing (a HEAD cannot tell a missing bucket from a missing key)."""
        try:
            async with asyncio.timeout(self.settings.ready_timeout_seconds):
                await self.store.list_page(INDEX_PREFIX, limit=1)
        except TimeoutError:
            raise StoreUnavailable() from None

    async def remove_crash_leftovers(self) -> int:
        """At startup: remove temporary files that writes interrupted by a crash left in the
        store (old enough that no live process can still be writing them)."""
        removed: int = await self.store.remove_stale_temp(older_than_seconds=STALE_TEMP_SECONDS)
        if removed:
            log.warning("removed %d temporary files left in the store by interrupted writes", removed)
        return removed

    async def prepare_listing(self, wait: float = LISTING_BUILD_WAIT_SECONDS) -> bool:
        """At server start: make sure the listing keys exist (``ensure_listing``), waiting at
        most ``wait`` seconds; a longer build goes on in the background. True when ready."""
        task = self._listing_task()
        await asyncio.wait({task}, timeout=wait)
        return self._listing_ready

    async def ensure_listing(self) -> None:
        """Build the listing keys from the ``index/`` entries once, if this store was written
        before they existed (or a build was interrupted): a data dir from an older version keeps
        its list. On an empty store this only writes ``listing/built``; a no-op once done."""
        if not self._listing_ready:
            await asyncio.shield(self._listing_task())

    def _listing_task(self) -> asyncio.Task[None]:
        if self._listing_build is None or self._listing_build.done():
            self._listing_build = self._spawn(self._build_listing())
        return self._listing_build

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` as a background task that ``close`` waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _build_listing(self) -> None:
        try:
            if await self.listing.needs_backfill():
                await self.listing.backfill()
            self._listing_ready = True
        except ShareError as exc:
            log.warning("listing: could not build the list from the index entries (%s); retried at the next sweep", exc.message)

    async def check_store(self) -> None:
        """``ready()`` for an operator at startup: the same one-key listing, but the store's own
        error (``StoreError``, naming what went wrong) propagates instead of a generic 503."""
        await self.store.list_page(INDEX_PREFIX, limit=1)

    async def close(self) -> None:
        """Write the index entries still pending (within INDEX_FLUSH_SECONDS), wait briefly for
        background compactions, then cancel what is left."""
        await self.index_writer.flush(INDEX_FLUSH_SECONDS)
        if self._background:
            done, pending = await asyncio.wait(self._background, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def journal_tails(self) -> tuple[int, int]:
        """(longest, total) unfolded journal entries over the cached shares (for /metrics)."""
        tails = [state.tail_entries for state in self._cache.values()]
        return (max(tails, default=0), sum(tails))

    # -- credentials --------------------------------------------------------------------------

    def secret_for(self, meta_session_id: str, epoch: int) -> str:
        # A uuid5 per call, and every write checks one: remembered, like the public ids (the
        # namespace they derive from is in this process's memory anyway).
        key = (meta_session_id, epoch)
        secret = self._secrets.get(key)
        if secret is None:
            if len(self._secrets) >= 4096:
                self._secrets.clear()
            secret = self._secrets[key] = credentials.derive_secret(self.namespace, meta_session_id, epoch)
        return secret

    def check_secret(self, state: ShareState, secret: object) -> None:
        """Raise InvalidSecret unless ``secret`` is the share's current write capability."""
        meta = state.meta
        ok = credentials.secrets_equal(secret, self.secret_for(meta.session_id, meta.epoch))
        if not ok and meta.epoch == 0 and meta.legacy_secret_sha256 and isinstance(secret, str):
            ok = credentials.secrets_equal(sha256_hex(secret), meta.legacy_secret_sha256)
        if not ok:
            raise InvalidSecret()

    def public_id(self, session_id: str) -> str:
        # An HMAC per call, and every request names its share's owner a few times: remembered.
        public = self._public_ids.get(session_id)
        if public is None:
            if len(self._public_ids) >= 4096:
                self._public_ids.clear()
            public = self._public_ids[session_id] = credentials.public_session_id(self.namespace, session_id)
        return public

    def share_url(self, origin: str, share_id: str) -> str:
        return f"{origin}/share/{share_id}"

    # -- loading ------------------------------------------------------------------------------

    def _exclusive(self, share_id: str) -> _ShareLock:
        """The share's write lock, to hold with ``async with`` (``_ShareLock``)."""
        lock = self._locks.get(share_id)
        if lock is None:
            lock = _ShareLock(self.settings.store_timeout_seconds)
            self._locks[share_id] = lock
        return lock

    def _cache_put(self, state: ShareState) -> None:
        self._cache.pop(state.share_id, None)
        self._cache[state.share_id] = state
        self._cache_account(state.share_id)

    def _cache_account(self, share_id: str) -> None:
        """Count what a cached share costs now, then evict the least recently used shares
        while the cache is over its budget (or its entry limit)."""
        state = self._cache.get(share_id)
        if state is None:
            return
        pieces = self._pieces.get(share_id)
        cost = state.memory_bytes() + (pieces.nbytes() if pieces is not None else 0)
        self._cache_bytes += cost - self._cache_costs.get(share_id, 0)
        self._cache_costs[share_id] = cost
        while self._cache and (self._cache_bytes > self._cache_limit_bytes or len(self._cache) > self._cache_limit_entries):
            evicted, _ = self._cache.popitem(last=False)
            self._forget(evicted)

    def _forget(self, share_id: str) -> None:
        self._cache_bytes -= self._cache_costs.pop(share_id, 0)
        self._public_cache.pop(share_id, None)
        self._pieces.pop(share_id, None)

    def _cache_drop(self, share_id: str) -> None:
        self._cache.pop(share_id, None)
        self._forget(share_id)

    @property
    def cache_bytes(self) -> int:
        """What the share cache holds, as counted against ``cache_budget_bytes``."""
        return self._cache_bytes

    async def store_call(self, coro: Awaitable[Any]) -> Any:
        """Await a store call. ``self.store`` already puts each call under its deadline and maps
        failures to StoreUnavailable (``GuardedStore``); this also covers a coroutine made on an
        unguarded store."""
        try:
            return await coro
        except PreconditionFailed:
            raise
        except StoreError as exc:
            log.error("store error: %s", exc)
            raise StoreUnavailable() from exc

    async def load(self, share_id: str, *, missing: type[ShareError] = SessionNotFound) -> ShareState:
        """The share's current folded state (cached; brought up to date with the store): a HEAD
        of the snapshot and a GET of the next journal entry (sent together), then GETs of the
        entries after it until one is absent. No listing: its cost would grow with the journal."""
        if not credentials.is_served_id(share_id):
            raise missing()
        for _ in range(8):
            cached = self._cache.get(share_id)
            started = time.monotonic()
            if cached is not None:
                # The next entry is fetched beside the HEAD: used only if the snapshot is the
                # cached one (then nothing after its seq can have been pruned: module docstring).
                after = cached.meta.seq
                etag, following = await asyncio.gather(
                    self.store_call(self.store.head(snapshot_key(share_id))),
                    self.store_call(self.store.get(journal_key(share_id, cached.meta.incarnation, after + 1))),
                )
            else:
                after, following = -1, None
                etag = await self.store_call(self.store.head(snapshot_key(share_id)))
            if etag is None:
                self._cache_drop(share_id)
                raise missing()
            if cached is not None and cached.snapshot_etag == etag:
                # No move_to_end here: the awaits above may have let the cache evict or drop the
                # share (a KeyError, then a 500); _cache_put below puts it back at the end.
                state = cached
                await self._catch_up(state, prefetched=(after + 1, following))
            else:
                obj = await self.store_call(self.store.get(snapshot_key(share_id)))
                if obj is None:
                    continue
                try:
                    state = ShareState.from_snapshot(share_id, parse_stored(obj.body), obj.etag, len(obj.body))
                except ValueError as exc:
                    log.error("share %s has an unreadable snapshot: %s", share_id, exc)
                    raise missing() from None
                await self._catch_up(state)
            state.checked_at = max(state.checked_at, started)
            self._cache_put(state)
            self._note_request(state)
            return state
        raise StoreUnavailable("the share kept changing while it was being read; retry")

    def _note_request(self, state: ShareState) -> None:
        # Whatever this request outputs from here on is redacted of this owner's ids.
        for real, public in self._owner_pairs(state):
            note_owner(real, public)
        # Log lines about this request name the share and its public session id.
        logs.annotate(share_id=state.share_id, session=self.public_id(state.meta.session_id))

    def _trusted(self, share_id: str) -> ShareState | None:
        """The cached state, if a writer may append after it without asking the store first:
        it was checked (``load``) less than ``writer_trust_seconds`` ago (module docstring)."""
        state = self._cache.get(share_id)
        if state is None:
            return None
        window = min(self.settings.writer_trust_seconds, self.settings.write_deadline_seconds)
        if time.monotonic() - state.checked_at >= window:
            return None
        self._cache.move_to_end(share_id)
        self._note_request(state)
        return state

    async def catch_up(self, state: ShareState) -> None:
        """Fold the journal into a state read outside :meth:`load` (the store tools repair a
        blob in memory and fold it as the service would)."""
        await self._catch_up(state)

    async def _catch_up(self, state: ShareState, *, prefetched: tuple[int, StoredObject | None] | None = None) -> int:
        """Fold the journal entries after ``state``: GET ``seq + 1``, ``seq + 2``... until one is
        absent; returns how many this call folded. ``prefetched`` is (seq, what a GET of that
        entry returned), fetched by the caller.

        ``state`` is usually the cached object, shared by every request on the share: another
        read, or the write that made an entry, may fold it while this one waits on the store.
        Entries are folded by ``seq`` (each check-and-fold runs without an await in between), so
        whoever gets there first folds an entry and everyone else skips it: never twice."""
        folded = 0
        while True:
            seq = state.meta.seq + 1
            key = journal_key(state.share_id, state.meta.incarnation, seq)
            if prefetched is not None and prefetched[0] == seq:
                obj = prefetched[1]
            else:
                obj = await self.store_call(self.store.get(key))
            prefetched = None
            if state.meta.seq >= seq:
                continue  # folded meanwhile by a concurrent read or by its own writer
            if obj is None:
                return folded
            try:
                entry = parse_stored(obj.body)
            except ValueError:
                entry = None
            if not isinstance(entry, dict) or entry.get("seq") != seq:
                # Only a damaged store gets here: serve what is readable rather than a 500.
                log.error("share %s: unreadable journal entry %s; folding stops before it", state.share_id, key)
                return folded
            state.apply_entry(entry, len(obj.body))
            folded += 1

    def ensure_live(self, state: ShareState) -> None:
        """Raise ShareGone for an expired share (the sweep deletes it later)."""
        if is_expired(state, now_ms()):
            raise ShareGone()

    # -- writing ------------------------------------------------------------------------------

    async def commit(
        self, share_id: str, build: EntryBuilder, *, missing: type[ShareError] = ShareNotFound, allow_final: bool = False
    ) -> CommitResult:
        """Append one journal entry built from the current state.

        ``build(state)`` validates against the state (raising ShareError to refuse) and returns
        the entry's content (``items``, ``syncs``, ``meta``...), or None to write nothing. It may
        run several times when other writers get in first, so it must not have side effects.
        A finalised share refuses every write with ShareFinal (409) unless ``allow_final``
        (finalising itself, rotation, idempotency records of creates).
        """
        async with self._exclusive(share_id):
            result = await self._commit_held(share_id, build, missing=missing, allow_final=allow_final)
        self._maybe_compact(result.state)
        return result

    async def _commit_held(
        self, share_id: str, build: EntryBuilder, *, missing: type[ShareError] = ShareNotFound, allow_final: bool = False
    ) -> CommitResult:
        """``commit`` with the share's write lock already held by the caller."""
        limits = self.settings.limits
        # A writer whose state is current appends the next seq with one conditional write
        # and learns of other writers from the conflict (module docstring).
        trusted = self._trusted(share_id)
        for attempt in range(MAX_WRITE_ATTEMPTS):
            state = trusted if trusted is not None else await self.load(share_id, missing=missing)
            self.ensure_live(state)
            content = build(state)  # checks the caller's secret first: 403 before 409
            if content is None:
                return CommitResult(state, state.meta.sync_count)
            if state.meta.extra.get("final") and not allow_final:
                raise ShareFinal()
            seq = state.meta.seq + 1
            # What this commit makes of the count, whatever reads fold meanwhile.
            sync_count = state.meta.sync_count + int(content.get("syncs", 0))
            # "w" makes every entry's bytes unique, so the S3 store's lost-response check
            # (compare what is stored with what was sent) can never mistake a rival's write
            # for ours. Unique, not secret: ``random``, whose call (unlike os.urandom's system
            # call) does not release the GIL.
            entry = {"v": 1, "seq": seq, "at": max(now_ms(), state.meta.last_updated + 1), "w": f"{random.getrandbits(64):016x}", **content}
            body = stored_bytes(entry)
            if state.approx_bytes + len(body) > limits.max_share_bytes:
                raise PayloadTooLarge(f"Share would exceed its size limit of {limits.max_share_bytes} bytes")
            if time.monotonic() - state.checked_at > self.settings.write_deadline_seconds:
                trusted = None
                continue
            try:
                await self.store_call(self.store.put_if_absent(journal_key(share_id, state.meta.incarnation, seq), body))
            except PreconditionFailed:
                # Another writer took this seq: fold what it (and any after it) wrote, by
                # GET, and try the next one. Back off a little so retries spread out.
                await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
                if state.meta.seq < seq and not await self._catch_up(state):
                    trusted = None  # the entry vanished again: ask the store from scratch
                else:
                    trusted = state
                continue
            # A read that ran while the write was in flight may have found the entry in the
            # store and folded it already (_catch_up): then it must not be folded again.
            if state.meta.seq == seq - 1:
                state.apply_entry(entry, len(body))
            self._cache_put(state)
            if self.metrics is not None:
                self.metrics.journal_appended(content, len(body))
            result = CommitResult(state, sync_count)
            # Under the lock, so this process hands the writer its entries in commit order;
            # written after the answer, a burst at a time (shares/listing.py).
            self._schedule_index(share_id, state.index_doc())
            break
        else:
            raise StoreUnavailable("Too many concurrent writers on this share; retry")
        return result

    def _schedule_index(self, share_id: str, index: dict[str, Any]) -> None:
        """The index entry is derived and may lag: it is written off the request path, and a
        failure to write it never fails a durable change (shares/listing.py)."""
        self.index_writer.schedule(share_id, index)

    def _index_written(self, share_id: str, index: dict[str, Any]) -> None:
        self.listing.written(share_id, index)

    async def settle_index(self) -> None:
        """Wait until every index entry this process scheduled is written (tests and tools)."""
        await self.index_writer.settle()

    async def create(
        self,
        session_id: Any,
        *,
        origin: str,
        initial_items: list[dict[str, Any]] | None = None,
        on_create: Callable[[ShareState], None] | None = None,
    ) -> ShareCredentials:
        """Create the share of ``session_id``, or return the existing one (idempotent: same id,
        secret and url, data kept). ``initial_items`` are applied as one sync either way."""
        if not isinstance(session_id, str) or not session_id:
            raise ValidationFailed("sessionID must be a non-empty string", [{"path": ["sessionID"], "message": "must be a non-empty string"}])
        if len(session_id) > self.settings.limits.max_session_id_length:
            raise ValidationFailed(f"sessionID is longer than {self.settings.limits.max_session_id_length} characters")
        if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in session_id):
            raise ValidationFailed("sessionID contains control characters or lone surrogates")
        state = await self._find_or_create(session_id, on_create)
        if initial_items:
            result = await self.commit(state.share_id, lambda _s: {"items": initial_items, "syncs": 1})
            state = result.state
            await self.notify_sync(state, initial_items, result.sync_count)
        secret = self.secret_for(session_id, state.meta.epoch)
        return ShareCredentials(state.share_id, secret, self.share_url(origin, state.share_id))

    async def _find_or_create(self, session_id: str, on_create: Callable[[ShareState], None] | None) -> ShareState:
        candidates = credentials.share_id_candidates(self.namespace, session_id)
        legacy = credentials.reference_share_id(session_id)
        if legacy not in candidates and credentials.is_served_id(legacy):
            # A share the reference Worker made under an id cloudsession would not choose
            # (``26.11.30``): found, never created, so the owner's re-create keeps its link.
            try:
                state = await self.load(legacy)
            except SessionNotFound:
                state = None
            if state is not None and credentials.secrets_equal(state.meta.session_id, session_id):
                self.ensure_live(state)
                return state
        for share_id in candidates:
            for _ in range(4):
                try:
                    state = await self.load(share_id)
                except SessionNotFound:
                    state = None
                if state is not None:
                    if credentials.secrets_equal(state.meta.session_id, session_id):
                        self.ensure_live(state)
                        return state
                    break  # another session owns this id: try the next candidate
                now = now_ms()
                state = ShareState.new(share_id, session_id, now)
                if on_create is not None:
                    on_create(state)
                body = state.snapshot_bytes_now(now)
                started = time.monotonic()
                try:
                    etag = await self.store_call(self.store.put_if_absent(snapshot_key(share_id), body))
                except PreconditionFailed:
                    continue  # a concurrent create won; look again
                state.snapshot_etag, state.snapshot_bytes, state.approx_bytes, state.compacted_at = etag, len(body), len(body), now
                # Slot 1 was free when the create won: the writer may trust this state.
                state.checked_at = started
                self._cache_put(state)
                self._schedule_index(share_id, state.index_doc())
                # Here, after the create-if-absent won: concurrent creates fire one event.
                self.emit("share.created", share_id)
                return state
        raise ShareConflict("Share id collision: another session already owns this share id")

    async def sync(self, share_id: str, secret: str, items: list[dict[str, Any]], *, size: int = 0) -> int:
        """Apply validated sync items; returns the new syncCount.

        Syncs into one share are committed by one leader task per busy share, a batch at a
        time: a batch is every sync waiting when the leader takes the next one, in order of
        arrival, while their items fit in one sync's item limit and their bodies (``size``, the
        request's bytes) in one sync's body limit; it becomes **one** journal entry, and each
        sync is answered with its own count (the fold applies an entry's items in order, so the
        share ends exactly as after one entry per sync). Each sync's secret is checked on its
        own (a wrong one is a 403 for that sync alone), and a batch the share's size limit
        refuses is retried one sync at a time. A busy share (many clients at once) so costs one
        store write per batch, not one per sync. The leader is a task of its own: a request that
        goes away neither takes the others' answers with it nor leaves them waiting, and every
        wait of the leader has a deadline (the lock's and the store's), so each sync is
        answered."""
        loop = asyncio.get_running_loop()
        me = _QueuedSync(secret, items, size, loop.create_future())
        self._queued_syncs.setdefault(share_id, []).append(me)
        if share_id not in self._sync_leaders:
            self._sync_leaders.add(share_id)
            self._spawn(self._lead_syncs(share_id))
        try:
            # shield: a caller that goes away leaves its sync to the leader's answer (applied or
            # not, as the leader decides), never half-settled.
            sync_count, state = await asyncio.shield(me.future)
        except asyncio.CancelledError:
            if not self._drop_queued(share_id, me):  # still queued: dropped, never applied
                me.future.add_done_callback(_consume)  # in a batch: the leader still answers it
            raise
        self._maybe_compact(state)
        await self.notify_sync(state, items, sync_count)
        return sync_count

    def _drop_queued(self, share_id: str, queued: _QueuedSync) -> bool:
        """Take ``queued`` out of its share's queue; False when a batch has it already."""
        queue = self._queued_syncs.get(share_id)
        if queue is None or queued not in queue:
            return False
        queue.remove(queued)
        if not queue:
            del self._queued_syncs[share_id]
        return True

    async def _lead_syncs(self, share_id: str) -> None:
        """The share's sync leader: commits the waiting syncs a batch at a time, each under the
        share's write lock, until none is left; whatever stops it (a busy lock, a failure,
        shutdown) is the answer of every sync still waiting."""
        try:
            while self._queued_syncs.get(share_id):
                # The lock for one batch at a time: other writers of the share (a delete, a
                # compaction, an idempotent sync) queued meanwhile get their turn between batches
                # instead of waiting out a stream of syncs.
                async with self._exclusive(share_id):
                    if self._queued_syncs.get(share_id):
                        await self._commit_syncs(share_id, self._take_syncs(share_id))
        except BaseException as exc:
            for queued in self._queued_syncs.pop(share_id, []):
                _settle_error(queued, _busy() if isinstance(exc, asyncio.CancelledError) else exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            # No await since the queue was last found empty (or emptied): nothing can be waiting.
            self._sync_leaders.discard(share_id)

    def _take_syncs(self, share_id: str) -> list[_QueuedSync]:
        """The next batch: the waiting syncs from the first, in order, while their items fit in
        one sync's item limit and their bodies in one sync's body limit (one alone always)."""
        queue = self._queued_syncs.pop(share_id)
        limits = self.settings.limits
        batch: list[_QueuedSync] = []
        items = size = 0
        for queued in queue:
            if batch and (items + len(queued.items) > limits.max_items_per_sync or size + queued.size > limits.max_body_bytes):
                break
            batch.append(queued)
            items += len(queued.items)
            size += queued.size
        if len(batch) < len(queue):
            self._queued_syncs[share_id] = queue[len(batch) :]
        return batch

    async def _commit_syncs(self, share_id: str, batch: list[_QueuedSync]) -> None:
        """Commit ``batch`` as one entry (the lock held) and settle every one of them: each gets
        its count, or its own error. Only a cancellation leaves here by raising."""
        valid: list[_QueuedSync] = []
        refused: dict[int, InvalidSecret] = {}

        def build(state: ShareState) -> dict[str, Any] | None:
            valid.clear()
            refused.clear()
            for n, queued in enumerate(batch):
                try:
                    self.check_secret(state, queued.secret)
                except InvalidSecret as exc:
                    refused[n] = exc
                    continue
                valid.append(queued)
            if not valid:
                return None
            items = valid[0].items if len(valid) == 1 else [item for queued in valid for item in queued.items]
            return {"items": items, "syncs": len(valid)}

        try:
            result = await self._commit_held(share_id, build)
        except PayloadTooLarge as exc:
            if len(batch) == 1:
                _settle_error(batch[0], exc)
                return
            # Together too large: each on its own, so only the ones too large fail; a store that
            # fails on one fails the rest too (each would wait out its own deadline).
            for n, queued in enumerate(batch):
                await self._commit_syncs(share_id, [queued])  # a wrong secret is settled there too
                error = queued.future.exception()  # settled: every path of the commit settles it
                if isinstance(error, StoreUnavailable):
                    for rest in batch[n + 1 :]:
                        _settle_error(rest, _busy())
                    return
            return
        except asyncio.CancelledError:
            for queued in batch:
                _settle_error(queued, _busy())
            raise
        except Exception as exc:
            for n, queued in enumerate(batch):
                _settle_error(queued, refused.get(n, exc))
            return
        base = result.sync_count - len(valid)
        for n, queued in enumerate(batch):
            if n in refused:
                _settle_error(queued, refused[n])
        for n, queued in enumerate(valid, 1):
            if not queued.future.done():
                queued.future.set_result((base + n, result.state))

    async def notify_access_changed(self, share_id: str) -> None:
        """Tell live viewers that read access changed, so they re-authenticate."""
        try:
            await self.events.share_access_changed(share_id)
        except Exception:  # a viewer problem must never fail a durable write
            log.exception("share %s: access-change notification failed", share_id)

    def emit(self, kind: str, share_id: str, state: ShareState | None = None) -> None:
        """Tell the event hooks (when configured); never fails or delays the caller."""
        if self.hooks is not None:
            try:
                self.hooks.emit(kind, share_id, state)
            except Exception:
                log.exception("share %s: recording %s for the hooks failed", share_id, kind)

    async def notify_sync(self, state: ShareState, items: list[dict[str, Any]], sync_count: int) -> None:
        self.emit("share.synced", state.share_id)
        listening = getattr(self.events, "listening", None)
        if listening is not None and not listening(state.share_id):
            return  # no viewer here and no relay: the public items would go nowhere
        # Viewers are told what the fold kept: an update it ignored as a regression is left out.
        applied = [item for item in items if not self._regressed(state, item)]
        try:
            await self.events.share_synced(state.share_id, self.public_items(state, applied), sync_count)
        except Exception:  # a viewer problem must never fail a durable write
            log.exception("share %s: live notification failed", state.share_id)

    @staticmethod
    def _regressed(state: ShareState, item: dict[str, Any]) -> bool:
        kind, data = item["type"], item["data"]
        if kind == "session":
            return regression(kind, state.synced_session, data) is not None
        if kind in ("message", "part"):
            stored = (state.messages if kind == "message" else state.parts).get(data["id"])
            return regression(kind, stored, data) is not None
        return False

    async def delete(self, share_id: str, secret: str | None, *, admin: bool = False, reason: str = "share.deleted") -> None:
        """Delete a share (``admin`` skips the secret check: the operator's kill switch).
        ``reason`` is the hook event it fires (``share.expired`` from the sweep)."""
        async with self._exclusive(share_id):
            for _ in range(8):
                state = await self.load(share_id, missing=ShareNotFound)
                if not admin:
                    try:
                        self.check_secret(state, secret)
                    except InvalidSecret:
                        audit.log_event(share_id, "delete", "denied")
                        raise
                try:
                    await self.store_call(self.store.delete_if_match(snapshot_key(share_id), state.snapshot_etag or ""))
                    break
                except PreconditionFailed:
                    continue
            else:
                raise StoreUnavailable("the share kept changing while it was being deleted; retry")
            self._cache_drop(share_id)
        # The share's own audit trail goes with it: the delete is recorded in the log.
        audit.log_event(share_id, "admin-delete" if admin else "delete")
        self.emit(reason, share_id, state)
        await self.purge(share_id)
        try:
            await self.events.share_deleted(share_id)
        except Exception:
            log.exception("share %s: delete notification failed", share_id)

    async def purge(self, share_id: str) -> int:
        """Remove the listing key, the index entry and every journal entry of a share whose
        snapshot is gone (in that order: a crash in between never leaves it listed)."""
        known = await self.index_writer.forget(share_id, self.settings.store_timeout_seconds)
        self.listing.forget(share_id)
        await self.store_call(remove_entry(self.store, share_id, [known] if known is not None else []))
        keys = [key async for key in iter_keys(self.store, journal_prefix(share_id))]
        await self.delete_keys(keys)
        return len(keys)

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete ``keys`` (absent ones are fine) in batches (one S3 request each), a bounded
        number of batches at a time."""
        semaphore = asyncio.Semaphore(4)

        async def batch(chunk: list[str]) -> None:
            async with semaphore:
                await self.store_call(self.store.delete_many(chunk))

        await asyncio.gather(*(batch(keys[i : i + MAX_DELETE_BATCH]) for i in range(0, len(keys), MAX_DELETE_BATCH)))

    # -- compaction ---------------------------------------------------------------------------

    def _needs_compaction(self, state: ShareState) -> bool:
        s = self.settings
        if state.tail_entries == 0:
            return False
        return state.tail_entries >= s.compact_max_entries or state.tail_bytes >= max(
            s.compact_min_bytes, int(state.snapshot_bytes * s.compact_ratio)
        )

    def _maybe_compact(self, state: ShareState) -> None:
        if state.share_id in self._compacting or not self._needs_compaction(state):
            return
        self._compacting.add(state.share_id)
        self._spawn(self._compact_task(state.share_id))

    async def _compact_task(self, share_id: str) -> None:
        try:
            await self.compact(share_id)
        except ShareError:
            pass  # deleted or expired meanwhile: nothing to compact
        except Exception:
            if self.metrics is not None:
                self.metrics.compactions.labels("failed").inc()
            log.exception("share %s: compaction failed", share_id)
        finally:
            self._compacting.discard(share_id)

    async def compact(self, share_id: str, *, force: bool = False) -> bool:
        """Fold the journal tail into a new snapshot; off the request path. True if written.

        The snapshot records the recent compactions, (seq, time) pairs; once written, the
        entries up to the newest compaction older than ``journal_grace_seconds`` are deleted
        (``prune_journal``), so a share's journal holds about its last grace period of writes
        however many it has had (module docstring)."""
        async with self._exclusive(share_id):
            state = await self.load(share_id)
            if state.tail_entries == 0 or not (force or self._needs_compaction(state)):
                return False
            now = now_ms()
            # A consistent cut, taken without an await: reads fold new entries into the cached
            # state without the lock, so the state may move on while the bytes are encoded in a
            # thread; the document holds its own containers and does not. Uploaded without the
            # lock so that syncs are not held up by a large snapshot write.
            doc = state.snapshot_doc(now, raw=True)
            folded_seq, folded_bytes, old_etag = state.meta.seq, state.tail_bytes, state.snapshot_etag
            previous_seq, previous_pruned = state.snapshot_seq, state.pruned_seq
            history, prune_to = self._compaction_history(state, folded_seq, now)
            ours = doc["metadata"]["cloudsession"]
            ours["compactions"] = [list(c) for c in history]
            pruned_seq = prune_to if prune_to is not None else previous_pruned
            if pruned_seq is not None:
                ours["prunedSeq"] = pruned_seq
            body = await asyncio.to_thread(stored_bytes, doc)
        try:
            etag = await self.store_call(self.store.put_if_match(snapshot_key(share_id), body, old_etag or ""))
        except PreconditionFailed:
            if self.metrics is not None:
                self.metrics.compactions.labels("skipped").inc()
            return False  # another replica compacted, or the share was deleted
        if self.metrics is not None:
            self.metrics.compactions.labels("written").inc()
            self.metrics.compacted_entries.observe(folded_seq - previous_seq)
        async with self._exclusive(share_id):
            cached = self._cache.get(share_id)
            if cached is not None and cached.snapshot_etag == old_etag:
                cached.snapshot_etag, cached.snapshot_seq, cached.compacted_at = etag, folded_seq, now
                cached.compactions, cached.pruned_seq = history, pruned_seq
                cached.tail_entries = cached.meta.seq - folded_seq
                cached.tail_bytes = max(0, cached.tail_bytes - folded_bytes)
                cached.snapshot_bytes = len(body)
        if prune_to is not None:
            await self.prune_journal(share_id, state.meta.incarnation, prune_to, after=previous_pruned)
        return True

    def _compaction_history(self, state: ShareState, folded_seq: int, now: int) -> tuple[list[tuple[int, int]], int | None]:
        """The history a new snapshot folding up to ``folded_seq`` at ``now`` records, and the seq
        up to which entries may be deleted once it is written (None: nothing new to delete).

        Kept short: a compaction is recorded only if it comes a sixteenth of the grace period
        after the last recorded one (at most ~17 pairs). Leaving one out only makes the next
        deletion wait a little longer, never come earlier. A snapshot written before histories
        were kept gives its own (seq, compactedAt)."""
        grace_ms = int(self.settings.journal_grace_seconds * 1000)
        history = list(state.compactions)
        if not history and state.compacted_at is not None and state.snapshot_seq > 0:
            history = [(state.snapshot_seq, state.compacted_at)]
        if not history or now - history[-1][1] >= grace_ms / 16:
            history.append((folded_seq, now))
        old_enough = [seq for seq, at in history if now - at >= grace_ms]
        done = state.pruned_seq or 0
        prune_to = max(old_enough) if old_enough and max(old_enough) > done else None
        limit = prune_to if prune_to is not None else done
        return [(seq, at) for seq, at in history if seq > limit], prune_to

    async def prune_journal(self, share_id: str, incarnation: str, upto_seq: int, *, after: int | None = None) -> int:
        """Delete journal entries with ``after`` < seq <= ``upto_seq`` (folded long enough ago),
        by key, without listing: the last one last, so that finding it still there tells the
        next prune that this one did not finish. With ``after`` None (unknown: an older snapshot,
        or the previous prune was interrupted), the entries up to ``upto_seq`` are listed."""
        if upto_seq <= 0:
            return 0
        # Its last key still there: the previous prune was interrupted; list what it left.
        if after is not None and after > 0 and await self.store_call(self.store.head(journal_key(share_id, incarnation, after))) is not None:
            after = None
        if after is None:
            last = journal_key(share_id, incarnation, upto_seq)
            keys = []
            async for key in iter_keys(self.store, journal_prefix(share_id, incarnation)):
                if key > last:
                    break
                keys.append(key)
        else:
            keys = [journal_key(share_id, incarnation, seq) for seq in range(after + 1, upto_seq + 1)]
        if not keys:
            return 0
        await self.delete_keys(keys[:-1])
        await self.store_call(self.store.delete(keys[-1]))
        return len(keys)

    # -- public reads -------------------------------------------------------------------------

    def _owner_pairs(self, state: ShareState) -> list[tuple[str, str]]:
        """The owner keys a share's public output must not contain: its real session ID and
        its parent session's (both keys to a share), each with its public id."""
        real = state.meta.session_id
        pairs = [(real, self.public_id(real))]
        parent = state.session.get("parentID") if isinstance(state.session, dict) else None
        if isinstance(parent, str) and parent:
            pairs.append((parent, self.public_id(parent)))
        return pairs

    def redactor_for(self, state: ShareState) -> Redactor:
        return Redactor(self._owner_pairs(state))

    def public_session(self, session: dict[str, Any], real: str, public: str) -> dict[str, Any]:
        out = dict(session)
        if out.get("id") == real:
            out["id"] = public
        if out.get("slug") == real:
            out["slug"] = public
        if isinstance(out.get("parentID"), str):
            out["parentID"] = self.public_id(out["parentID"])
        return out

    def public_items(self, state: ShareState, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sync items as a viewer may see them (live frames, relay messages): the owner's ids
        replaced everywhere (``shares/public.py``)."""
        real = state.meta.session_id
        public = self.public_id(real)
        redactor = self.redactor_for(state)
        out = []
        for item in items:
            kind, data = item["type"], item["data"]
            if kind == "session":
                data = self.public_session(data, real, public)
            elif kind in ("message", "part"):
                data = self._rewrite_owner(data, real, public)
            out.append({"type": kind, "data": redactor.value(data)})
        return out

    @staticmethod
    def _rewrite_owner(entity: Any, real: str, public: str) -> Any:
        # Every message and part names its session: replaced up front, so that the redactor's
        # quick test finds nothing in the usual entity and does not walk it.
        if isinstance(entity, dict) and entity.get("sessionID") == real:
            return {**entity, "sessionID": public}
        return entity

    def _public_piece(self, redactor: Redactor, real: str, public: str) -> Callable[[bytes], bytes]:
        """Stored bytes of a message or part -> its public JSON (the owner's ids replaced)."""

        def piece(raw: bytes) -> bytes:
            # An exact-size copy: orjson's output keeps its growth buffer (EntityMap.__setitem__).
            return memoryview(json_bytes(redactor.value(self._rewrite_owner(parse_stored(raw), real, public)))).tobytes()

        return piece

    def public_view(self, state: ShareState) -> PublicShare:
        """The share as the public sees it, at the state's version. Messages and parts are kept
        redacted and serialised, piece by piece, from one version to the next: a new version
        redacts and encodes only the entities its entries changed (``PublicPieces``), and a
        response is the pieces joined. Everything still passes through the share's Redactor."""
        version = (state.snapshot_etag, state.meta.seq)
        cached = self._public_cache.get(state.share_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        real = state.meta.session_id
        public = self.public_id(real)
        pairs = self._owner_pairs(state)
        redactor = Redactor(pairs)
        # Kept for the next version only for the share the cache holds (the store tools view
        # states of their own, once).
        keep = self._cache.get(state.share_id) is state
        known = self._pieces.get(state.share_id) if keep else None
        if known is None or known.pairs != pairs or known.messages.source is not state.messages or known.parts.source is not state.parts:
            owner_field = b'"sessionID":' + json_bytes(real)
            # Swapped bytes that could span two entities (holding a separator) are never used.
            swap = None if any(c in owner_field for c in b",{}[]") else (owner_field, b'"sessionID":' + json_bytes(public))
            known = _SharePieces(pairs, PublicPieces(state.messages, swap), PublicPieces(state.parts, swap))
            if keep:
                self._pieces[state.share_id] = known
        piece = self._public_piece(redactor, real, public)
        if not (known.messages.refresh(piece) and known.parts.refresh(piece)):
            known = _SharePieces(pairs, PublicPieces(state.messages), PublicPieces(state.parts))
            known.messages.refresh(piece), known.parts.refresh(piece)
            if keep:
                self._pieces[state.share_id] = known
        if known.diffs_source is not state.diffs:
            known.diffs_source = state.diffs
            known.diffs = redactor.value(list(state.diffs))
            known.diffs_json = json_bytes(known.diffs)
        session = redactor.value(self.public_session(state.session, real, public))
        models = [redactor.value(m) for m in state.models.values()]
        extra = state.meta.extra
        private, final = bool(extra.get("private")), bool(extra.get("final"))
        load_messages, load_parts = known.messages.loader(), known.parts.loader()
        view = PublicShare(
            id=state.share_id,
            session=session,
            messages=None,
            parts=None,
            diffs=known.diffs,
            models=models,
            created_at=state.meta.created_at,
            last_updated=state.meta.last_updated,
            sync_count=state.meta.sync_count,
            private=private,
            expires_at=extra.get("expiresAt"),
            redactor=redactor,
            labels=dict(extra.get("labels") or {}),
            final=final,
            json=PublicJSON(
                session=json_bytes(session),
                messages=known.messages.in_order(),
                parts=known.parts.in_order(),
                data_messages=known.messages.in_id_order(),
                data_parts=known.parts.in_id_order(),
                diffs=known.diffs_json,
                models=json_bytes(models),
                substitution=known.messages.substitution,
            ),
            version=public_version(state),
            load=lambda: (load_messages(), load_parts()),
        )
        if keep:
            self._public_cache[state.share_id] = (version, view)
            self._cache_account(state.share_id)
        return view

    def read_token_for(self, state: ShareState) -> str:
        """The read capability of a private share at its current epoch (rotation revokes it)."""
        return credentials.derive_read_token(self.namespace, state.meta.session_id, state.meta.epoch)

    def check_readable(self, state: ShareState, read_token: str | None) -> None:
        """A private share is invisible (404, not 403: existence is not revealed) without its
        current read token; checked before expiry so that a 410 does not reveal it either."""
        if state.meta.extra.get("private") and not credentials.secrets_equal(read_token, self.read_token_for(state)):
            raise SessionNotFound()
        self.ensure_live(state)

    async def public_share(self, share_id: str, read_token: str | None = None) -> PublicShare:
        state = await self.load(share_id)
        self.check_readable(state, read_token)
        return self.public_view(state)

    def public_index(self, index: Mapping[str, Any]) -> dict[str, Any]:
        """An index entry as the public may see it: the owner's id replaced everywhere."""
        out = dict(index)
        real = out.get("sessionID")
        if isinstance(real, str):
            public = self.public_id(real)
            out["sessionID"] = public
            out = Redactor([(real, public)]).value(out)
        return out

    async def metadata(self, share_id: str, read_token: str | None = None) -> dict[str, Any]:
        state = await self.load(share_id)
        self.check_readable(state, read_token)
        return self.public_index(state.index_doc())

    def _publish_entry(self, index: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
        """An index entry's public form, and its owner's (real, public) ids."""
        real = index.get("sessionID")
        owner = (real, self.public_id(real)) if isinstance(real, str) and real else None
        return self.public_index(index), owner

    async def list_page(self, cursor: str | None = None, limit: int = 50, filters: Filters | None = None) -> Page:
        """A page of the share list, newest first, after ``cursor`` (the previous page's);
        ValidationFailed for a cursor this list did not give (shares/listing.py). While the
        one-time build of the listing keys runs, ``page.building`` is set."""
        if not self._listing_ready:
            await self.prepare_listing(LISTING_BUILD_WAIT_SECONDS / 2)
        page: Page = await self.store_call(self.listing.page(cursor, limit, filters or Filters()))
        self._note_owners(page.entries)
        page.building = not self._listing_ready
        return page

    def _note_owners(self, entries: list[Entry]) -> None:
        scope = current_redactor()
        if scope is not None:  # this request's output is redacted of every listed owner
            for entry in entries:
                if entry.owner is not None:
                    scope.add(*entry.owner)

    def iter_listing(self, *, newest: int | None = None, oldest: int | None = None) -> AsyncIterator[Entry]:
        """Every listed share (expired ones too), newest first, a listing page at a time: for the
        sweep and the hooks, which must not hold every entry in memory. Only those updated at or
        before ``newest`` and after ``oldest`` (epoch ms) when given."""
        return self.listing.entries(newest=newest, oldest=oldest)


@asynccontextmanager
async def open_service(settings: Settings, *, events: EventSink | None = None, metrics: Metrics | None = None) -> AsyncIterator[ShareService]:
    """The configured store and a share service on it, for the lifetime of the context: what the
    server runs on, and what every offline store tool uses. With ``metrics`` every store call
    is measured (``store/instrumented.py``)."""
    async with open_store(settings) as store:
        if metrics is not None:
            store = InstrumentedStore(store, metrics)
        service = ShareService(store, settings, events, metrics)
        try:
            yield service
        finally:
            await service.close()
