"""No lost updates: concurrent syncs to one share from three server processes on one store.

Each sync adds a distinct message; afterwards every process must report every message and a
syncCount equal to the number of accepted syncs. Runs on the filesystem store (one directory
shared by the processes) and on S3 (one moto server, with its write lock so that its conditional
check is atomic; see ../shared/specs/s3-notes.md §2.3)."""

from __future__ import annotations

import asyncio
import random

import aiohttp
from factories import settings_for_tests

from cloudsession.shares.service import ShareService
from cloudsession.store.base import read_json_object
from cloudsession.store.fs import FilesystemStore

SYNCS = 90
CONCURRENCY = 24


async def hammer(urls: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(urls[0] + "/api/share", json={"sessionID": "ses_concurrency000000000001"}) as resp:
            share = await resp.json()
        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> int:
            async with semaphore:
                body = {"secret": share["secret"], "data": [{"type": "message", "data": {"id": f"msg_{i:04d}", "role": "user"}}]}
                async with http.post(f"{urls[i % len(urls)]}/api/share/{share['id']}/sync", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    return (await resp.json())["syncCount"]

        counts = await asyncio.gather(*(one(i) for i in range(SYNCS)))
        # Every accepted sync got its own count: none was applied on top of a stale state.
        assert sorted(counts) == list(range(1, SYNCS + 1))
        for url in urls:
            async with http.get(f"{url}/api/share/{share['id']}") as resp:
                data = await resp.json()
            assert data["metadata"]["syncCount"] == SYNCS
            assert sorted(m["id"] for m in data["messages"]) == [f"msg_{i:04d}" for i in range(SYNCS)]


async def test_three_processes_on_one_store(replica_urls):
    await hammer(replica_urls)



class JitteryStore(FilesystemStore):
    """A real filesystem store whose index writes take a random few milliseconds, as requests to
    S3 do, so that writes started in one order can finish in another."""

    async def put(self, key: str, body: bytes) -> str:
        if key.startswith("index/"):
            await asyncio.sleep(random.uniform(0, 0.03))
        return await super().put(key, body)


async def test_the_index_ends_at_the_last_sync_within_one_process(tmp_path):
    """Concurrent syncs through one process: the listing entry must end at the final count."""
    store = JitteryStore(tmp_path / "store")
    service = ShareService(store, settings_for_tests(tmp_path))
    creds = await service.create("ses_indexorder000000000001", origin="http://x")

    async def one(i: int) -> None:
        await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": f"msg_{i:03d}", "role": "user"}}])

    await asyncio.gather(*(one(i) for i in range(40)))
    await service.settle_index()  # written after the syncs answered, the newest last
    index = await read_json_object(store, f"index/{creds.id}")
    assert index is not None and index["syncCount"] == 40 and index["messageCount"] == 40
