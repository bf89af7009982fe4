#!/usr/bin/env python3
"""Counts under a race: bursts of concurrent syncs to one share while readers poll it.

Each round creates a share on a fresh filesystem store, sends ``--syncs`` syncs at once through
one share service while ``--readers`` readers read the share in a loop, then checks that every
sync got its own ``syncCount`` (1..N), and that this process and a fresh one (a restart) agree
on ``syncCount`` and the ack cursor. Prints the rounds whose counts were wrong; see
docs/reliability.md ("Store faults and crashes").

    .venv/bin/python scripts/race_counts.py [--rounds 10] [--syncs 300] [--readers 30]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path

from cloudsession.config import Settings
from cloudsession.shares.service import ShareService
from cloudsession.store.fs import FilesystemStore

NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"


async def one_round(index: int, syncs: int, readers: int) -> str | None:
    """None when every count is exact, else what was wrong."""
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings.model_validate({"data_dir": directory, "shared_secret": NAMESPACE})
        store = FilesystemStore(Path(directory) / "store")
        service = ShareService(store, settings)
        creds = await service.create(f"ses_racecounts{index:014d}", origin="http://race")
        done = asyncio.Event()

        async def reader() -> None:
            while not done.is_set():
                await service.public_share(creds.id)

        async def sync(n: int) -> int:
            item = {"type": "message", "data": {"id": f"msg_{n:05d}", "role": "user"}}
            return await service.sync(creds.id, creds.secret, [item])

        polling = [asyncio.create_task(reader()) for _ in range(readers)]
        counts = await asyncio.gather(*(sync(n) for n in range(syncs)))
        done.set()
        await asyncio.gather(*polling)
        here = (await service.load(creds.id)).meta
        fresh = (await ShareService(store, settings).load(creds.id)).meta
        if sorted(counts) == list(range(1, syncs + 1)) and here.sync_count == here.cursor == fresh.sync_count == fresh.cursor == syncs:
            return None
        return (
            f"answers up to {max(counts)}; this process syncCount {here.sync_count} cursor {here.cursor}; "
            f"a fresh process syncCount {fresh.sync_count} cursor {fresh.cursor} (expected {syncs})"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--syncs", type=int, default=300)
    parser.add_argument("--readers", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    wrong = 0
    for index in range(args.rounds):
        problem = await one_round(index, args.syncs, args.readers)
        if problem is not None:
            wrong += 1
            print(f"round {index}: {problem}")
    print(f"{args.rounds} rounds of {args.syncs} concurrent syncs with {args.readers} readers: {wrong} with wrong counts")


if __name__ == "__main__":
    asyncio.run(main())
