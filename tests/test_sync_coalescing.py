"""Syncs into one share that wait for its write lock together are committed as one journal
entry (ShareService.sync): each keeps its own secret check, its own count and its own answer,
and the share ends exactly as after one entry per sync."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import factories as f
from factories import settings_for_tests
from store_faults import WrappedStore

from cloudsession.errors import InvalidSecret, PayloadTooLarge
from cloudsession.shares.service import ShareService
from cloudsession.store.fs import FilesystemStore

SESSION = "ses_coalesce00000000000000001"


def message(n: int, **extra: Any) -> dict[str, Any]:
    return f.item("message", {"id": f"msg_{n:04d}", "sessionID": SESSION, "role": "user", **extra})


def part(n: int, text: str) -> dict[str, Any]:
    return f.item("part", {"id": "prt_0001", "sessionID": SESSION, "messageID": "msg_0001", "type": "text", "text": text,
                           "time": {"start": n}})


async def fresh_service(tmp_path: Path, **overrides: Any) -> ShareService:
    settings = settings_for_tests(tmp_path / "data", **overrides)
    return ShareService(FilesystemStore(tmp_path / "store"), settings)


async def test_waiting_syncs_share_one_entry_and_each_gets_its_own_count(tmp_path: Path) -> None:
    service = await fresh_service(tmp_path)
    creds = await service.create(SESSION, origin="http://x")
    calls = [service.sync(creds.id, creds.secret, [message(n)]) for n in range(1, 21)]
    calls.insert(5, service.sync(creds.id, "not-the-secret", [message(99)]))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[5], InvalidSecret)
    counts = [r for i, r in enumerate(results) if i != 5]
    # In order of arrival, each its own count, as if each had had its own entry.
    assert counts == list(range(1, 21))
    state = await service.load(creds.id)
    assert state.meta.sync_count == 20 and state.meta.cursor == 20
    assert sorted(state.messages) == [f"msg_{n:04d}" for n in range(1, 21)]
    # Fewer entries than syncs: the ones that waited together were written together.
    assert state.meta.seq < 20
    # A process that reads the store from scratch folds the same share.
    again = await fresh_service(tmp_path)
    fresh = await again.load(creds.id)
    assert (fresh.meta.sync_count, sorted(fresh.messages)) == (20, sorted(state.messages))
    await service.settle_index()


async def test_later_syncs_of_one_item_win_within_a_shared_entry(tmp_path: Path) -> None:
    service = await fresh_service(tmp_path)
    creds = await service.create(SESSION, origin="http://x")
    await service.sync(creds.id, creds.secret, [message(1)])
    # Updates of one part, arriving in order: the last one is what the share holds, as it
    # would be after one entry per sync.
    results = await asyncio.gather(*(service.sync(creds.id, creds.secret, [part(n, f"text {n}")]) for n in range(1, 11)))
    assert results == list(range(2, 12))
    state = await service.load(creds.id)
    stored = state.parts["prt_0001"]
    assert (stored["text"], stored["time"]) == ("text 10", {"start": 10})
    await service.settle_index()


async def test_a_batch_over_the_share_limit_is_retried_one_sync_at_a_time(tmp_path: Path) -> None:
    service = await fresh_service(tmp_path, limits={"max_share_bytes": 1024 * 1024})
    creds = await service.create(SESSION, origin="http://x")
    big = "x" * 100_000
    results = await asyncio.gather(*(service.sync(creds.id, creds.secret, [message(n, note=big)]) for n in range(1, 21)),
                                   return_exceptions=True)
    accepted = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if not isinstance(r, int)]
    # Together too large; alone, every sync that still fits is accepted, the rest are refused.
    assert len(accepted) >= 5 and refused and all(isinstance(r, PayloadTooLarge) for r in refused)
    assert accepted == list(range(1, len(accepted) + 1))
    assert results[: len(accepted)] == accepted  # in order of arrival: the first ones fit
    state = await service.load(creds.id)
    assert state.meta.sync_count == len(accepted) and len(state.messages) == len(accepted)
    await service.settle_index()


async def test_a_batch_never_holds_more_items_than_one_sync_may(tmp_path: Path) -> None:
    service = await fresh_service(tmp_path, limits={"max_items_per_sync": 3})
    creds = await service.create(SESSION, origin="http://x")
    results = await asyncio.gather(*(service.sync(creds.id, creds.secret, [message(2 * n), message(2 * n + 1)]) for n in range(1, 7)))
    assert results == list(range(1, 7))
    state = await service.load(creds.id)
    # Two items each, at most three in an entry: one sync per entry.
    assert state.meta.seq == 6 and len(state.messages) == 12
    await service.settle_index()


async def test_a_sync_committed_in_a_batch_is_answered_and_announced_though_the_lock_is_busy_after(tmp_path: Path) -> None:
    """A sync the leader committed is answered from the leader, not by taking the share's lock
    again: a writer holding the lock past a store deadline right after does not turn it into a
    503, and its live notification is sent."""
    service = await fresh_service(tmp_path, store_timeout_seconds=0.3)
    creds = await service.create(SESSION, origin="http://x")
    await service.sync(creds.id, creds.secret, [message(1)])
    announced: list[int] = []
    real_notify = service.notify_sync

    async def notify(state: Any, items: Any, sync_count: int) -> None:
        announced.append(sync_count)
        await real_notify(state, items, sync_count)

    service.notify_sync = notify  # type: ignore[method-assign]
    lock = service._exclusive(creds.id)
    holder_ready = asyncio.Event()

    async def hold_after() -> None:
        while not lock.locked():  # the leader holds it: queue right behind the leader
            await asyncio.sleep(0)
        async with lock:
            holder_ready.set()
            await asyncio.sleep(1.0)  # over three deadlines, with no progress

    holder = asyncio.create_task(hold_after())
    counts = await asyncio.gather(*(service.sync(creds.id, creds.secret, [message(n)]) for n in range(2, 6)))
    assert counts == [2, 3, 4, 5] and sorted(announced) == [2, 3, 4, 5]
    await holder
    assert holder_ready.is_set()
    await service.close()


async def test_a_caller_that_goes_away_leaves_the_others_their_real_answers(tmp_path: Path) -> None:
    service = await fresh_service(tmp_path)
    creds = await service.create(SESSION, origin="http://x")
    lock = service._exclusive(creds.id)
    await lock.acquire()  # the leader waits for it: every sync stays queued
    calls = [asyncio.create_task(service.sync(creds.id, creds.secret, [message(n)])) for n in range(1, 6)]
    while len(service._queued_syncs.get(creds.id, [])) < 5:
        await asyncio.sleep(0)
    calls[0].cancel()  # queued, not yet taken: never applied
    await asyncio.sleep(0)
    lock.release()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [1, 2, 3, 4]
    view = await ShareService(service.store, service.settings).public_share(creds.id)
    assert [m["id"] for m in view.messages] == [f"msg_{n:04d}" for n in range(2, 6)] and view.sync_count == 4
    await service.close()


async def test_a_waiter_keeps_its_place_in_the_lock_queue_across_deadlines(tmp_path: Path) -> None:
    """Holders keep finishing, each within a deadline: a writer queued behind them is served in
    its turn, not sent to the back of the queue each time its deadline passes."""
    service = await fresh_service(tmp_path, store_timeout_seconds=0.1)
    lock = service._exclusive("share")
    served: list[str] = []

    async def writer(name: str, hold: float) -> None:
        async with lock:
            served.append(name)
            await asyncio.sleep(hold)

    first = asyncio.create_task(writer("first", 0.06))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(writer(f"w{n}", 0.06)) for n in range(1, 4)]
    await asyncio.sleep(0)
    late = [asyncio.create_task(writer(f"late{n}", 0.06)) for n in range(1, 4)]
    await asyncio.gather(first, *tasks, *late)
    assert served == ["first", "w1", "w2", "w3", "late1", "late2", "late3"]
    await service.close()


async def test_a_stream_of_syncs_does_not_keep_other_writers_of_the_share_waiting(tmp_path: Path) -> None:
    """The leader takes the share's lock for one batch at a time: a writer that queued for it
    meanwhile (here a delete) gets its turn between batches, not after the stream ends. Syncs
    arrive on their own clock (every 5 ms), so some always wait while a batch is written (20 ms)."""

    class SlowJournal(WrappedStore):
        async def put_if_absent(self, key: str, body: bytes) -> str:
            await asyncio.sleep(0.02)
            return await self.inner.put_if_absent(key, body)

    settings = settings_for_tests(tmp_path / "data")
    service = ShareService(SlowJournal(FilesystemStore(tmp_path / "store")), settings)
    creds = await service.create(SESSION, origin="http://x")
    deleted = asyncio.Event()
    calls: list[asyncio.Task[int]] = []

    async def producer() -> None:
        n = 0
        while not deleted.is_set():
            n += 1
            calls.append(asyncio.create_task(service.sync(creds.id, creds.secret, [message(n)])))
            await asyncio.sleep(0.005)

    feeding = asyncio.create_task(producer())
    await asyncio.sleep(0.1)  # a stream under way
    try:
        await asyncio.wait_for(service.delete(creds.id, creds.secret), timeout=5)
    finally:
        deleted.set()
        await feeding
        await asyncio.gather(*calls, return_exceptions=True)
    assert len(calls) < 200  # the delete did not wait out the stream (it would run until the timeout)
    await service.close()
