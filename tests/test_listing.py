"""The share list at scale: index entries written off the request path by a coalescing writer,
time-ordered listing keys read a page at a time (shares/listing.py), and the filesystem store's
listing that stops when its page is full. Real stores: the filesystem and moto's S3."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from factories import settings_for_tests

from cloudsession.errors import ValidationFailed
from cloudsession.jsonio import stored_bytes
from cloudsession.shares import maintenance
from cloudsession.shares import service as service_module
from cloudsession.shares.listing import Filters
from cloudsession.shares.service import ShareService
from cloudsession.shares.storage import LISTING_PREFIX, index_key, listing_key, parse_listing_key
from cloudsession.shares.sweep import sweep
from cloudsession.store import fs as fs_module
from cloudsession.store.base import ListPage, ObjectStore, StoredObject, iter_keys
from cloudsession.store.fs import FilesystemStore
from cloudsession.web.app import create_app
from cloudsession.web.keys import SERVICE

ADMIN = "listing-admin-key"
BASE_MS = 1_790_000_000_000


class Counting:
    """An ``ObjectStore`` around another that counts every call by operation and key family."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.failing_deletes: str | None = None

    def _count(self, op: str, key: str) -> None:
        self.calls[f"{op} {key.split('/', 1)[0]}"] += 1

    def reset(self) -> None:
        self.calls.clear()

    async def get(self, key: str) -> StoredObject | None:
        self._count("get", key)
        return await self.inner.get(key)

    async def head(self, key: str) -> str | None:
        self._count("head", key)
        return await self.inner.head(key)

    async def put(self, key: str, body: bytes) -> str:
        self._count("put", key)
        return await self.inner.put(key, body)

    async def put_if_absent(self, key: str, body: bytes) -> str:
        self._count("put", key)
        return await self.inner.put_if_absent(key, body)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        self._count("put", key)
        return await self.inner.put_if_match(key, body, etag)

    async def delete(self, key: str) -> None:
        self._count("delete", key)
        if self.failing_deletes is not None and key.startswith(self.failing_deletes):
            raise OSError("the process died here")
        await self.inner.delete(key)

    async def delete_if_match(self, key: str, etag: str) -> None:
        self._count("delete", key)
        await self.inner.delete_if_match(key, etag)

    async def delete_many(self, keys: list[str]) -> None:
        for key in keys:  # one by one, through the failure hook above
            await self.delete(key)

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        self._count("list", prefix)
        return await self.inner.list_page(prefix, start_after=start_after, limit=limit)

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return await self.inner.remove_stale_temp(older_than_seconds=older_than_seconds, dry_run=dry_run)

    async def close(self) -> None:
        await self.inner.close()

    def store_work(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> itertools.count[int]:
    """Share times one second apart, so the order of a list is known exactly."""
    ticks = itertools.count(BASE_MS, 1000)
    monkeypatch.setattr(service_module, "now_ms", lambda: next(ticks))
    return ticks


def make_service(store: ObjectStore, tmp_path: Path, **settings: Any) -> ShareService:
    return ShareService(store, settings_for_tests(tmp_path / "data", **{"index_write_delay_seconds": 0.05, **settings}))


async def make_shares(service: ShareService, count: int, *, titled: Any = None) -> list[str]:
    """``count`` shares, oldest first; each gets a session item (title, labels from ``titled``)."""
    ids = []
    for n in range(count):
        sid = f"ses_listing{n:05d}aaaaaaaaaaaaaaaaa"
        labels = {"parity": "odd" if n % 2 else "even"}
        creds = await service.create(sid, origin="http://x", on_create=lambda s, labels=labels: s.meta.extra.update(labels=labels))
        title = titled(n) if titled else f"Session {n}"
        await service.sync(creds.id, creds.secret, [{"type": "session", "data": {"id": sid, "title": title, "directory": f"/w/{n}"}}])
        ids.append(creds.id)
    await service.settle_index()
    return ids


async def whole_list(service: ShareService, limit: int, filters: Filters | None = None) -> list[str]:
    shown: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await service.list_page(cursor, limit, filters)
        shown += [e.share_id for e in page.entries]
        if page.cursor is None:
            return shown
        cursor = page.cursor
    raise AssertionError("the cursors never ended")


# -- the filesystem store's listing -------------------------------------------------------------


async def test_listing_pages_match_the_sorted_keys_on_every_backend(store: ObjectStore) -> None:
    rng = random.Random(5)
    alphabet = ["a", "b", "-", ".", "_", "0", "ü", "z"]
    keys = sorted({
        "/".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3)))
        for _ in range(70)
    })
    keys = [k for k in keys if all(seg not in (".", "..") for seg in k.split("/"))]
    for key in keys:
        await store.put("t/" + key, b"x")
    expected = ["t/" + k for k in keys]
    for _ in range(25):
        after = rng.choice([None, *expected, "t/a/", "t/b-", "t/zz", "t/0/a"])
        limit = rng.randint(1, 12)
        page = await store.list_page("t/", start_after=after, limit=limit)
        wanted = [k for k in expected if after is None or k > after]
        assert page.keys == wanted[:limit], (after, limit)
        assert page.next_start_after == (page.keys[-1] if len(wanted) > limit else None)


async def test_a_filesystem_page_reads_only_the_directories_it_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page costs the directories it passes through, not the whole tree: 50 and 500 shares'
    listing keys (spread over days and hours) cost the same directory reads per page."""
    opened: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        opened.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(fs_module.os, "scandir", counting_scandir)
    reads = []
    for count in (50, 500):
        store = FilesystemStore(tmp_path / f"store{count}")
        times = [BASE_MS - n * 7 * 60 * 1000 for n in range(count)]  # one every 7 minutes
        for n, when in enumerate(times):
            await store.put(listing_key(f"s{n:04d}", when), b"{}")
        opened.clear()
        first = await store.list_page(LISTING_PREFIX, limit=20)
        cursor_at = len(opened)
        second = await store.list_page(LISTING_PREFIX, start_after=first.keys[-1], limit=20)
        reads.append((cursor_at, len(opened) - cursor_at))
        assert [parse_listing_key(k)[1] for k in first.keys + second.keys] == [f"s{n:04d}" for n in range(40)]  # type: ignore[index]
    assert reads[0] == reads[1], reads


# -- order, cursors, search, deletes -----------------------------------------------------------


async def test_pages_are_newest_first_with_cursors_and_search(store: ObjectStore, tmp_path: Path, clock: Any) -> None:
    service = make_service(store, tmp_path)
    ids = await make_shares(service, 23, titled=lambda n: "Alpha project" if n % 3 == 0 else f"Beta {n}")
    newest_first = list(reversed(ids))
    fresh = make_service(store, tmp_path)  # another process: reads the store only
    for reader in (service, fresh):
        assert await whole_list(reader, 5) == newest_first
        assert await whole_list(reader, 100) == newest_first
    # Search in titles and labels, and a label filter, across pages.
    alpha = [i for n, i in enumerate(ids) if n % 3 == 0][::-1]
    assert await whole_list(fresh, 3, Filters(query="ALPHA")) == alpha
    assert await whole_list(fresh, 4, Filters(query="parity=odd")) == [i for n, i in enumerate(ids) if n % 2][::-1]
    assert await whole_list(fresh, 4, Filters(labels=[("parity", "even")], query="alpha")) == [i for n, i in enumerate(ids) if n % 6 == 0][::-1]
    # A sync moves a share to the front, at once in its own process, and for everyone once written.
    creds_id = ids[4]
    state = await service.load(creds_id)
    await service.sync(creds_id, service.secret_for(state.meta.session_id, 0), [{"type": "message", "data": {"id": "msg_1", "role": "user"}}])
    assert (await service.list_page(None, 1)).entries[0].share_id == creds_id
    await service.settle_index()
    moved = [creds_id] + [i for i in newest_first if i != creds_id]
    assert await whole_list(fresh, 6) == moved
    # A cursor this list did not give is a 400.
    for junk in ("nope", "0000000000001-../x", "x" * 300):
        with pytest.raises(ValidationFailed):
            await fresh.list_page(junk, 5)


async def test_deleted_shares_leave_the_list_everywhere(store: ObjectStore, tmp_path: Path, clock: Any) -> None:
    service = make_service(store, tmp_path)
    ids = await make_shares(service, 6)
    fresh = make_service(store, tmp_path)
    assert await whole_list(fresh, 2) == ids[::-1]  # warm: every entry cached
    for share_id in (ids[1], ids[4]):
        state = await service.load(share_id)
        await service.delete(share_id, service.secret_for(state.meta.session_id, 0))
    expected = [i for i in ids[::-1] if i not in (ids[1], ids[4])]
    assert await whole_list(service, 2) == expected
    assert await whole_list(fresh, 2) == expected  # its cache still holds them: the keys are gone
    assert [k async for k in iter_keys(store, LISTING_PREFIX) if ids[1] in k] == []


async def test_a_crash_between_the_new_listing_key_and_the_old_ones_delete_never_duplicates(store: ObjectStore, tmp_path: Path, clock: Any) -> None:
    counting = Counting(store)
    service = make_service(counting, tmp_path)
    ids = await make_shares(service, 5)
    target = ids[1]
    old_keys = [k async for k in iter_keys(store, LISTING_PREFIX) if k.endswith("-" + target)]
    # The writer "dies" after writing the new listing key and index entry, before deleting the old key.
    counting.failing_deletes = LISTING_PREFIX
    state = await service.load(target)
    await service.sync(target, service.secret_for(state.meta.session_id, 0), [{"type": "message", "data": {"id": "msg_x", "role": "user"}}])
    await asyncio.sleep(0.3)
    counting.failing_deletes = None
    await service.index_writer.forget(target, 1.0)  # the process is gone: nothing retries
    keys = [k async for k in iter_keys(store, LISTING_PREFIX) if k.endswith("-" + target)]
    assert len(keys) == 2 and old_keys[0] in keys
    # And a key ahead of its index entry (a crash before the index write).
    ahead = listing_key(target, int(time.time() * 1000))  # newer than its entry, and recent
    await store.put(ahead, b"{}")
    fresh = make_service(store, tmp_path)
    for limit in (1, 2, 10):
        shown = await whole_list(fresh, limit)
        assert sorted(shown) == sorted(ids) and len(shown) == len(ids), limit
    assert shown[0] == target
    # The sweep removes the superseded key (the one ahead is kept for its grace period).
    report = await sweep(fresh)
    assert report.stale_listing_keys == 1
    assert await store.get(old_keys[0]) is None and await store.get(ahead) is not None


# -- the coalescing writer ----------------------------------------------------------------------


async def test_a_burst_of_syncs_is_one_index_write_and_close_flushes_the_last(tmp_path: Path) -> None:
    counting = Counting(FilesystemStore(tmp_path / "store"))
    service = make_service(counting, tmp_path, index_write_delay_seconds=3)
    creds = await service.create("ses_burst0000000000000000001", origin="http://x")
    await service.settle_index()
    counting.reset()
    for n in range(10):
        await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": f"msg_{n}", "role": "user"}}])
    assert counting.calls["put index"] == 0  # nothing on the syncs' path
    counting.reset()
    await service.settle_index()
    # One write for the burst: the new listing key, the entry (If-Match on the ETag this process
    # wrote), the previous key deleted, and a check that the share still exists.
    assert dict(counting.calls) == {"put listing": 1, "put index": 1, "delete listing": 1, "head share": 1}
    index = json.loads((await counting.get(index_key(creds.id))).body)  # type: ignore[union-attr]
    assert index["syncCount"] == 10 and index["messageCount"] == 10
    # The last change before shutdown is written by close(), without waiting out a long delay.
    slow = make_service(counting, tmp_path, index_write_delay_seconds=60)
    await slow.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_last", "role": "user"}}])
    assert json.loads((await counting.get(index_key(creds.id))).body)["syncCount"] == 10  # type: ignore[union-attr]
    await asyncio.wait_for(slow.close(), 30)
    assert json.loads((await counting.get(index_key(creds.id))).body)["syncCount"] == 11  # type: ignore[union-attr]
    last = json.loads((await counting.get(index_key(creds.id))).body)["lastUpdated"]  # type: ignore[union-attr]
    assert [k async for k in iter_keys(counting, LISTING_PREFIX) if k.endswith(creds.id)] == [listing_key(creds.id, last)]


async def test_an_older_index_entry_is_never_written_over_a_newer_one(tmp_path: Path) -> None:
    counting = Counting(FilesystemStore(tmp_path / "store"))
    service = make_service(counting, tmp_path, index_write_delay_seconds=0)
    creds = await service.create("ses_retry0000000000000000001", origin="http://x")
    await service.settle_index()
    other = make_service(counting, tmp_path, index_write_delay_seconds=0)  # another replica
    await other.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_a", "role": "user"}}])
    await other.settle_index()
    newer = json.loads((await counting.get(index_key(creds.id))).body)  # type: ignore[union-attr]
    # This process still holds the older entry of the share: writing it would go backwards.
    state = await service.load(creds.id)
    stale = dict(newer, syncCount=0, lastUpdated=newer["lastUpdated"] - 5)
    assert state.meta.sync_count == 1
    assert not await service.index_writer._write(creds.id, stale)
    assert json.loads((await counting.get(index_key(creds.id))).body) == newer  # type: ignore[union-attr]
    assert [parse_listing_key(k)[0] async for k in iter_keys(counting, LISTING_PREFIX)] == [newer["lastUpdated"]]  # type: ignore[index]


# -- store work per page ------------------------------------------------------------------------


async def test_store_work_per_page_does_not_grow_with_the_number_of_shares(store_opener: Any, tmp_path: Path, clock: Any) -> None:
    costs = []
    for count in (50, 500):
        store = await store_opener(f"n{count}/")
        # The entries as the index writer leaves them (an index entry and its listing key; the
        # list reads nothing else), written directly to keep the seeding quick on moto.
        gate = asyncio.Semaphore(16)

        async def one(n: int, count: int = count, store: ObjectStore = store, gate: asyncio.Semaphore = gate) -> None:
            share_id, when = f"w{count:03d}{n:05d}", BASE_MS + n * 1000
            async with gate:
                await store.put(index_key(share_id), stored_bytes({"id": share_id, "sessionID": f"ses_{share_id}", "lastUpdated": when}))
                await store.put(listing_key(share_id, when), stored_bytes({"id": share_id, "lastUpdated": when}))

        await asyncio.gather(*(one(n) for n in range(count)))
        await store.put("listing/built", b"{}")
        counting = Counting(store)
        reader = make_service(counting, tmp_path / str(count))
        await reader.ensure_listing()  # (one HEAD of listing/built, once per process)
        counting.reset()
        cold = await reader.list_page(None, 20)
        cold_work = dict(counting.calls)
        counting.reset()
        warm = await reader.list_page(None, 20)
        warm_work = dict(counting.calls)
        counting.reset()
        second = await reader.list_page(cold.cursor, 20)
        second_work = dict(counting.calls)
        times = [e.last_updated for e in cold.entries + second.entries]
        assert len(set(times)) == 40 and times == sorted(times, reverse=True)  # newest first, across the cursor
        assert [e.share_id for e in cold.entries] == [e.share_id for e in warm.entries]
        costs.append((cold_work, warm_work, second_work))
    assert costs[0] == costs[1], costs
    cold_work, warm_work, _ = costs[0]
    assert cold_work == {"list listing": 1, "get index": 20}
    assert warm_work == {"list listing": 1}


# -- the HTTP doors -----------------------------------------------------------------------------


async def test_api_sessions_pages_with_cursors_and_keeps_its_shape(aiohttp_client: Any, tmp_path: Path, clock: Any) -> None:
    client = await aiohttp_client(create_app(settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN)))
    key = {"x-opencode-share-key": ADMIN}
    made = [(await (await client.post("/api/share", json={"sessionID": f"ses_apilist{n:04d}aaaaaaaaaaaaaaa"})).json())["id"] for n in range(7)]
    everything = await (await client.get("/api/sessions", headers=key)).json()
    assert [s["id"] for s in everything["sessions"]] == made[::-1] and everything["count"] == 7 and "next" not in everything
    assert all("sessionID" in s and not s["sessionID"].startswith("ses_apilist") for s in everything["sessions"])  # public ids
    seen, cursor = [], None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/sessions", params=params, headers=key)).json()
        assert page["count"] == len(page["sessions"]) <= 3
        seen += [s["id"] for s in page["sessions"]]
        cursor = page.get("next")
        if cursor is None:
            break
    assert seen == made[::-1]
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"cursor": "junk"}):
        assert (await client.get("/api/sessions", params=bad, headers=key)).status == 400, bad
    # The index entries land after the answers; nothing of them is on the request path.
    await client.app[SERVICE].settle_index()
    assert len([k async for k in iter_keys(client.app[SERVICE].store, LISTING_PREFIX) if parse_listing_key(k)]) == 7


async def test_a_data_dir_from_before_the_listing_keys_keeps_its_list(aiohttp_client: Any, tmp_path: Path, clock: Any) -> None:
    settings = settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN)
    old = ShareService(FilesystemStore(settings.store_path), settings)
    ids = await make_shares(old, 4)
    await old.close()
    # What an older version left: index/<id> entries only.
    store = FilesystemStore(settings.store_path)
    for key in [k async for k in iter_keys(store, LISTING_PREFIX)]:
        await store.delete(key)
    client = await aiohttp_client(create_app(settings))
    listed = await (await client.get("/api/sessions", headers={"x-opencode-share-key": ADMIN})).json()
    assert [s["id"] for s in listed["sessions"]] == ids[::-1] and "building" not in listed
    assert await store.get("listing/built") is not None


async def test_fsck_finds_and_removes_listing_keys_that_are_not_current(tmp_path: Path, clock: Any) -> None:
    store = FilesystemStore(tmp_path / "store")
    service = make_service(store, tmp_path)
    await service.ensure_listing()
    ids = await make_shares(service, 2)
    index = json.loads((await store.get(index_key(ids[0]))).body)  # type: ignore[union-attr]
    stale = listing_key(ids[0], index["lastUpdated"] - 1000)
    await store.put(stale, stored_bytes({"id": ids[0]}))

    def start(total: int) -> maintenance.Tick:
        return lambda n: None

    report = await maintenance.fsck(service, maintenance.FsckOptions(), start=start)
    assert [(f.kind, f.action) for f in report.findings] == [("listing-stale", "")]
    report = await maintenance.fsck(service, maintenance.FsckOptions(repair=True), start=start)
    assert [(f.kind, f.action) for f in report.findings] == [("listing-stale", "deleted")]
    assert await store.get(stale) is None
    # A share whose listing key went missing: fsck says so, backfill-index writes it back.
    await store.delete(listing_key(ids[1], json.loads((await store.get(index_key(ids[1]))).body)["lastUpdated"]))  # type: ignore[union-attr]
    report = await maintenance.fsck(service, maintenance.FsckOptions(), start=start)
    assert [f.kind for f in report.findings] == ["listing-missing"]
    backfilled = await maintenance.backfill_index(service, start=start)
    assert backfilled.counts["unlisted"] == 1
    assert (await maintenance.fsck(service, maintenance.FsckOptions(), start=start)).findings == []


async def test_a_share_that_keeps_changing_waits_longer_between_index_writes(tmp_path: Path) -> None:
    from store_faults import WrappedStore

    from cloudsession.shares.listing import BUSY_DELAY_FACTOR, IndexWriter

    share = "busyshare1"
    writer: IndexWriter

    class StillChanging(WrappedStore):
        """A new entry of the share is scheduled while each of its first four is written."""

        def __init__(self, inner: ObjectStore) -> None:
            super().__init__(inner)
            self.written = 0

        async def put_if_absent(self, key: str, body: bytes) -> str:
            return await self._index_put(key, body, None)

        async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
            return await self._index_put(key, body, etag)

        async def _index_put(self, key: str, body: bytes, etag: str | None) -> str:
            result = await (self.inner.put_if_absent(key, body) if etag is None else self.inner.put_if_match(key, body, etag))
            if key == index_key(share):
                self.written += 1
                if self.written < 5:
                    writer.schedule(share, {"id": share, "lastUpdated": 1_000 + self.written})
            return result

    store = StillChanging(FilesystemStore(tmp_path / "store"))
    await store.inner.put(f"share/{share}", b"{}")  # the share exists (the writer checks)
    writer = IndexWriter(store, delay=0.5)
    pauses: list[float] = []

    async def pause(seconds: float) -> None:  # record what the writer waits, without waiting
        pauses.append(seconds)

    writer._pause = pause  # type: ignore[method-assign]
    writer.schedule(share, {"id": share, "lastUpdated": 1_000})
    await writer.settle()
    # The first wait is the delay; each write that found a newer entry pending doubles it, up to
    # BUSY_DELAY_FACTOR delays; the fifth write found nothing pending and the task ended.
    assert pauses == [0.5, 1.0, 0.5 * BUSY_DELAY_FACTOR, 0.5 * BUSY_DELAY_FACTOR, 0.5 * BUSY_DELAY_FACTOR]
    assert store.written == 5 and writer.written == 5
    stored = await store.get(index_key(share))
    assert stored is not None and json.loads(stored.body)["lastUpdated"] == 1_004
    # Quiet again: the next change waits the plain delay.
    pauses.clear()
    writer.schedule(share, {"id": share, "lastUpdated": 2_000})
    await writer.settle()
    assert pauses == [0.5]
