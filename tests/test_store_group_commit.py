"""The filesystem store's writer thread: writes submitted together are written as one batch
(group commit), each answered only once its file is fsync'd and in place, each failing alone;
closing the store answers every write submitted before it; and through the server a failed
write is still a 503 with Retry-After that leaves the share as it was."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import factories as f
import pytest
from factories import settings_for_tests

from cloudsession.errors import StoreUnavailable
from cloudsession.shares.service import GuardedStore
from cloudsession.store.base import PreconditionFailed
from cloudsession.store.fs import FilesystemStore
from cloudsession.web.app import create_app
from cloudsession.web.keys import SERVICE

SESSION_A = "ses_groupcommit000000000000001"
SESSION_B = "ses_groupcommit000000000000002"


def temp_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "tmp"))


async def test_concurrent_writes_are_batched_and_each_is_durable_and_visible(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    await store.put("index/changing", b"first")
    first = await store.head("index/changing")
    assert first is not None
    calls = [store.put_if_absent(f"journal/a/0/{n:012d}", f"entry {n}".encode()) for n in range(48)]
    calls += [store.put(f"share/p{n}", f"plain {n}".encode()) for n in range(16)]
    calls += [store.put_if_match("index/changing", b"second", first), store.delete("share/never-written")]
    results = await asyncio.gather(*calls)
    # Submitted in one go: the writer took them in fewer batches than writes (group commit).
    assert store._writer.jobs >= len(calls) and store._writer.batches < store._writer.jobs
    # Every write answered with its own ETag, and each is what a fresh store on the directory reads.
    fresh = FilesystemStore(tmp_path / "s")
    for n in range(48):
        got = await fresh.get(f"journal/a/0/{n:012d}")
        assert got is not None and got.body == f"entry {n}".encode() and got.etag == results[n]
    for n in range(16):
        got = await fresh.get(f"share/p{n}")
        assert got is not None and got.body == f"plain {n}".encode() and got.etag == results[48 + n]
    changed = await fresh.get("index/changing")
    assert changed is not None and changed.body == b"second" and changed.etag == results[64]
    assert len(set(results[:65])) == 65
    assert temp_files(tmp_path / "s") == []
    await store.close()


async def test_a_write_that_fails_fails_alone_and_leaves_nothing_behind(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    await store.put("journal/taken/0/000000000001", b"already there")
    # A regular file where a directory of keys must go: writes under it fail in the file system.
    (tmp_path / "s" / "objects" / "journal" / "blocked").write_bytes(b"")
    calls = [store.put_if_absent(f"journal/ok/0/{n:012d}", b"fine") for n in range(10)]
    calls.insert(3, store.put_if_absent("journal/blocked/0/000000000001", b"cannot be written"))
    calls.insert(7, store.put_if_absent("journal/taken/0/000000000001", b"a rival"))
    calls.insert(9, store.put_if_match("share/stale", b"x", "0" * 32))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], OSError) and not isinstance(results[3], PreconditionFailed)
    assert isinstance(results[7], PreconditionFailed) and isinstance(results[9], PreconditionFailed)
    ok = [r for i, r in enumerate(results) if i not in (3, 7, 9)]
    assert len(ok) == 10 and all(isinstance(r, str) for r in ok)
    for n in range(10):
        got = await store.get(f"journal/ok/0/{n:012d}")
        assert got is not None and got.body == b"fine"
    taken = await store.get("journal/taken/0/000000000001")
    assert taken is not None and taken.body == b"already there"
    assert await store.get("share/stale") is None
    assert temp_files(tmp_path / "s") == []
    # Through the share domain's guard, the failed write is the 503 error, nothing else.
    guarded = GuardedStore(store, timeout=10)
    with pytest.raises(StoreUnavailable):
        await guarded.put_if_absent("journal/blocked/0/000000000002", b"still blocked")
    await store.close()


async def test_close_answers_every_write_submitted_before_it(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    writes = [asyncio.ensure_future(store.put_if_absent(f"journal/c/0/{n:012d}", b"pending")) for n in range(40)]
    await asyncio.sleep(0)  # submitted, not yet answered
    await store.close()
    # On disk once close() returns, before any of the writers has looked at its answer.
    for n in range(40):
        assert (tmp_path / "s" / "objects" / "journal" / "c" / "0" / f"{n:012d}.obj").exists()
    assert all(isinstance(etag, str) for etag in await asyncio.gather(*writes))
    # The store keeps working after close (the writer thread starts again).
    await store.put("share/after", b"later")
    assert (await store.get("share/after")) is not None


async def test_a_caller_that_gives_up_does_not_disturb_the_rest_of_its_batch(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "s")
    abandoned = asyncio.ensure_future(store.put_if_absent("journal/g/0/000000000001", b"abandoned"))
    kept = [asyncio.ensure_future(store.put_if_absent(f"journal/g/0/{n:012d}", b"kept")) for n in range(2, 12)]
    await asyncio.sleep(0)
    abandoned.cancel()
    assert all(isinstance(etag, str) for etag in await asyncio.gather(*kept))
    await store.close()
    # A write already handed to the thread still lands (as a timed-out write may: the journal
    # folds it like any other); the cancelled caller is simply not answered.
    assert abandoned.cancelled()
    assert (await store.get("journal/g/0/000000000001")) is not None


async def test_a_failed_journal_write_is_a_503_that_fails_only_its_own_sync(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings_for_tests(tmp_path / "data"))
    client = await aiohttp_client(app)
    a = await (await client.post("/api/share", json={"sessionID": SESSION_A})).json()
    b = await (await client.post("/api/share", json={"sessionID": SESSION_B})).json()
    objects = tmp_path / "data" / "store" / "objects"
    assert (objects / "share" / f"{a['id']}.obj").exists()
    before = (objects / "share" / f"{a['id']}.obj").read_bytes()
    blocker = objects / "journal" / a["id"]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")  # share A's journal directory cannot be made

    def sync(share: dict[str, str], session: str, n: int):  # type: ignore[no-untyped-def]
        body = {"secret": share["secret"], "data": [f.item("message", {"id": f"msg_{n:04d}", "sessionID": session, "role": "user"})]}
        return client.post(f"/api/share/{share['id']}/sync", json=body)

    resp_a, resp_b = await asyncio.gather(sync(a, SESSION_A, 1), sync(b, SESSION_B, 1))
    assert resp_a.status == 503 and resp_a.headers["Retry-After"] == "1"
    assert (await resp_a.json()) == {"error": "Storage unavailable"}
    assert resp_b.status == 200
    assert (objects / "share" / f"{a['id']}.obj").read_bytes() == before
    assert temp_files(tmp_path / "data" / "store") == []
    # Once the disk is fixed, share A takes the sync, and the one that failed was never applied.
    blocker.unlink()
    resp = await sync(a, SESSION_A, 2)
    assert resp.status == 200
    data = await (await client.get(f"/api/share/{a['id']}/data")).json()
    assert [x["data"]["id"] for x in data if x["type"] == "message"] == ["msg_0002"]
    await app[SERVICE].settle_index()


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """Wraps os.fsync and the syncfs call of the filesystem store module: (fsync'd paths,
    syncfs'd paths), in call order, each still doing the real call."""
    import cloudsession.store.fs as fs

    fsynced: list[str] = []
    syncfsed: list[str] = []
    real_fsync, real_syncfs = os.fsync, fs._syncfs_call

    def fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def syncfs(fd: int) -> None:
        syncfsed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_syncfs(fd)

    monkeypatch.setattr(fs.os, "fsync", fsync)
    monkeypatch.setattr(fs, "_syncfs_call", syncfs)
    return fsynced, syncfsed


async def test_new_names_are_fsynced_in_their_directories_before_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file's fsync does not make its new name durable: without syncfs, the writer fsyncs
    each directory that gained (or lost) an entry, and the parents of directories it made, once
    per batch, before answering."""
    import cloudsession.store.fs as fs

    monkeypatch.setattr(fs, "_syncfs", None)
    fsynced, syncfsed = _record_syncs(monkeypatch)
    store = FilesystemStore(tmp_path / "store")
    objects = str(tmp_path / "store" / "objects")
    await asyncio.gather(store.put_if_absent("share/a/journal/1", b"x"), store.put("share/b", b"y"))
    directories = {path for path in fsynced if os.path.isdir(path)}
    # The entries' directories, and every directory made on the way (share/, share/a/, ...).
    assert {objects, f"{objects}/share", f"{objects}/share/a", f"{objects}/share/a/journal"} <= directories, fsynced
    # Each written file was fsync'd (under its temporary name, in tmp/) before the directories.
    assert all(path.startswith(str(tmp_path / "store" / "tmp")) for path in fsynced if not os.path.isdir(path))
    fsynced.clear()
    await store.delete_many(["share/b", "share/a/journal/1"])
    assert {f"{objects}/share", f"{objects}/share/a/journal"} <= set(fsynced), fsynced
    assert await store.get("share/b") is None and await store.get("share/a/journal/1") is None
    assert syncfsed == []
    await store.close()


async def test_a_batch_that_changed_several_directories_syncs_the_file_system_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudsession.store.fs as fs

    if fs._syncfs is None:
        pytest.fail("syncfs(2) is missing: the store syncs directories one by one here")
    fsynced, syncfsed = _record_syncs(monkeypatch)
    store = FilesystemStore(tmp_path / "store")
    await store.put("warm/up", b"w")  # the writer thread is running: the next puts make one batch
    fsynced.clear()
    syncfsed.clear()
    writes = [store.put_if_absent(f"share/{n}/journal/1", b"x") for n in range(8)]
    await asyncio.gather(*writes)
    assert syncfsed and len(syncfsed) <= len(writes) // 2, syncfsed  # one per batch, not per write
    assert set(syncfsed) == {str(tmp_path / "store" / "objects")}
    assert not any(os.path.isdir(path) for path in fsynced), fsynced  # no directory one by one
    await store.close()
