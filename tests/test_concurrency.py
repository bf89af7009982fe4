"""No lost updates: concurrent syncs to one share from three server processes on one store.

Each sync adds a distinct message; afterwards every process must report every message and a
syncCount equal to the number of accepted syncs. Runs on the filesystem store (one directory
shared by the processes) and on S3 (one moto server, with its write lock so that its conditional
check is atomic; see ../shared/specs/s3-notes.md §2.3)."""

from __future__ import annotations

import asyncio

import aiohttp

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
