"""What a sync costs in store requests, and what a share's journal costs in space.

A sync into a share this process checked moments ago is one conditional PUT of its journal
entry: no HEAD, GET or LIST before it (``docs/storage-layout.md``). Counted on S3 through a
proxy in front of moto (``s3_counting.py``) and on the filesystem store through a wrapper.
When another writer took the seq, the conflict is resolved by GETs of the following entries,
still without a listing, and nothing is lost. Folded entries are pruned while syncs keep
coming, so the journal stays bounded however many syncs a share gets."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import factories as f
import pytest
from conftest import MOTO_REGION
from factories import settings_for_tests
from s3_counting import CountingS3Proxy, S3Request
from store_faults import WrappedStore

from cloudsession.jsonio import json_bytes, parse_json
from cloudsession.shares.service import ShareService
from cloudsession.shares.storage import journal_prefix
from cloudsession.store.base import ListPage, StoredObject, iter_keys
from cloudsession.store.fs import FilesystemStore
from cloudsession.store.s3 import S3Store
from cloudsession.web.app import create_app

SESSION = "ses_syncrequests000000000001"
# Long enough that a slow CI machine never crosses it between two syncs of one test.
TRUST = 30.0


def message(n: int) -> dict[str, Any]:
    return f.item("message", {"id": f"msg_{n:05d}", "sessionID": SESSION, "role": "user"})


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[CountingS3Proxy]:
    async with CountingS3Proxy(moto_endpoint) as p:
        yield p


def s3_settings(tmp_path: Path, bucket: str, endpoint: str, **overrides: Any) -> Any:
    return settings_for_tests(
        tmp_path / "data",
        store={"backend": "s3", "bucket": bucket, "prefix": "shares/", "endpoint": endpoint, "region": MOTO_REGION},
        writer_trust_seconds=TRUST,
        sweep_interval_seconds=0,
        # Index writes wait out the test: what the store sees while a sync waits is the sync's own.
        index_write_delay_seconds=60,
        **overrides,
    )


def journal_puts(seen: list[S3Request]) -> list[S3Request]:
    return [r for r in seen if r.kind == "PUT" and "/journal/" in f"/{r.key}"]


def reads(seen: list[S3Request]) -> list[S3Request]:
    return [r for r in seen if r.kind in ("HEAD", "GET", "LIST")]


async def test_a_steady_state_sync_on_s3_is_one_conditional_put(aiohttp_client, proxy: CountingS3Proxy, s3_bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(s3_settings(tmp_path, s3_bucket, proxy.url)))
    share = await (await client.post("/api/share", json={"sessionID": SESSION})).json()
    url, secret = f"/api/share/{share['id']}/sync", share["secret"]
    assert (await client.post(url, json={"secret": secret, "data": [message(0)]})).status == 200
    for n in range(1, 4):
        with proxy.window() as seen:
            resp = await client.post(url, json={"secret": secret, "data": [message(n)]})
            assert resp.status == 200 and (await resp.json())["syncCount"] == n + 1
        assert reads(seen) == [], seen
        [put] = journal_puts(seen)
        assert put.if_none_match == "*" and put.status == 200 and put.key.endswith(f"{n + 1:012d}"), put
        # The index entry is written after the answer (shares/listing.py), never while a sync waits.
        assert seen == [put], seen
    # Reads go to the store (HEAD + GET of the next entry, no LIST) and see every sync.
    with proxy.window() as seen:
        data = await (await client.get(f"/api/share/{share['id']}/data")).json()
    assert [x["data"]["id"] for x in data if x["type"] == "message"] == [f"msg_{n:05d}" for n in range(4)]
    assert sorted(r.kind for r in seen) == ["GET", "HEAD"], seen


async def test_pruning_on_s3_deletes_folded_entries_in_one_batch_request(proxy: CountingS3Proxy, s3_bucket: str, tmp_path: Path) -> None:
    """Folded journal entries go in one DeleteObjects (a POST) per 1,000 keys, the last key on its
    own (its absence marks the prune finished), not one DELETE each."""
    settings = s3_settings(tmp_path, s3_bucket, proxy.url, compact_max_entries=1000)
    store = await S3Store.open(bucket=s3_bucket, prefix="shares/", endpoint_url=proxy.url, region=MOTO_REGION)
    try:
        service = ShareService(store, settings)
        creds = await service.create(SESSION, origin="http://x")
        for n in range(30):
            await service.sync(creds.id, creds.secret, [message(n)])
        assert await service.compact(creds.id, force=True)
        state = await service.load(creds.id)
        with proxy.window() as seen:
            assert await service.prune_journal(creds.id, state.meta.incarnation, 30, after=0) == 30
        assert sorted(r.kind for r in seen) == ["DELETE", "POST"], seen
        assert [key async for key in iter_keys(store, journal_prefix(creds.id, state.meta.incarnation))] == []
        view = await ShareService(store, settings).public_share(creds.id)  # all of it in the snapshot
        assert [m["id"] for m in view.messages] == [f"msg_{n:05d}" for n in range(30)]
        await service.close()
    finally:
        await store.close()


async def test_deleting_many_keys_goes_in_batches_of_a_thousand(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    keys = [f"share/k/{n:05d}" for n in range(2001)]
    await asyncio.gather(*(store.put(key, b"x") for key in keys[::100]))
    batches: list[int] = []

    class Batches(WrappedStore):
        async def delete_many(self, keys: list[str]) -> None:
            batches.append(len(keys))
            await self.inner.delete_many(keys)

    service = ShareService(Batches(store), settings_for_tests(tmp_path / "data"))
    await service.delete_keys(keys)
    assert sorted(batches) == [1, 1000, 1000]
    assert [key async for key in iter_keys(store, "share/")] == []
    await service.close()


async def test_a_sync_that_loses_its_seq_on_s3_folds_the_winner_by_get_and_loses_nothing(proxy: CountingS3Proxy, s3_bucket: str, tmp_path: Path) -> None:
    settings = s3_settings(tmp_path, s3_bucket, proxy.url)
    store = await S3Store.open(bucket=s3_bucket, prefix="shares/", endpoint_url=proxy.url, region=MOTO_REGION)
    try:
        a, b = ShareService(store, settings), ShareService(store, settings)
        creds = await a.create(SESSION, origin="http://x")
        assert await a.sync(creds.id, creds.secret, [message(1)]) == 1
        # Another replica takes the next two seqs behind a's back.
        assert await b.sync(creds.id, creds.secret, [message(2)]) == 2
        assert await b.sync(creds.id, creds.secret, [message(3)]) == 3
        with proxy.window() as seen:
            assert await a.sync(creds.id, creds.secret, [message(4)]) == 4
        puts = journal_puts(seen)
        # Seq 2 is taken (412), seqs 2 and 3 are read back and 4 found free by GET, then 4 written.
        assert [(p.key[-3:], p.status) for p in puts] == [("002", 412), ("004", 200)], seen
        assert Counter(r.kind for r in reads(seen)) == {"GET": 3}, seen
        for service in (a, b, ShareService(store, settings)):
            view = await service.public_share(creds.id)
            assert [m["id"] for m in view.messages] == [f"msg_{n:05d}" for n in range(1, 5)] and view.sync_count == 4
    finally:
        await store.close()


class CountingStore(WrappedStore):
    """The filesystem store, counting calls by operation."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    async def get(self, key: str) -> StoredObject | None:
        self.calls["get"] += 1
        return await self.inner.get(key)

    async def head(self, key: str) -> str | None:
        self.calls["head"] += 1
        return await self.inner.head(key)

    async def put(self, key: str, body: bytes) -> str:
        self.calls["put " + key.split("/")[0]] += 1
        return await self.inner.put(key, body)

    async def put_if_absent(self, key: str, body: bytes) -> str:
        self.calls["put_if_absent " + key.split("/")[0]] += 1
        return await self.inner.put_if_absent(key, body)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        self.calls["put_if_match " + key.split("/")[0]] += 1
        return await self.inner.put_if_match(key, body, etag)

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        self.calls["list"] += 1
        return await self.inner.list_page(prefix, start_after=start_after, limit=limit)


async def test_a_steady_state_sync_on_the_filesystem_is_one_conditional_write(tmp_path: Path) -> None:
    store = CountingStore(FilesystemStore(tmp_path / "store"))
    service = ShareService(store, settings_for_tests(tmp_path / "data", writer_trust_seconds=TRUST, index_write_delay_seconds=60))
    creds = await service.create(SESSION, origin="http://x")
    await service.sync(creds.id, creds.secret, [message(0)])
    store.calls.clear()
    for n in range(1, 11):
        await service.sync(creds.id, creds.secret, [message(n)])
    # The index entry waits for the burst to end (index_write_delay_seconds) and is written once.
    assert store.calls == {"put_if_absent journal": 10}
    await service.close()
    index_writes = sum(n for op, n in store.calls.items() if op.endswith(" index"))
    assert store.calls["put_if_absent journal"] == 10 and index_writes == 1, store.calls


async def test_the_journal_stays_bounded_under_continuous_syncs(tmp_path: Path) -> None:
    """Compaction every 4 entries, a 1 s grace: with syncs arriving at most every 20 ms, at
    most ~50 entries are younger than the grace period; without pruning that keeps up (the
    previous compaction is never a whole grace period old) all 150 would stay."""
    settings = settings_for_tests(tmp_path / "data", compact_max_entries=4, journal_grace_seconds=1)
    store = FilesystemStore(tmp_path / "store")
    service = ShareService(store, settings)
    creds = await service.create(SESSION, origin="http://x")
    for n in range(150):
        await service.sync(creds.id, creds.secret, [message(n)])
        await asyncio.sleep(0.02)
    await service.close()  # waits for background compactions (and their pruning)
    state = await service.load(creds.id)
    entries = [key async for key in iter_keys(store, journal_prefix(creds.id, state.meta.incarnation))]
    assert len(entries) <= 80, len(entries)
    assert state.pruned_seq is not None and state.pruned_seq >= 50
    # Nothing unfolded was pruned: a fresh process reads every sync.
    view = await ShareService(store, settings).public_share(creds.id)
    assert [m["id"] for m in view.messages] == [f"msg_{n:05d}" for n in range(150)] and view.sync_count == 150


async def test_pruning_reads_old_snapshots_and_finishes_an_interrupted_prune(tmp_path: Path) -> None:
    """A snapshot without a compaction history (written before it was kept) is pruned by
    listing; a prune that was interrupted (its last key still there) is finished by the next."""
    settings = settings_for_tests(tmp_path / "data", journal_grace_seconds=1)
    store = FilesystemStore(tmp_path / "store")
    service = ShareService(store, settings)
    creds = await service.create(SESSION, origin="http://x")
    for n in range(6):
        await service.sync(creds.id, creds.secret, [message(n)])
    assert await service.compact(creds.id, force=True)
    # As an older version wrote it: no `compactions`, no `prunedSeq`.
    obj = await store.get(f"share/{creds.id}")
    doc = parse_json(obj.body)
    ours = doc["metadata"]["cloudsession"]
    ours.pop("compactions"), ours.pop("prunedSeq", None)
    await store.put(f"share/{creds.id}", json_bytes(doc))
    service = ShareService(store, settings)
    state = await service.load(creds.id)
    assert state.compactions == [] and state.pruned_seq is None
    incarnation = state.meta.incarnation

    async def journal() -> list[int]:
        return [int(k.rsplit("/", 1)[1]) async for k in iter_keys(store, journal_prefix(creds.id, incarnation))]

    await asyncio.sleep(1.1)  # the old snapshot is past the grace period
    for n in range(6, 9):
        await service.sync(creds.id, creds.secret, [message(n)])
    assert await service.compact(creds.id, force=True)
    assert await journal() == [7, 8, 9]  # 1..6 listed and deleted: folded by the old snapshot
    state = await service.load(creds.id)
    assert state.pruned_seq == 6 and [seq for seq, _ in state.compactions] == [9]

    # An interrupted prune: entries it should have deleted, its last one (6) among them.
    for seq in (5, 6):
        await store.put(f"{journal_prefix(creds.id, incarnation)}{seq:012d}", b"{}")
    await asyncio.sleep(1.1)
    await service.sync(creds.id, creds.secret, [message(9)])
    assert await service.compact(creds.id, force=True)
    assert await journal() == [10]
    view = await ShareService(store, settings).public_share(creds.id)
    assert [m["id"] for m in view.messages] == [f"msg_{n:05d}" for n in range(10)] and view.sync_count == 10


class EvictingStore(WrappedStore):
    """A store whose HEAD lets the service's share cache be emptied meanwhile, as eviction by
    other shares' reads (or a delete) can while a load waits on the store."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.service: ShareService | None = None

    async def head(self, key: str) -> str | None:
        etag = await self.inner.head(key)
        if self.service is not None:
            self.service._cache.clear()
        return etag


async def test_a_share_evicted_while_its_load_waits_is_loaded_not_a_500(tmp_path: Path) -> None:
    # A load kept the cached state across its awaits and then moved it to the cache's end: a
    # KeyError (a 500) when the share had been evicted meanwhile.
    store = EvictingStore(FilesystemStore(tmp_path / "store"))
    service = ShareService(store, settings_for_tests(tmp_path / "data"))
    creds = await service.create(SESSION, origin="http://x")
    await service.sync(creds.id, creds.secret, [message(1)])
    store.service = service
    state = await service.load(creds.id)
    assert state.meta.sync_count == 1 and creds.id in service._cache
