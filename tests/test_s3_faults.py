"""S3 faults, injected by a proxy in front of moto (``s3_faults.py``): every answer is a true
success or a 503 with ``Retry-After`` within the store deadline, never a 500, and nothing
acknowledged is lost.

The first tests run the application in-process on S3 through the proxy; the last runs real
``cloudsession serve`` processes with concurrent writers, readers and creators while faults
come and go."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import MOTO_REGION
from factories import settings_for_tests
from s3_faults import KINDS, NO_FAULTS, Faults, FaultyS3Proxy
from servers import ServerProcess

from cloudsession.web.app import create_app

ADMIN_KEY = "admin-key-for-fault-tests"
# Small deadlines keep the suite fast; the properties are relative to them.
STORE_TIMEOUT = 1.0
READY_TIMEOUT = 0.5
# A black-holed store: every request fails at its first store call (or its wait for the share's
# lock), so it answers within about one deadline; 3x is the bound (enforced as a timeout).
BLACK_HOLE_BOUND = 3 * STORE_TIMEOUT
# Under intermittent faults a request may make several slow store calls in turn, each with its
# own deadline; every answer still comes within this (the client's timeout: slower fails).
ANSWER_BOUND = 6 * STORE_TIMEOUT


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[FaultyS3Proxy]:
    async with FaultyS3Proxy(moto_endpoint, seed=10) as p:
        yield p


def s3_settings(tmp_path: Path, bucket: str, endpoint: str, **overrides: Any) -> Any:
    return settings_for_tests(
        tmp_path / "data",
        store={"backend": "s3", "bucket": bucket, "prefix": "shares/", "endpoint": endpoint, "region": MOTO_REGION},
        store_timeout_seconds=STORE_TIMEOUT,
        ready_timeout_seconds=READY_TIMEOUT,
        rpc_shared_key=ADMIN_KEY,
        **overrides,
    )


def sync_body(secret: str, n: int) -> dict[str, Any]:
    return {"secret": secret, "data": [{"type": "message", "data": {"id": f"msg_{n:05d}", "role": "user"}}]}


async def every_door(client: Any, share: dict[str, str], session_id: str) -> dict[str, aiohttp.ClientResponse]:
    """One request through each door that touches the store, all at once."""
    sid = share["id"]
    requests = {
        "create (existing)": client.post("/api/share", json={"sessionID": session_id}),
        "create (new)": client.post("/api/share", json={"sessionID": "ses_faultnew0000000000000001"}),
        "sync": client.post(f"/api/share/{sid}/sync", json=sync_body(share["secret"], 999)),
        "data": client.get(f"/api/share/{sid}/data"),
        "share": client.get(f"/api/share/{sid}"),
        "metadata": client.get(f"/api/share/{sid}/metadata"),
        "page": client.get(f"/share/{sid}"),
        "admin list": client.get("/api/sessions", headers={"x-opencode-share-key": ADMIN_KEY}),
        "delete": client.delete(f"/api/share/{sid}", json={"secret": share["secret"]}),
        "readyz": client.get("/readyz"),
        # Writers queued on one share's lock behind writers stuck on the store.
        **{f"sync {n}": client.post(f"/api/share/{sid}/sync", json=sync_body(share["secret"], n)) for n in range(8)},
    }
    answers = await asyncio.gather(*requests.values())
    return dict(zip(requests, answers, strict=True))


def is_read(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD")  # LISTs are GETs too


async def test_failing_reads_are_a_503_with_retry_after_everywhere(aiohttp_client, proxy: FaultyS3Proxy, s3_bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # No trust window: every sync checks the share first (a sync into a share checked moments
    # ago is one PUT and needs no read: tests/test_sync_requests.py).
    settings = s3_settings(tmp_path, s3_bucket, proxy.url, writer_trust_seconds=0)
    client = await aiohttp_client(create_app(settings))
    session_id = "ses_faultlist000000000000001"
    share = await (await client.post("/api/share", json={"sessionID": session_id})).json()
    assert (await client.post(f"/api/share/{share['id']}/sync", json=sync_body(share["secret"], 1))).status == 200

    proxy.faults = Faults(rate=1.0, kinds=("500",), applies=is_read)
    answers = await every_door(client, share, session_id)
    for name, resp in answers.items():
        assert resp.status == 503, (name, resp.status, await resp.text())
        assert resp.headers.get("Retry-After") == "1", name
    assert answers["page"].content_type == "text/html"
    assert (await answers["data"].json()) == {"error": "Storage unavailable"}

    proxy.faults = NO_FAULTS
    data = await (await client.get(f"/api/share/{share['id']}/data")).json()
    assert [x["data"]["id"] for x in data if x["type"] == "message"] == ["msg_00001"]


async def test_a_black_holed_store_answers_503_within_the_deadline(aiohttp_client, proxy: FaultyS3Proxy, s3_bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(s3_settings(tmp_path, s3_bucket, proxy.url)))
    session_id = "ses_faulthole000000000000001"
    share = await (await client.post("/api/share", json={"sessionID": session_id})).json()

    proxy.faults = Faults(rate=1.0, kinds=("blackhole",))
    started = time.monotonic()
    answers = await asyncio.wait_for(every_door(client, share, session_id), BLACK_HOLE_BOUND)
    longest = time.monotonic() - started
    print(f"black-holed store: {len(answers)} concurrent requests, longest answer {longest:.2f}s (store deadline {STORE_TIMEOUT}s)")
    for name, resp in answers.items():
        assert resp.status == 503, (name, resp.status, await resp.text())
        assert resp.headers.get("Retry-After") == "1", name
    assert proxy.stats["blackhole"] > 0

    proxy.faults = NO_FAULTS
    assert (await client.get("/readyz")).status == 200
    assert (await client.get(f"/api/share/{share['id']}/data")).status == 200


# -- real processes, concurrent traffic, faults that come and go ---------------------------------

WRITERS = 6
SYNCS_PER_WRITER = 12
READERS = 4
CREATORS = 2
FAULT_ROUNDS = 4
FAULT_RATE = 0.3


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, bucket: str, proxy: FaultyS3Proxy) -> AsyncIterator[ServerProcess]:
    env = {
        "CLOUDSESSION_STORE": f"s3://{bucket}/shares",
        "AWS_ENDPOINT_URL": proxy.url,
        "CLOUDSESSION_STORE_TIMEOUT_SECONDS": str(STORE_TIMEOUT),
        "CLOUDSESSION_READY_TIMEOUT_SECONDS": str(READY_TIMEOUT),
        "CLOUDSESSION_COMPACT_MAX_ENTRIES": "8",
        "SESSIONS_RPC_SHARED_KEY": ADMIN_KEY,
    }
    server = ServerProcess(tmp_path / "data", env)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


class Tally:
    """Every answer seen: its status, its slowest time, and the syncs acknowledged."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.longest = 0.0
        self.acknowledged: dict[str, set[str]] = {}
        self.bad: list[str] = []

    async def request(self, http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        started = time.monotonic()
        # The client's own timeout is the bound: a slower answer fails the request, and the test.
        async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=ANSWER_BOUND), **kwargs) as resp:
            body = await resp.read()
            self.longest = max(self.longest, time.monotonic() - started)
            self.statuses[resp.status] += 1
            if resp.status == 503 and "Retry-After" not in resp.headers:
                self.bad.append(f"{method} {url}: 503 without Retry-After")
            elif resp.status not in (200, 503):
                self.bad.append(f"{method} {url}: {resp.status} {body[:200]!r}")
            return resp.status, body


async def test_concurrent_traffic_through_s3_faults_loses_nothing_acknowledged(proxy: FaultyS3Proxy, s3_bucket: str, tmp_path: Path) -> None:
    tally = Tally()
    rng = random.Random(7)
    async with serving(tmp_path, s3_bucket, proxy) as server, aiohttp.ClientSession() as http:
        base = server.url
        shares = []
        for n in range(3):
            status, body = await tally.request(http, "POST", f"{base}/api/share", json={"sessionID": f"ses_faultconc00000000000000{n}"})
            assert status == 200
            shares.append(json.loads(body))
        for share in shares:
            tally.acknowledged[share["id"]] = set()
        stop_readers = asyncio.Event()

        async def writer(w: int) -> None:
            share = shares[w % len(shares)]
            for i in range(SYNCS_PER_WRITER):
                n = w * 1000 + i
                status, _ = await tally.request(http, "POST", f"{base}/api/share/{share['id']}/sync", json=sync_body(share["secret"], n))
                if status == 200:
                    tally.acknowledged[share["id"]].add(f"msg_{n:05d}")

        async def reader(r: int) -> None:
            paths = ["/api/share/{id}/data", "/api/share/{id}", "/share/{id}", "/api/share/{id}/metadata", "/readyz"]
            while not stop_readers.is_set():
                share = rng.choice(shares)
                await tally.request(http, "GET", base + rng.choice(paths).format(id=share["id"]))

        async def creator(c: int) -> None:
            for i in range(4):
                await tally.request(http, "POST", f"{base}/api/share", json={"sessionID": f"ses_faultcreate{c:02d}{i:011d}"})
                await tally.request(http, "GET", f"{base}/api/sessions", headers={"x-opencode-share-key": ADMIN_KEY})

        async def weather() -> None:
            """Faults come and go: rounds of random faults, a black hole, and calm."""
            for round_no in range(FAULT_ROUNDS):
                kinds = KINDS if round_no % 2 else tuple(k for k in KINDS if k != "blackhole")
                proxy.faults = Faults(rate=FAULT_RATE, kinds=kinds, delay=(0.0, 0.6))
                await asyncio.sleep(1.0)
                proxy.faults = NO_FAULTS
                await asyncio.sleep(0.3)

        readers = [asyncio.create_task(reader(r)) for r in range(READERS)]
        await asyncio.gather(weather(), *(writer(w) for w in range(WRITERS)), *(creator(c) for c in range(CREATORS)))
        stop_readers.set()
        await asyncio.gather(*readers)
        proxy.faults = NO_FAULTS

        # After the faults: every acknowledged sync is there, on this server and on a fresh one.
        fresh = ServerProcess(tmp_path / "fresh", server.env | {"PUBLIC_URL": ""})
        await asyncio.to_thread(fresh.start)
        try:
            lost = 0
            counts: dict[str, list[int]] = {}
            for share in shares:
                for url in (base, fresh.url):
                    async with http.get(f"{url}/api/share/{share['id']}") as resp:
                        assert resp.status == 200
                        doc = await resp.json()
                    lost += len(tally.acknowledged[share["id"]] - {m["id"] for m in doc["messages"]})
                    counts.setdefault(share["id"], []).append(doc["metadata"]["syncCount"])
        finally:
            await asyncio.to_thread(fresh.stop)

    lost_answers = proxy.stats["lost-write-answers"]
    acked = sum(len(v) for v in tally.acknowledged.values())
    print(
        f"S3 faults: {FAULT_ROUNDS} fault rounds, {proxy.stats['requests']} store requests, injected "
        + ", ".join(f"{k} {proxy.stats[k]}" for k in KINDS)
        + f"; answers {dict(tally.statuses)}; longest {tally.longest:.2f}s; acknowledged syncs {acked},"
        + f" lost {lost}; syncCount total {sum(c[0] for c in counts.values())}; write answers dropped {lost_answers}"
    )
    assert tally.bad == []
    assert set(tally.statuses) <= {200, 503}
    assert sum(proxy.stats[k] for k in KINDS) > 20  # the faults did happen
    assert tally.statuses[200] > 0
    assert lost == 0
    for share_id, (here, there) in counts.items():
        acked_here = len(tally.acknowledged[share_id])
        assert here == there
        # Counted once each: more than acknowledged only by writes whose answer was dropped.
        assert acked_here <= here <= acked_here + lost_answers, (acked_here, here, lost_answers)
