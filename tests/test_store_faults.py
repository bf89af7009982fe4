"""The share service against a store that misbehaves: exact counts when a read lands between a
write reaching the store and its answer, a deadline on every call, store failures as 503 (never
an escaped backend exception), and crash leftovers cleaned up.

Runs on both backends (``store_opener``: a real directory, and S3 on moto) through wrappers that
hold or silence calls of the real store (``store_faults.py``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import factories as f
import pytest
from conftest import StoreOpener
from factories import settings_for_tests
from store_faults import HeldWriteStore, SilentStore, WrappedStore

from cloudsession.client.ids import uuid7
from cloudsession.errors import StoreUnavailable
from cloudsession.shares import maintenance
from cloudsession.shares.ops import Op, append_ops
from cloudsession.shares.service import ShareService
from cloudsession.store.base import ListPage, StoreError
from cloudsession.store.fs import FilesystemStore
from cloudsession.web.app import create_app

SESSION = "ses_heldwrite0000000000000001"


def message(n: int) -> dict[str, object]:
    return f.item("message", {"id": f"msg_{n:04d}", "sessionID": SESSION, "role": "user"})


async def test_a_read_while_a_write_is_in_flight_does_not_count_it_twice(store_opener: StoreOpener, tmp_path: Path) -> None:
    inner = await store_opener("")
    held = HeldWriteStore(inner)
    settings = settings_for_tests(tmp_path / "data")
    service = ShareService(held, settings)
    creds = await service.create(SESSION, origin="http://x")
    await service.public_share(creds.id)  # the share is cached, as on a busy server

    held.hold_next()
    sync = asyncio.create_task(service.sync(creds.id, creds.secret, [message(1)]))
    await asyncio.wait_for(held.landed.wait(), 10)
    # The entry is in the store, its writer not yet answered: this read folds it.
    assert (await service.public_share(creds.id)).sync_count == 1
    held.release.set()
    assert await sync == 1

    state = await service.load(creds.id)
    assert (state.meta.sync_count, state.meta.cursor, state.meta.seq) == (1, 1, 1)
    # A durable client chaining expected_cursor from what it was told is not refused.
    op_id = uuid7()
    answer = await append_ops(service, creds.id, creds.secret, None, [Op(op_id, [], 1, None, message(2))])
    assert answer["applied"] == [{"op_id": op_id, "cursor": 2}] and answer["rejected"] == []
    # Compaction persists the right count, and a fresh process agrees with this one.
    assert await service.compact(creds.id, force=True)
    fresh = await ShareService(inner, settings).load(creds.id)
    assert (fresh.meta.sync_count, fresh.meta.cursor) == (2, 2)
    assert sorted(fresh.messages) == ["msg_0001", "msg_0002"]


async def test_an_op_write_held_in_flight_is_acknowledged_once(store_opener: StoreOpener, tmp_path: Path) -> None:
    """The same race through appendOps: the ack cursor moves by one per op."""
    inner = await store_opener("")
    held = HeldWriteStore(inner)
    service = ShareService(held, settings_for_tests(tmp_path / "data"))
    creds = await service.create(SESSION, origin="http://x")
    for cursor in range(3):
        held.hold_next()
        op_id = uuid7()
        task = asyncio.create_task(append_ops(service, creds.id, creds.secret, None, [Op(op_id, [], cursor, None, message(cursor))]))
        await asyncio.wait_for(held.landed.wait(), 10)
        await asyncio.gather(*(service.public_share(creds.id) for _ in range(3)))
        held.release.set()
        answer = await task
        assert answer["applied"] == [{"op_id": op_id, "cursor": cursor + 1}], answer
    state = await ShareService(inner, service.settings).load(creds.id)
    assert (state.meta.cursor, state.meta.sync_count) == (3, 3)


async def test_a_store_that_never_answers_is_a_503_within_the_deadline(store_opener: StoreOpener, tmp_path: Path) -> None:
    silent = SilentStore(await store_opener(""))
    service = ShareService(silent, settings_for_tests(tmp_path / "data", store_timeout_seconds=0.3, ready_timeout_seconds=0.2))
    creds = await service.create(SESSION, origin="http://x")
    service._cache.clear()
    silent.silent = True
    calls = [
        service.ready(),
        service.public_share(creds.id),
        service.sync(creds.id, creds.secret, [message(1)]),
        service.create("ses_another00000000000000001", origin="http://x"),
        service.list_page(),
        service.delete(creds.id, creds.secret),
    ]
    for call in calls:
        # wait_for only keeps a regression from hanging the suite: the service's own deadline
        # must answer first.
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(call, 20)
    silent.silent = False
    assert (await service.public_share(creds.id)).sync_count == 0


class SlowWriteStore(WrappedStore):
    """Every journal write takes a while, as over a slow link to S3."""

    async def put_if_absent(self, key: str, body: bytes) -> str:
        await asyncio.sleep(0.04)
        return await self.inner.put_if_absent(key, body)


async def test_a_burst_of_syncs_waits_while_the_store_answers(store_opener: StoreOpener, tmp_path: Path) -> None:
    """The wait for a share's write lock gives up only when the writers ahead are stuck: a queue
    that moves is waited out, however much longer than one store deadline it takes."""
    slow = SlowWriteStore(await store_opener(""))
    # 20 writes of 40 ms and more each: the queue takes well over one deadline to drain.
    service = ShareService(slow, settings_for_tests(tmp_path / "data", store_timeout_seconds=0.6))
    creds = await service.create(SESSION, origin="http://x")
    counts = await asyncio.gather(*(service.sync(creds.id, creds.secret, [message(n)]) for n in range(20)))
    assert sorted(counts) == list(range(1, 21))


class FailingListStore(WrappedStore):
    """Every LIST fails, as a store answering 500 to ListObjectsV2 does."""

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        raise StoreError(f"S3 list of {prefix!r} failed: InternalError")


class BrokenDiskStore(WrappedStore):
    """Every read fails with an OS error (an unreadable disk)."""

    async def get(self, key: str) -> None:
        raise OSError(5, "Input/output error")

    async def head(self, key: str) -> str | None:
        raise OSError(5, "Input/output error")


class UnreadableStore(BrokenDiskStore):
    """Reads and listings fail."""

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        raise StoreError(f"list of {prefix!r} failed")


async def test_a_failing_listing_is_a_503_where_a_listing_is_needed(store_opener: StoreOpener, tmp_path: Path) -> None:
    inner = await store_opener("")
    settings = settings_for_tests(tmp_path / "data")
    creds = await ShareService(inner, settings).create(SESSION, origin="http://x")
    service = ShareService(FailingListStore(inner), settings)
    # Reads and syncs never list the journal (GETs by seq): a failing LIST does not touch them.
    assert (await service.public_share(creds.id)).sync_count == 0
    assert await service.sync(creds.id, creds.secret, [message(1)]) == 1
    service._cache.clear()
    assert await service.sync(creds.id, creds.secret, [message(2)]) == 2
    calls = [
        service.list_page(),
        service.delete(creds.id, creds.secret),  # the journal is listed to be purged
        service.ready(),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call
    broken = ShareService(BrokenDiskStore(inner), settings)
    with pytest.raises(StoreUnavailable):
        await broken.public_share(creds.id)
    with pytest.raises(StoreUnavailable):
        await broken.sync(creds.id, creds.secret, [message(3)])


async def test_503_carries_retry_after_in_json_and_html(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for_tests(tmp_path / "data")
    app = create_app(settings)
    client = await aiohttp_client(app)
    from cloudsession.web.keys import SERVICE

    created = await (await client.post("/api/share", json={"sessionID": SESSION})).json()
    service = app[SERVICE]
    service.store.inner = UnreadableStore(service.store.inner)
    service._cache.clear()
    for path in (f"/api/share/{created['id']}/data", f"/api/share/{created['id']}"):
        resp = await client.get(path)
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert (await resp.json()) == {"error": "Storage unavailable"}
    resp = await client.get(f"/share/{created['id']}")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert resp.content_type == "text/html"
    resp = await client.get("/readyz")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"


# -- crash leftovers ---------------------------------------------------------------------------


def leave_temp_files(root: Path) -> tuple[Path, Path]:
    """One temporary file as a write killed an hour ago left it, one of a write in progress."""
    tmp = root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    old, young = tmp / "w-killed.tmp", tmp / "w-writing.tmp"
    old.write_bytes(b"half a snapshot")
    young.write_bytes(b"a write in progress")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    return old, young


async def test_fsck_repair_removes_temp_files_left_by_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FilesystemStore(root)
    service = ShareService(store, settings_for_tests(tmp_path / "data"))
    await service.create(SESSION, origin="http://x")
    old, young = leave_temp_files(root)

    def no_progress(total: int) -> maintenance.Tick:
        return lambda n: None

    report = await maintenance.fsck(service, maintenance.FsckOptions(), start=no_progress)
    assert [(x.kind, x.action) for x in report.findings] == [("stale-temp", "")]
    assert old.exists()
    report = await maintenance.fsck(service, maintenance.FsckOptions(repair=True, dry_run=True), start=no_progress)
    assert [(x.kind, x.action) for x in report.findings] == [("stale-temp", "would delete")]
    assert old.exists()
    report = await maintenance.fsck(service, maintenance.FsckOptions(repair=True), start=no_progress)
    assert [(x.kind, x.action) for x in report.findings] == [("stale-temp", "deleted")]
    assert not old.exists() and young.exists()
    report = await maintenance.fsck(service, maintenance.FsckOptions(repair=True), start=no_progress)
    assert report.findings == []


async def test_the_server_removes_temp_files_left_by_a_crash_at_startup(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for_tests(tmp_path / "data")
    old, young = leave_temp_files(settings.store_path)
    client = await aiohttp_client(create_app(settings))
    assert (await client.post("/api/share", json={"sessionID": SESSION})).status == 200
    assert not old.exists() and young.exists()
