"""``kill -9`` of a real ``cloudsession serve`` during syncs and compactions: after a restart every
acknowledged sync is there, counted once, and the share is consistent (a fresh process agrees,
fsck finds nothing to repair). On the filesystem store and on S3 (moto)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import MOTO_REGION
from factories import settings_for_tests
from servers import ServerProcess

from cloudsession.shares import maintenance
from cloudsession.shares.service import ShareService
from cloudsession.store.base import ObjectStore
from cloudsession.store.fs import FilesystemStore
from cloudsession.store.s3 import S3Store

CYCLES = 3
WRITERS = 6
COMPACT_EVERY = 4
# Bulky items make each compaction (encode, write, fsync a snapshot of a few MB) slow enough
# that a kill right after the sync that triggers one lands in the middle of it.
PADDING = "x" * 40_000


def item(n: int) -> dict[str, Any]:
    return {"type": "message", "data": {"id": f"msg_{n:05d}", "role": "user", "padding": PADDING}}


@pytest.fixture(params=["fs", "s3"])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "fs":
        return {}
    endpoint, bucket = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("s3_bucket")
    return {"CLOUDSESSION_STORE": f"s3://{bucket}/shares", "AWS_ENDPOINT_URL": endpoint, "bucket": bucket, "endpoint": endpoint}


async def open_store(tmp_path: Path, backend: dict[str, str]) -> ObjectStore:
    if not backend:
        return FilesystemStore(tmp_path / "data" / "store")
    return await S3Store.open(bucket=backend["bucket"], prefix="shares/", endpoint_url=backend["endpoint"], region=MOTO_REGION)


class Writers:
    """Concurrent syncs against one server until it is killed; remembers what was sent and
    what was acknowledged, and signals once a sync that starts a compaction was answered."""

    def __init__(self, http: aiohttp.ClientSession, share: dict[str, str], counter: Iterator[int]) -> None:
        self.http, self.share, self.counter = http, share, counter
        self.attempted: set[str] = set()
        self.acknowledged: set[str] = set()

    async def run(self, url: str, wanted: int, killed: asyncio.Event, trigger: asyncio.Event) -> None:
        acks = 0

        async def one_writer() -> None:
            nonlocal acks
            while not killed.is_set():
                n = next(self.counter)
                self.attempted.add(f"msg_{n:05d}")
                body = {"secret": self.share["secret"], "data": [item(n)]}
                try:
                    async with self.http.post(f"{url}/api/share/{self.share['id']}/sync", json=body) as resp:
                        assert resp.status == 200, await resp.text()
                        answer = await resp.json()
                except (TimeoutError, aiohttp.ClientConnectionError):
                    assert killed.is_set()  # only the kill may cut a request short
                    return
                self.acknowledged.add(f"msg_{n:05d}")
                acks += 1
                # This sync filled the journal tail: a compaction starts now.
                if acks >= wanted and answer["syncCount"] % COMPACT_EVERY == 0:
                    trigger.set()

        await asyncio.gather(*(one_writer() for _ in range(WRITERS)))


async def test_kill_9_during_syncs_and_compactions_loses_nothing_acknowledged(tmp_path: Path, backend: dict[str, str]) -> None:
    env = {k: v for k, v in backend.items() if k.isupper()} | {"CLOUDSESSION_COMPACT_MAX_ENTRIES": str(COMPACT_EVERY)}
    rng = random.Random(3)
    counter = iter(range(100_000))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        server = ServerProcess(tmp_path / "data", env)
        await asyncio.to_thread(server.start)
        async with http.post(server.url + "/api/share", json={"sessionID": "ses_crashtest00000000000001"}) as resp:
            share = await resp.json()
        writers = Writers(http, share, counter)
        for cycle in range(CYCLES):
            killed, trigger = asyncio.Event(), asyncio.Event()
            running = asyncio.create_task(writers.run(server.url, rng.randint(6, 14), killed, trigger))
            await asyncio.wait_for(trigger.wait(), 60)
            assert server.proc is not None
            server.proc.kill()  # SIGKILL: no shutdown, no flush, mid-write
            killed.set()
            await asyncio.to_thread(server.proc.wait)
            await running
            server = ServerProcess(tmp_path / "data", env)
            if cycle < CYCLES - 1:
                await asyncio.to_thread(server.start)

        # What the kills left in the store's temp dir, aged past the stale limit: the restart
        # removes it.
        tmp = tmp_path / "data" / "store" / "tmp"
        leftovers = list(tmp.iterdir()) if tmp.exists() else []
        an_hour_ago = time.time() - 3600
        for path in leftovers:
            os.utime(path, (an_hour_ago, an_hour_ago))

        # After the last crash: a fresh process serves every acknowledged sync, counted once,
        # and the share takes new syncs (which also bring the derived index up to date).
        await asyncio.to_thread(server.start)
        try:
            async with http.get(f"{server.url}/api/share/{share['id']}") as resp:
                assert resp.status == 200
                doc = await resp.json()
            last = {"secret": share["secret"], "data": [item(99_999)]}
            async with http.post(f"{server.url}/api/share/{share['id']}/sync", json=last) as resp:
                assert resp.status == 200
                after = (await resp.json())["syncCount"]
        finally:
            await asyncio.to_thread(server.stop)

    assert not any(path.exists() for path in leftovers)
    acknowledged, attempted = writers.acknowledged, writers.attempted
    present = {m["id"] for m in doc["messages"]}
    print(
        f"kill -9: {CYCLES} cycles, each right after a sync that started a compaction; "
        f"{len(acknowledged)} syncs acknowledged, {len(attempted - acknowledged)} in flight at the kills, "
        f"{len(acknowledged - present)} acknowledged lost, syncCount {doc['metadata']['syncCount']}, "
        f"{len(leftovers)} temporary files left by interrupted writes"
    )
    assert acknowledged <= present
    assert present <= attempted
    # Each stored sync counted once: syncCount is the number of syncs that landed.
    assert doc["metadata"]["syncCount"] == len(present)
    assert after == len(present) + 1

    store = await open_store(tmp_path, backend)
    try:
        service = ShareService(store, settings_for_tests(tmp_path / "check"))
        state = await service.load(share["id"])
        assert state.meta.sync_count == state.meta.cursor == len(present) + 1
        report = await maintenance.fsck(service, maintenance.FsckOptions(), start=lambda total: lambda n: None)
        assert report.findings == [], [x.line() for x in report.findings]
    finally:
        await store.close()
