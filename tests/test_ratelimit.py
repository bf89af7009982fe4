"""Rate limits per client address (web/ratelimit.py): creates, syncs, RPC, admin-key guessing and
share-id misses, against apps built by ``create_app`` with their default limits unless a test
says otherwise; X-Forwarded-For only from trusted proxies; a limit shared through a real
``redis-server`` by two real ``cloudsession serve`` processes; and a client that behaves like
opencode (a burst at session start, then a sync a second) never limited."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import factories as f
import pytest
from factories import settings_for_tests
from test_live_redis import redis_server  # noqa: F401 (the session-scoped redis-server fixture)
from test_rpc_share import call, rpc

from cloudsession.config import ConfigError, load_settings
from cloudsession.web.app import create_app
from cloudsession.web.ratelimit import RateLimiter

ADMIN_KEY = "admin-key-for-ratelimit-tests"


def seconds_to_window_end(window: int) -> float:
    return window - time.time() % window


async def inside_one_window(window: int = 60, needed: float = 15.0) -> None:
    """Wait, if need be, until ``needed`` seconds fit before the end of the current ``window``.

    The sliding-window counter weighs the previous fixed window (aligned to the clock) by how
    much of it still overlaps the last ``window`` seconds: a burst that straddles a boundary gets
    a little more than the limit. Exact counts are only promised inside one window."""
    if seconds_to_window_end(window) < needed:
        await asyncio.sleep(seconds_to_window_end(window) + 0.05)


def app_with(tmp_path: Path, **overrides: Any):
    return create_app(settings_for_tests(tmp_path / "data", **overrides))


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def create(client, session_id: str, headers: dict[str, str] | None = None):
    return await client.post("/api/share", json={"sessionID": session_id}, headers=headers or {})


async def assert_429(resp, *, json_body: bool) -> None:
    assert resp.status == 429
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 3600  # at most the window (a minute or an hour here)
    if json_body:
        assert resp.headers["Content-Type"].startswith("application/json")
        assert await resp.json() == {"error": "Too many requests", "retryAfter": retry_after}
    else:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "Too Many Requests" in await resp.text()


async def test_a_burst_of_100_creates_from_one_address_gets_60_through(aiohttp_client, tmp_path):
    client = await aiohttp_client(app_with(tmp_path))
    await inside_one_window(needed=10)
    answers = await asyncio.gather(*(create(client, f"ses_burst_{i:04d}_{'x' * 12}") for i in range(100)))
    statuses = [r.status for r in answers]
    assert statuses.count(200) == 60 and statuses.count(429) == 40
    refused = [r for r in answers if r.status == 429]
    await assert_429(refused[0], json_body=True)
    assert refused[0].headers["Access-Control-Allow-Origin"] == "*"  # the reference's CORS on errors too
    # A refused create wrote nothing: exactly 60 shares exist.
    listing = await client.app[_service_key()].list_page(limit=1000)
    assert len(listing.entries) == 60


def _store_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _service_key():
    from cloudsession.web.keys import SERVICE

    return SERVICE


async def test_limits_are_per_address_and_forwarded_for_counts_only_from_trusted_proxies(aiohttp_client, tmp_path):
    # The test client connects from 127.0.0.1: trusted here, so X-Forwarded-For names the client.
    await inside_one_window(3600, needed=30)
    trusting = await aiohttp_client(app_with(tmp_path / "a", rate_limits={"create": "3/hour", "trusted_proxies": ["127.0.0.1/32"]}))
    for i in range(3):
        assert (await create(trusting, f"ses_xff_a_{i}_{'y' * 12}", forwarded("198.51.100.7"))).status == 200
    assert (await create(trusting, f"ses_xff_a_9_{'y' * 12}", forwarded("198.51.100.7"))).status == 429
    # Another client behind the same proxy has its own count...
    assert (await create(trusting, f"ses_xff_b_0_{'y' * 12}", forwarded("198.51.100.8"))).status == 200
    # ...and a client cannot escape by prepending an address: the hop the proxy saw counts.
    spoofed = forwarded("203.0.113.99, 198.51.100.7")
    assert (await create(trusting, f"ses_xff_a_8_{'y' * 12}", spoofed)).status == 429
    # IPv6 clients count per /64.
    for i in range(3):
        assert (await create(trusting, f"ses_xff_6_{i}_{'y' * 12}", forwarded(f"2001:db8:1:2::{i + 1}"))).status == 200
    assert (await create(trusting, f"ses_xff_6_9_{'y' * 12}", forwarded("2001:db8:1:2:ffff::1"))).status == 429

    # Without trusted proxies the header is ignored: every request is the peer's.
    direct = await aiohttp_client(app_with(tmp_path / "b", rate_limits={"create": "3/hour"}))
    for i in range(3):
        assert (await create(direct, f"ses_xff_c_{i}_{'y' * 12}", forwarded(f"198.51.100.{i}"))).status == 200
    assert (await create(direct, f"ses_xff_c_9_{'y' * 12}", forwarded("198.51.100.200"))).status == 429


async def test_parallel_wrong_admin_keys_are_throttled_per_address(aiohttp_client, tmp_path):
    client = await aiohttp_client(app_with(tmp_path, rpc_shared_key=ADMIN_KEY, rate_limits={"trusted_proxies": ["127.0.0.1/32"]}))
    attacker = forwarded("192.0.2.66")
    await inside_one_window(needed=20)
    answers = await asyncio.gather(
        *(client.get("/api/sessions", headers={**attacker, "x-opencode-share-key": f"guess-{i}"}) for i in range(200))
    )
    statuses = [r.status for r in answers]
    assert statuses.count(401) == 10 and statuses.count(429) == 190
    await assert_429(next(r for r in answers if r.status == 429), json_body=True)
    # Over the limit even the right key is refused, so a 429 never tells a guess was right...
    right = {"x-opencode-share-key": ADMIN_KEY}
    assert (await client.get("/api/sessions", headers={**attacker, **right})).status == 429
    # ...and the same key guessing through the other doors is refused too (one count per address).
    assert (await client.post("/rpc/share", data="", headers={**attacker, "x-opencode-share-key": "guess"})).status == 429
    login = await client.post("/sessions/login", data={"key": ADMIN_KEY}, headers=attacker, allow_redirects=False)
    await assert_429(login, json_body=False)
    # Another address is not affected, and a right key is never counted.
    for _ in range(20):
        assert (await client.get("/api/sessions", headers={**forwarded("192.0.2.67"), **right})).status == 200


async def test_parallel_wrong_sign_ins_are_throttled(aiohttp_client, tmp_path):
    client = await aiohttp_client(app_with(tmp_path, rpc_shared_key=ADMIN_KEY))
    await inside_one_window(needed=15)
    answers = await asyncio.gather(*(client.post("/sessions/login", data={"key": f"guess-{i}"}, allow_redirects=False) for i in range(30)))
    statuses = [r.status for r in answers]
    assert statuses.count(401) == 10 and statuses.count(429) == 20
    # A forged sign-in cookie is a guess too.
    forged = await client.get("/sessions", cookies={"cloudsession_admin": "0" * 64})
    assert forged.status == 429


async def test_share_id_misses_are_throttled(aiohttp_client, tmp_path):
    client = await aiohttp_client(app_with(tmp_path, rate_limits={"share_misses": "20/hour", "trusted_proxies": ["127.0.0.1/32"]}))
    owner = forwarded("192.0.2.10")
    await inside_one_window(3600, needed=30)
    share = await (await create(client, "ses_misses_owner_000000001", owner)).json()
    guesser = forwarded("192.0.2.11")
    paths = ["/api/share/{}", "/api/share/{}/data", "/share/{}", "/api/share/{}/metadata"]
    statuses = []
    for i in range(24):
        resp = await client.get(paths[i % len(paths)].format(f"guess{i:04d}"), headers=guesser)
        statuses.append(resp.status)
    assert statuses[:20] == [404] * 20 and statuses[20:] == [429] * 4
    # Once over, every share route answers 429 to that address, existing shares included...
    await assert_429(await client.get(f"/share/{share['id']}", headers=guesser), json_body=False)
    await assert_429(await client.get(f"/api/share/{share['id']}", headers=guesser), json_body=True)
    ws = await client.get(f"/ws/{share['id']}", headers={**guesser, "Upgrade": "websocket", "Connection": "Upgrade"})
    assert ws.status == 429 and "Retry-After" in ws.headers
    # ...and nothing changes for others.
    assert (await client.get(f"/share/{share['id']}", headers=owner)).status == 200


async def test_sync_limit_counts_rest_and_rpc_calls(aiohttp_client, tmp_path):
    client = await aiohttp_client(app_with(tmp_path, rate_limits={"sync": "5/hour", "create": "2/hour"}))
    await inside_one_window(3600, needed=30)
    share = await (await create(client, "ses_sync_limit_0000000001")).json()
    body = {"secret": share["secret"], "data": [f.item("session", f.session("ses_sync_limit_0000000001"))]}
    for _ in range(3):
        assert (await client.post(f"/api/share/{share['id']}/sync", json=body)).status == 200
    # Two more through RPC, in one batch: the 6th sync of the hour is refused inside it.
    status, answer = await rpc(
        client,
        call("syncShare", share["id"], share["secret"], [[]]),
        call("syncShare", share["id"], share["secret"], [[]]),
        call("syncShare", share["id"], share["secret"], [[]]),
        ["pull", 1],
        ["pull", 2],
        ["pull", 3],
    )
    assert status == 200
    assert sorted(line[0] for line in answer) == ["reject", "resolve", "resolve"]
    [rejected] = [line for line in answer if line[0] == "reject"]
    assert rejected[2][:3] == ["error", "Error", rejected[2][2]] and rejected[2][2].startswith("Too many requests; retry in ")
    before = await (await client.get(f"/api/share/{share['id']}/data")).read()
    await client.app[_service_key()].settle_index()  # the index entry lands just after the answer
    store_before = _store_bytes(tmp_path / "data" / "store")
    refused_body = {"secret": share["secret"], "data": [f.item("session", f.session("ses_sync_limit_0000000001", title="refused"))]}
    resp = await client.post(f"/api/share/{share['id']}/sync", json=refused_body)
    await assert_429(resp, json_body=True)
    # Refused before the body was read: nothing stored changed.
    assert await (await client.get(f"/api/share/{share['id']}/data")).read() == before
    assert _store_bytes(tmp_path / "data" / "store") == store_before
    # RPC createShare counts against the create limit (one REST create already).
    status, answer = await rpc(client, call("createShare", "ses_sync_limit_0000000002"), call("createShare", "ses_sync_limit_0000000003"), ["pull", 1], ["pull", 2])
    assert sorted(line[0] for line in answer) == ["reject", "resolve"]


async def test_an_opencode_like_client_is_never_limited(aiohttp_client, tmp_path):
    """Default limits; the pattern of a real client: create, a burst of 50 syncs as the session's
    history is pushed, reads by the page, then a sync a second."""
    client = await aiohttp_client(app_with(tmp_path))
    sid = "ses_opencode_like_00000001"
    share = await (await create(client, sid)).json()
    url = f"/api/share/{share['id']}/sync"

    async def sync(n: int):
        message = f.user_message(sid)
        items = [f.item("message", message), f.item("part", f.text_part(sid, message["id"], f"step {n}"))]
        return await client.post(url, json={"secret": share["secret"], "data": items})

    burst = await asyncio.gather(*(sync(n) for n in range(50)))
    assert [r.status for r in burst] == [200] * 50
    for n in range(50, 56):
        assert (await sync(n)).status == 200
        assert (await client.get(f"/api/share/{share['id']}")).status == 200
        await asyncio.sleep(1)
    assert (await create(client, sid)).status == 200  # re-sharing is fine too


async def test_limits_can_be_turned_off(aiohttp_client, tmp_path):
    client = await aiohttp_client(app_with(tmp_path, rate_limits={"enabled": False}))
    answers = await asyncio.gather(*(create(client, f"ses_unlimited_{i:04d}_{'z' * 10}") for i in range(80)))
    assert {r.status for r in answers} == {200}


async def test_an_unreachable_limit_store_lets_requests_through(tmp_path):
    from limits import parse_many
    from limits.aio.storage import RedisStorage
    from servers import free_port

    storage = RedisStorage(f"async+redis://127.0.0.1:{free_port()}/0", implementation="redispy", wrap_exceptions=True, socket_connect_timeout=0.5)
    limiter = RateLimiter(storage, {"create": parse_many("1/minute")}, [])
    for _ in range(3):
        await limiter.hit("create", "192.0.2.1")  # no RateLimited: fails open
    await limiter.close()


def test_settings(tmp_path):
    settings = load_settings(environ={"CLOUDSESSION_RATE_LIMIT_CREATE": "5/second;100/hour", "CLOUDSESSION_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert settings.rate_limits.create == "5/second;100/hour"
    assert [str(n) for n in settings.rate_limits.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert load_settings(environ={"CLOUDSESSION_RATE_LIMIT_SHARE_MISSES": "off"}).rate_limits.share_misses == "off"
    assert load_settings(environ={"CLOUDSESSION_RATE_LIMITS": "false"}).rate_limits.enabled is False
    with pytest.raises(ConfigError, match="CLOUDSESSION_RATE_LIMIT_SYNC"):  # named as the operator set it
        load_settings(environ={"CLOUDSESSION_RATE_LIMIT_SYNC": "plenty"})
    with pytest.raises(ConfigError, match="CLOUDSESSION_TRUSTED_PROXIES"):
        load_settings(environ={"CLOUDSESSION_TRUSTED_PROXIES": "10.0.0.1/8"})


# -- shared by replicas through Redis ---------------------------------------------------------


def _post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_replicas_share_the_limit_through_redis(tmp_path, redis_server):  # noqa: F811
    import redis
    from servers import running_servers

    # A database of its own, emptied first: counts from other tests (or an earlier run within the
    # minute) must not count here.
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    env = {"REDIS_URL": url, "CLOUDSESSION_RATE_LIMIT_CREATE": "5/hour"}
    with running_servers(2, tmp_path / "data", env) as (a, b):
        if seconds_to_window_end(3600) < 30:
            time.sleep(seconds_to_window_end(3600) + 0.05)
        statuses = [_post(server.url + "/api/share", {"sessionID": f"ses_redis_limit_{i:02d}_{'q' * 10}"}) for i, server in enumerate([a, b] * 4)]
    assert statuses == [200] * 5 + [429] * 3
