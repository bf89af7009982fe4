"""The object-store contract, checked against every backend (filesystem on disk, S3 on moto).

Every test takes the ``store`` fixture, which is parametrised over the backends, so a backend
passes only when it gives the share service exactly the same meaning for reads, conditional
writes, deletes and listings. The one documented difference (whether rewriting identical bytes
changes the ETag) is asserted per backend, so that a change in either direction is noticed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cloudsession.store.base import MAX_DELETE_BATCH, ObjectStore, PreconditionFailed, StoreError, iter_keys
from cloudsession.store.fs import FilesystemStore
from cloudsession.store.s3 import S3Store

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def backend(store: ObjectStore) -> str:
    return "s3" if isinstance(store, S3Store) else "fs"


async def gather_limited(calls: list[Callable[[], Awaitable[object]]], limit: int = 32) -> list[object]:
    """Run many store calls concurrently, at most ``limit`` at a time (the S3 pool size)."""
    gate = asyncio.Semaphore(limit)

    async def run(call: Callable[[], Awaitable[object]]) -> object:
        async with gate:
            return await call()

    return await asyncio.gather(*(run(call) for call in calls))


async def fill(store: ObjectStore, keys: list[str]) -> None:
    await gather_limited([lambda key=key: store.put(key, key.encode()) for key in keys])


# -- reads and plain writes ----------------------------------------------------------------------


async def test_missing_key_reads_as_none(store: ObjectStore) -> None:
    assert await store.get("share/missing") is None
    assert await store.head("share/missing") is None


async def test_put_then_get_round_trips_body_and_etag(store: ObjectStore) -> None:
    etag = await store.put("share/abc", b'{"x": 1}')
    assert etag and '"' not in etag
    got = await store.get("share/abc")
    assert got is not None
    assert got.body == b'{"x": 1}'
    assert got.etag == etag
    assert await store.head("share/abc") == etag


async def test_rewrite_with_different_content_changes_etag(store: ObjectStore) -> None:
    first = await store.put("k", b"one")
    second = await store.put("k", b"two")
    assert first != second
    assert await store.head("k") == second


async def test_rewrite_with_identical_content_etag_per_backend(store: ObjectStore) -> None:
    # S3 (AWS, MinIO, moto) uses the MD5 of a single-part body as its ETag, so identical bytes
    # give the identical ETag; the filesystem store mints a new ETag on every write. The service
    # must therefore never read "same ETag" as "nobody wrote in between", only as "same bytes".
    body = b"same bytes"
    first = await store.put("k", body)
    second = await store.put("k", body)
    if backend(store) == "s3":
        assert first == second == hashlib.md5(body).hexdigest()
    else:
        assert first != second


@pytest.mark.parametrize(
    "body",
    [b"", bytes(range(256)), b"\x00" * 1000, random.Random(7).randbytes(1 << 20)],
    ids=["empty", "all-bytes", "nul", "1MiB-random"],
)
async def test_binary_bodies_round_trip_exactly(store: ObjectStore, body: bytes) -> None:
    etag = await store.put("blob/bin", body)
    got = await store.get("blob/bin")
    assert got is not None and got.body == body and got.etag == etag


async def test_nested_keys_coexist_with_their_parents(store: ObjectStore) -> None:
    for key in ("a", "a/b", "a/b/c", "a/b/c/d.json"):
        await store.put(key, key.encode())
    for key in ("a", "a/b", "a/b/c", "a/b/c/d.json"):
        got = await store.get(key)
        assert got is not None and got.body == key.encode()
    await store.delete("a/b")
    assert await store.get("a/b") is None
    assert (await store.get("a/b/c")) is not None
    assert (await store.list_page("a")).keys == ["a", "a/b/c", "a/b/c/d.json"]


@pytest.mark.parametrize("key", ["", "/lead", "trail/", "a//b", "../up", "a/../b", "a/./b", "ctl\x01", "lone\ud83d", "x" * 1025])
async def test_invalid_keys_are_refused_without_touching_the_store(store: ObjectStore, key: str) -> None:
    with pytest.raises(StoreError):
        await store.put(key, b"x")
    with pytest.raises(StoreError):
        await store.get(key)
    assert (await store.list_page("")).keys == []


ODD_KEYS = ["share/26.11.30", "share/ünïcödé✓", "share/sp ace", "share/a\\b", "share/%41", "share/a?b#c&d", "share/...", "share/😀", "index/ünï/x"]


async def test_every_segment_the_worker_could_write_is_a_key(store: ObjectStore) -> None:
    """The reference Worker's share ids are any 8 characters: they round-trip as keys (escaped
    on disk by the filesystem store), list in UTF-8 byte order like S3, and never alias."""
    for key in ODD_KEYS:
        await store.put(key, key.encode())
    await store.put("share/A", b"plain")
    for key in ODD_KEYS:
        got = await store.get(key)
        assert got is not None and got.body == key.encode() and await store.head(key) == got.etag
    assert (await store.get("share/A")).body == b"plain"  # not the same object as "share/%41"
    listed = [k async for k in iter_keys(store, "", page_size=3)]
    assert listed == sorted([*ODD_KEYS, "share/A"], key=lambda k: k.encode("utf-8"))
    assert (await store.list_page("share/ü")).keys == ["share/ünïcödé✓"]
    assert (await store.list_page("index/ünï/")).keys == ["index/ünï/x"]
    etag = await store.put_if_absent("share/ünï2", b"new")
    await store.put_if_match("share/ünï2", b"newer", etag)
    await store.delete("share/ünïcödé✓")
    assert await store.get("share/ünïcödé✓") is None


async def test_prefixes_isolate_stores_on_one_location(store_opener) -> None:
    root = await store_opener("")
    one = await store_opener("tenant1/")
    two = await store_opener("tenant2/")
    await one.put("share/x", b"one")
    await two.put("share/x", b"two")
    assert (await one.get("share/x")).body == b"one"
    assert (await two.get("share/x")).body == b"two"
    assert (await one.list_page("")).keys == ["share/x"]
    assert (await two.list_page("share/", start_after="share/a")).keys == ["share/x"]
    assert (await root.list_page("")).keys == ["tenant1/share/x", "tenant2/share/x"]
    await one.delete("share/x")
    assert (await two.get("share/x")).body == b"two"


# -- conditional writes --------------------------------------------------------------------------


async def test_put_if_absent_creates_once(store: ObjectStore) -> None:
    etag = await store.put_if_absent("journal/s1/0001", b"first")
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("journal/s1/0001", b"second")
    got = await store.get("journal/s1/0001")
    assert got is not None and got.body == b"first" and got.etag == etag


async def test_put_if_match_with_current_etag_replaces(store: ObjectStore) -> None:
    old = await store.put("share/s", b"v1")
    new = await store.put_if_match("share/s", b"v2", old)
    assert new != old
    got = await store.get("share/s")
    assert got is not None and got.body == b"v2" and got.etag == new


async def test_put_if_match_with_stale_etag_fails_and_keeps_data(store: ObjectStore) -> None:
    stale = await store.put("share/s", b"v1")
    current = await store.put("share/s", b"v2")
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("share/s", b"v3", stale)
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("share/s", b"v3", "")
    got = await store.get("share/s")
    assert got is not None and got.body == b"v2" and got.etag == current


async def test_put_if_match_on_missing_key_fails_without_creating(store: ObjectStore) -> None:
    etag = await store.put("share/s", b"v1")
    await store.delete("share/s")
    with pytest.raises(PreconditionFailed):
        await store.put_if_match("share/s", b"v2", etag)
    assert await store.get("share/s") is None


async def test_put_if_match_accepts_a_quoted_etag(store: ObjectStore) -> None:
    # ETags travel through HTTP headers where they are quoted; a quoted copy must still match
    # on S3. The filesystem store compares exactly, so only S3 is expected to accept it.
    etag = await store.put("share/s", b"v1")
    if backend(store) == "s3":
        await store.put_if_match("share/s", b"v2", f'"{etag}"')
        assert (await store.get("share/s")).body == b"v2"
    else:
        with pytest.raises(PreconditionFailed):
            await store.put_if_match("share/s", b"v2", f'"{etag}"')


async def test_delete_is_idempotent(store: ObjectStore) -> None:
    await store.put("share/d", b"x")
    await store.delete("share/d")
    assert await store.get("share/d") is None
    await store.delete("share/d")
    await store.delete("never/existed")
    assert await store.head("share/d") is None


async def test_delete_if_match_with_current_etag_deletes(store: ObjectStore) -> None:
    etag = await store.put("share/d", b"x")
    await store.delete_if_match("share/d", etag)
    assert await store.get("share/d") is None


async def test_delete_if_match_with_stale_etag_fails_and_keeps_data(store: ObjectStore) -> None:
    stale = await store.put("share/d", b"x1")
    current = await store.put("share/d", b"x2")
    with pytest.raises(PreconditionFailed):
        await store.delete_if_match("share/d", stale)
    with pytest.raises(PreconditionFailed):
        await store.delete_if_match("share/d", "")
    assert await store.head("share/d") == current


async def test_delete_if_match_on_missing_key_fails(store: ObjectStore) -> None:
    etag = await store.put("share/d", b"x")
    await store.delete("share/d")
    with pytest.raises(PreconditionFailed):
        await store.delete_if_match("share/d", etag)
    assert await store.get("share/d") is None


async def test_delete_many_deletes_what_is_there_and_ignores_the_rest(store: ObjectStore) -> None:
    keys = [f"share/j/{n:04d}" for n in range(MAX_DELETE_BATCH)]
    await asyncio.gather(*(store.put(key, b"x") for key in keys[::2]))  # half of them exist
    await store.put("share/kept", b"k")
    await store.delete_many(keys)
    assert [k async for k in iter_keys(store, "share/")] == ["share/kept"]
    await store.delete_many([])
    with pytest.raises(ValueError):
        await store.delete_many([*keys, "share/kept"])  # over the batch limit: refused, nothing deleted
    assert await store.get("share/kept") is not None


# -- listing -------------------------------------------------------------------------------------


async def test_list_is_ordered_and_filtered_by_prefix(store: ObjectStore) -> None:
    keys = ["journal/b/0002", "journal/a/0001", "journal/b/0001", "journal/a/0010", "journalx", "share/a", "index/a"]
    await fill(store, random.Random(1).sample(keys, len(keys)))
    assert (await store.list_page("journal/")).keys == ["journal/a/0001", "journal/a/0010", "journal/b/0001", "journal/b/0002"]
    assert (await store.list_page("journal/b/")).keys == ["journal/b/0001", "journal/b/0002"]
    assert (await store.list_page("journal")).keys == [
        "journal/a/0001", "journal/a/0010", "journal/b/0001", "journal/b/0002", "journalx",
    ]
    assert (await store.list_page("journal/a/00")).keys == ["journal/a/0001", "journal/a/0010"]
    assert (await store.list_page("nothing/")).keys == []
    everything = await store.list_page("")
    assert everything.keys == sorted(keys) and everything.next_start_after is None


async def test_list_orders_by_bytes_not_by_path_components(store: ObjectStore) -> None:
    # "-" (0x2d) and "." (0x2e) sort before "/" (0x2f): S3 orders whole keys by their bytes,
    # which is not the order a recursive directory walk would give.
    keys = ["a/b", "a-b", "a.b", "a/a", "a_b", "A", "a0"]
    await fill(store, keys)
    assert (await store.list_page("")).keys == sorted(keys)


async def test_list_start_after_is_exclusive_and_need_not_exist(store: ObjectStore) -> None:
    keys = [f"journal/s/{n:04d}" for n in range(1, 8)]
    await fill(store, keys)
    page = await store.list_page("journal/s/", start_after="journal/s/0003")
    assert page.keys == keys[3:]
    page = await store.list_page("journal/s/", start_after="journal/s/00035")
    assert page.keys == keys[3:]
    page = await store.list_page("journal/s/", start_after="journal/s/0007")
    assert page.keys == [] and page.next_start_after is None


async def test_list_limit_and_pagination(store: ObjectStore) -> None:
    keys = [f"p/{n:03d}" for n in range(25)]
    await fill(store, keys)
    await store.put("q/outside", b"-")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list_page("p/", start_after=cursor, limit=7)
        assert len(page.keys) <= 7
        seen += page.keys
        pages += 1
        if page.next_start_after is None:
            break
        assert page.next_start_after == page.keys[-1]
        cursor = page.next_start_after
    assert seen == keys and pages == 4
    exact = await store.list_page("p/", limit=25)
    assert exact.keys == keys and exact.next_start_after is None
    assert [k async for k in iter_keys(store, "p/", page_size=4)] == keys
    assert [k async for k in iter_keys(store, "p/", start_after="p/020", page_size=2)] == keys[21:]


async def test_listing_more_than_1000_keys(store: ObjectStore) -> None:
    # 1000 is S3's hard page size; this crosses it with real keys on every backend.
    keys = [f"big/{n:05d}" for n in range(1005)]
    await fill(store, random.Random(2).sample(keys, len(keys)))
    first = await store.list_page("big/")
    assert first.keys == keys[:1000] and first.next_start_after == keys[999]
    second = await store.list_page("big/", start_after=first.next_start_after)
    assert second.keys == keys[1000:] and second.next_start_after is None
    assert [k async for k in iter_keys(store, "big/")] == keys


# -- concurrency ---------------------------------------------------------------------------------


async def increment(store: ObjectStore, key: str) -> int:
    """Read-modify-write +1 with compare-and-swap; returns how many attempts lost the race."""
    lost = 0
    while True:
        current = await store.get(key)
        assert current is not None
        try:
            await store.put_if_match(key, str(int(current.body) + 1).encode(), current.etag)
            return lost
        except PreconditionFailed:
            lost += 1


async def test_concurrent_read_modify_write_loses_no_update(store: ObjectStore) -> None:
    await store.put("counter", b"0")
    lost = await asyncio.gather(*(increment(store, "counter") for _ in range(20)))
    got = await store.get("counter")
    assert got is not None and got.body == b"20"
    # The writers really did collide, otherwise this test would prove nothing.
    assert sum(lost) > 0


async def test_concurrent_create_has_exactly_one_winner(store: ObjectStore) -> None:
    async def create(n: int) -> int | None:
        try:
            await store.put_if_absent("journal/race/0001", f"writer-{n}".encode())
            return n
        except PreconditionFailed:
            return None

    results = await asyncio.gather(*(create(n) for n in range(20)))
    winners = [n for n in results if n is not None]
    assert len(winners) == 1
    got = await store.get("journal/race/0001")
    assert got is not None and got.body == f"writer-{winners[0]}".encode()


_INCREMENT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from cloudsession.store.base import PreconditionFailed
from cloudsession.store.fs import FilesystemStore

async def main(root, go, rounds):
    store = FilesystemStore(root)
    while not Path(go).exists():  # start together, so the processes really overlap
        await asyncio.sleep(0.005)
    for _ in range(rounds):
        while True:
            current = await store.get("counter")
            try:
                await store.put_if_match("counter", str(int(current.body) + 1).encode(), current.etag)
                break
            except PreconditionFailed:
                pass

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_filesystem_store_conditional_writes_across_processes(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "shared")
    await store.put("counter", b"0")
    go = tmp_path / "go"
    rounds, processes = 60, 3
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _INCREMENT_SCRIPT, str(tmp_path / "shared"), str(go), str(rounds),
            env=env, stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    go.touch()
    results = await asyncio.gather(*(proc.communicate() for proc in procs))
    assert [proc.returncode for proc in procs] == [0] * processes, [err.decode() for _, err in results]
    got = await store.get("counter")
    assert got is not None and got.body == str(rounds * processes).encode()
