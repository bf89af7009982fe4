#!/usr/bin/env python3
"""Sync cost against session size: median latency and store bytes moved per sync.

For sessions of 0, 1 and 10 MB on the filesystem store and on S3 (a local moto server), this
creates a share, fills it to the target size, compacts it (steady state: everything in the
snapshot), then times N typical syncs (one message update plus one ~2 KB part, as the real client
sends while an agent streams). A counting wrapper around the store records the requests and the
bytes read and written. It also reports the first sync after a restart (cold cache, which reads
the snapshot once) and what the reference Worker would move (the whole blob, read and written).

    .venv/bin/python benchmarks/sync_store.py [--syncs 40] [--backends fs,s3] [--sizes 0,1,10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudsession.config import Settings
from cloudsession.shares.service import ShareService
from cloudsession.store.base import ListPage, ObjectStore, StoredObject
from cloudsession.store.fs import FilesystemStore

# A fixed namespace and public URL: the figures must not depend on the machine's configuration.
BENCH_SETTINGS = {"shared_secret": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "public_url": "http://share.test"}

MiB = 1024 * 1024


class CountingStore:
    """Wraps an ObjectStore and counts requests and payload bytes in each direction."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.bytes_read = 0
        self.bytes_written = 0

    async def get(self, key: str) -> StoredObject | None:
        self.requests += 1
        obj = await self.inner.get(key)
        self.bytes_read += len(obj.body) if obj else 0
        return obj

    async def head(self, key: str) -> str | None:
        self.requests += 1
        return await self.inner.head(key)

    async def _write(self, method: str, key: str, body: bytes, *args: Any) -> str:
        self.requests += 1
        self.bytes_written += len(body)
        result: str = await getattr(self.inner, method)(key, body, *args)
        return result

    async def put(self, key: str, body: bytes) -> str:
        return await self._write("put", key, body)

    async def put_if_absent(self, key: str, body: bytes) -> str:
        return await self._write("put_if_absent", key, body)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await self._write("put_if_match", key, body, etag)

    async def delete(self, key: str) -> None:
        self.requests += 1
        await self.inner.delete(key)

    async def delete_if_match(self, key: str, etag: str) -> None:
        self.requests += 1
        await self.inner.delete_if_match(key, etag)

    async def delete_many(self, keys: list[str]) -> None:
        self.requests += 1
        await self.inner.delete_many(keys)

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        self.requests += 1
        page = await self.inner.list_page(prefix, start_after=start_after, limit=limit)
        self.bytes_read += sum(len(k) for k in page.keys)
        return page

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return await self.inner.remove_stale_temp(older_than_seconds=older_than_seconds, dry_run=dry_run)

    async def close(self) -> None:
        await self.inner.close()


def filler(session_id: str, megabytes: int) -> list[list[dict[str, Any]]]:
    """Batches of messages with ~5 KB text parts adding up to ``megabytes``."""
    batches: list[list[dict[str, Any]]] = []
    count = megabytes * MiB // 5200
    text = "lorem ipsum dolor sit amet " * 190
    batch: list[dict[str, Any]] = []
    for i in range(count):
        mid = f"msg_{i:08d}fill"
        batch.append({"type": "message", "data": {"id": mid, "sessionID": session_id, "role": "assistant", "time": {"created": i}}})
        batch.append({"type": "part", "data": {"id": f"prt_{i:08d}fill", "sessionID": session_id, "messageID": mid, "type": "text", "text": text}})
        if len(batch) >= 400:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


def typical_batch(session_id: str, n: int) -> list[dict[str, Any]]:
    mid = "msg_zzzz_streaming"
    return [
        {"type": "message", "data": {"id": mid, "sessionID": session_id, "role": "assistant", "time": {"created": n}}},
        {"type": "part", "data": {"id": f"prt_zz{n % 4}", "sessionID": session_id, "messageID": mid, "type": "text", "text": "x" * 2000}},
    ]


async def measure(store_factory: Any, megabytes: int, syncs: int, settings: Settings) -> dict[str, float]:
    raw = await store_factory()
    counting = CountingStore(raw)
    service = ShareService(counting, settings)
    session_id = f"ses_bench{megabytes:04d}{time.time_ns() % 10**12:012d}"
    creds = await service.create(session_id, origin="http://bench")
    for batch in filler(session_id, megabytes):
        await service.sync(creds.id, creds.secret, batch)
    await service.compact(creds.id, force=True)
    await service.close()

    # Cold: a fresh service (as after a restart or on another replica) reads the snapshot once.
    cold_service = ShareService(counting, settings)
    counting.reset()
    t0 = time.perf_counter()
    await cold_service.sync(creds.id, creds.secret, typical_batch(session_id, 0))
    cold = {"ms": (time.perf_counter() - t0) * 1000, "read": counting.bytes_read, "written": counting.bytes_written}

    latencies, reads, writes, requests = [], [], [], []
    for n in range(1, syncs + 1):
        counting.reset()
        t0 = time.perf_counter()
        await cold_service.sync(creds.id, creds.secret, typical_batch(session_id, n))
        latencies.append((time.perf_counter() - t0) * 1000)
        reads.append(counting.bytes_read)
        writes.append(counting.bytes_written)
        requests.append(counting.requests)
    await cold_service.close()
    state = await cold_service.load(creds.id)
    await counting.close()
    return {
        "session_bytes": state.approx_bytes,
        "median_ms": statistics.median(latencies),
        "p90_ms": sorted(latencies)[int(len(latencies) * 0.9) - 1],
        "read": statistics.median(reads),
        "written": statistics.median(writes),
        "requests": statistics.median(requests),
        "cold_ms": cold["ms"],
        "cold_read": cold["read"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--syncs", type=int, default=40)
    parser.add_argument("--backends", default="fs,s3")
    parser.add_argument("--sizes", default="0,1,10")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="cloudsession-bench-"))
    # Never compact during the timed syncs: the benchmark measures the sync path itself.
    settings = Settings.model_validate({**BENCH_SETTINGS, "data_dir": tmp / "data", "compact_max_entries": 10**6, "compact_min_bytes": 10**9})
    factories: dict[str, Any] = {}
    if "fs" in args.backends:
        async def fs_factory() -> Any:
            return FilesystemStore(tmp / "fs")
        factories["fs"] = fs_factory
    if "s3" in args.backends:
        import boto3
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="bench")
        from cloudsession.store.s3 import S3Store

        async def s3_factory() -> Any:
            return await S3Store.open(bucket="bench", endpoint_url=endpoint, region="us-east-1",
                                      access_key_id="bench", secret_access_key="bench")
        factories["s3"] = s3_factory

    print(f"{'backend':8} {'session':>9} {'median':>9} {'p90':>9} {'read/sync':>10} {'written/sync':>12} {'reqs':>5} "
          f"{'cold sync':>10} {'cold read':>10} {'reference r+w':>14}")
    for name, factory in factories.items():
        for size in (int(s) for s in args.sizes.split(",")):
            r = await measure(factory, size, args.syncs, settings)
            print(f"{name:8} {r['session_bytes'] / MiB:7.2f}MB {r['median_ms']:7.2f}ms {r['p90_ms']:7.2f}ms "
                  f"{r['read']:9.0f}B {r['written']:11.0f}B {r['requests']:5.0f} {r['cold_ms']:8.1f}ms "
                  f"{r['cold_read'] / MiB:8.2f}MB {2 * r['session_bytes'] / MiB:12.2f}MB")


if __name__ == "__main__":
    asyncio.run(main())
