"""At-most-once across replicas: the same batch delivered concurrently to several server
processes on one store (filesystem, and S3 through moto) is applied exactly once, and every
delivery gets the same acknowledgement."""

from __future__ import annotations

import asyncio

import aiohttp

from cloudsession.client.ids import batch_id, uuid7

OPS = 20
DELIVERIES = 12


async def deliver_everywhere(urls: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(urls[0] + "/api/share", json={"sessionID": "ses_replicas000000000000001"}) as resp:
            share = await resp.json()
        ids = [uuid7() for _ in range(OPS)]
        ops = [
            {"op_id": op_id, "batch_id": batch_id(ids), "seq": n, "item": {"type": "message", "data": {"id": f"msg_{n:03d}", "role": "user"}}}
            for n, op_id in enumerate(ids)
        ]
        body = {"secret": share["secret"], "ops": ops}

        async def one(i: int) -> dict:
            async with http.post(f"{urls[i % len(urls)]}/api/share/{share['id']}/ops", json=body) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        answers = await asyncio.gather(*(one(i) for i in range(DELIVERIES)))
        winners = [a for a in answers if a["applied"]]
        assert len(winners) == 1 and len(winners[0]["applied"]) == OPS
        acks = winners[0]["applied"]
        assert all(a["duplicates"] == acks and a["cursor"] == OPS for a in answers if a is not winners[0])
        for url in urls:
            async with http.get(f"{url}/api/share/{share['id']}") as resp:
                data = await resp.json()
            assert data["metadata"]["syncCount"] == OPS and len(data["messages"]) == OPS


async def test_same_batch_on_three_processes_sharing_one_store(replica_urls):
    await deliver_everywhere(replica_urls)
