"""Live updates across replicas through a real ``redis-server``: two ``cloudsession serve``
processes on one filesystem store with the same ``REDIS_URL``, WebSocket viewers on one and
syncs on the other (both frame formats, deletion, large syncs, a Redis outage), the relay's
own-event and malformed-message handling in-process, and the ``REDIS_URL`` setting."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio
from chromium import CHROMIUM, CHROMIUM_ARGS
from playwright.sync_api import sync_playwright
from servers import ServerProcess, free_port, running_servers
from test_browser_share import call as call_sync
from test_browser_share import open_live
from view_data import SES, item, part, session, user

from cloudsession.config import ConfigError, load_settings
from cloudsession.live.hub import CLOSE_ACCESS_CHANGED, CLOSE_DELETED, CLOSE_TOO_SLOW, FORMAT_EVENTS, FORMAT_REFERENCE, LiveHub, Viewer
from cloudsession.live.relay import MAX_RELAY_BYTES, RedisRelay, redis_client

PASSWORD = "relay-pw-4f1c2b"  # test-only Redis password, checked never to reach logs or output


class RedisServer:
    """A throwaway ``redis-server`` on a free port: no persistence, local only."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test installs the Debian package)"
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.password:
            cmd += ["--requirepass", self.password]
        with open(self.directory / f"redis-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        probe = redis.Redis(port=self.port, password=self.password, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if probe.ping():
                        return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def replicas(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Replicas A and B: one store (same data dir), one Redis."""
    with running_servers(2, tmp_path_factory.mktemp("replicas") / "data", {"REDIS_URL": redis_server.url}) as servers:
        yield servers


# --------------------------------------------------------------------------- helpers


def new_session_id() -> str:
    return "ses_" + uuid.uuid4().hex[:26]


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any) -> Any:
    async with http.request(method, url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def create(http: aiohttp.ClientSession, server: ServerProcess) -> dict[str, str]:
    session_id = new_session_id()
    creds = await call(http, "POST", f"{server.url}/api/share", {"sessionID": session_id})
    return {**creds, "session_id": session_id}


async def sync(http: aiohttp.ClientSession, server: ServerProcess, creds: dict[str, str], items: list[dict[str, Any]]) -> int:
    body = {"secret": creds["secret"], "data": items}
    return (await call(http, "POST", f"{server.url}/api/share/{creds['id']}/sync", body))["syncCount"]


async def next_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> Any:
    message = await asyncio.wait_for(ws.receive(), timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return json.loads(message.data)


async def watch(http: aiohttp.ClientSession, server: ServerProcess, creds: dict[str, str], *, events: bool = False) -> aiohttp.ClientWebSocketResponse:
    """A viewer of the share on ``server``; an events viewer's hello (count 0 here) is read."""
    ws = await http.ws_connect(f"{server.url}/ws/{creds['id']}" + ("?format=events" if events else ""))
    if events:
        assert await next_json(ws) == {"type": "hello", "syncCount": 0}
    return ws


async def close_code(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> int:
    message = await asyncio.wait_for(ws.receive(), timeout=timeout)
    assert message.type == aiohttp.WSMsgType.CLOSE, message
    return int(message.data)


def titled(title: str, session_id: str = SES) -> list[dict[str, Any]]:
    return [item("session", session(id=session_id, title=title))]


def message_items(creds: dict[str, str], at: int, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A user message with one text part, in the share's own session (its id must be rewritten)."""
    message = user(at, sessionID=creds["session_id"])
    return message, [item("message", message), item("part", part(message, "text", text=text, sessionID=creds["session_id"]))]


def assert_public(raw: str, creds: dict[str, str]) -> None:
    assert creds["secret"] not in raw
    assert creds["session_id"] not in raw


# --------------------------------------------------------------------------- two real replicas


async def test_a_sync_on_either_replica_reaches_every_viewer_exactly_once(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as http:
        creds = await create(http, a)
        reference = await watch(http, a, creds)
        events = await watch(http, a, creds, events=True)
        on_b = await watch(http, b, creds, events=True)

        message, items = message_items(creds, 1000, "from B")
        items += titled("first", creds["session_id"])
        assert await sync(http, b, creds, items) == 1
        frame = await next_json(reference)
        assert [f["type"] for f in frame] == ["message", "part", "session"]
        assert frame[0]["data"]["id"] == message["id"] and frame[1]["data"]["text"] == "from B"
        assert_public(json.dumps(frame), creds)
        event = await next_json(events)
        assert event == {"type": "sync", "syncCount": 1, "messages": [message["id"]], "session": True, "diffs": False, "models": False}
        assert await next_json(on_b) == event

        # Then one on A, one on B: each viewer's next two frames are these, so no event arrived
        # twice (A's own through Redis, or B's a second time). On A they come in order (2 is
        # local, 3 relayed); B may tell its own 3 before A's 2 reaches it through Redis.
        assert await sync(http, a, creds, titled("second")) == 2
        assert await sync(http, b, creds, titled("third")) == 3
        assert [(await next_json(reference))[0]["data"]["title"] for _ in range(2)] == ["second", "third"]
        assert [(await next_json(events))["syncCount"] for _ in range(2)] == [2, 3]
        assert sorted([(await next_json(on_b))["syncCount"] for _ in range(2)]) == [2, 3]
        for ws in (reference, events, on_b):
            await ws.close()


async def test_a_delete_on_one_replica_closes_viewers_on_the_other(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as http:
        creds = await create(http, a)
        events = await watch(http, a, creds, events=True)
        reference = await watch(http, a, creds)
        await call(http, "DELETE", f"{b.url}/api/share/{creds['id']}", {"secret": creds["secret"]})
        assert await next_json(events) == {"type": "deleted"}
        assert await close_code(events) == CLOSE_DELETED
        assert await close_code(reference) == CLOSE_DELETED


async def test_relayed_messages_carry_only_public_data(replicas: list[ServerProcess], redis_server: RedisServer) -> None:
    a, b = replicas
    listener = redis.asyncio.Redis.from_url(redis_server.url)
    pubsub = listener.pubsub()
    await pubsub.psubscribe("cloudsession:live:*")
    try:
        async with aiohttp.ClientSession() as http:
            creds = await create(http, a)
            message, items = message_items(creds, 2000, "public only")
            await sync(http, b, creds, items)
            raw = await _relayed(pubsub, creds["id"])
    finally:
        await pubsub.aclose()
        await listener.aclose()
    text = raw.decode()
    assert_public(text, creds)
    relayed = json.loads(text)
    assert set(relayed) == {"v", "from", "kind", "syncCount", "items"}
    assert (relayed["kind"], relayed["syncCount"]) == ("synced", 1)
    assert relayed["items"][0]["data"]["id"] == message["id"]


async def _relayed(pubsub: Any, share_id: str) -> bytes:
    async def first() -> bytes:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["channel"].endswith(f":{share_id}".encode()):
                return bytes(message["data"])

    return await asyncio.wait_for(first(), timeout=5)


async def test_a_sync_too_large_to_relay_resyncs_remote_viewers(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as http:
        creds = await create(http, a)
        remote_events = await watch(http, a, creds, events=True)
        remote_reference = await watch(http, a, creds)
        local_reference = await watch(http, b, creds)
        message = user(3000)
        big = part(message, "text", text="x" * (MAX_RELAY_BYTES + 1000))
        assert await sync(http, b, creds, [item("message", message), item("part", big)]) == 1
        # B's own viewer gets the whole sync; A's learn that something changed.
        assert (await next_json(local_reference))[1]["data"]["text"] == big["text"]
        assert await next_json(remote_events) == {"type": "resync", "syncCount": 1}
        assert await close_code(remote_reference) == CLOSE_TOO_SLOW
        for ws in (remote_events, local_reference):
            await ws.close()


async def test_a_redis_outage_never_fails_a_sync_and_viewers_catch_up(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    try:
        with running_servers(2, tmp_path / "data", {"REDIS_URL": redis_server.url}) as (a, b):
            await _outage(redis_server, a, b)
        # A's viewers were told to resync, so A's subscription is back; B may still have been
        # waiting out its backoff when the servers stopped, so only its loss is certain.
        assert "Redis subscription restored" in a.log()
        for server in (a, b):
            log = server.log()
            assert "Redis subscription lost" in log
            assert PASSWORD not in log
            assert "Traceback" not in log
            assert server.proc is not None and server.proc.returncode == 0
    finally:
        redis_server.stop()


async def _outage(redis_server: RedisServer, a: ServerProcess, b: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        creds = await create(http, a)
        events = await watch(http, a, creds, events=True)
        reference = await watch(http, a, creds)

        redis_server.stop()
        # A's own viewers still hear A's syncs, and syncs on either replica succeed.
        assert await sync(http, a, creds, titled("during the outage, on A")) == 1
        assert (await next_json(reference))[0]["data"]["title"] == "during the outage, on A"
        assert (await next_json(events))["syncCount"] == 1
        assert await sync(http, b, creds, titled("during the outage, on B")) == 2

        redis_server.start()
        # A viewer on A missed B's sync: once Redis is back it is told to resync to count 2, and a
        # reference viewer (which cannot resync) is closed so that it reconnects.
        assert await next_json(events, timeout=30) == {"type": "resync", "syncCount": 2}
        assert await close_code(reference, timeout=30) == CLOSE_TOO_SLOW

        # And B's syncs reach A's viewers again (B may still be waiting out its backoff).
        deadline = time.monotonic() + 30
        while True:
            count = await sync(http, b, creds, titled("after the outage, on B"))
            try:
                while (event := await next_json(events, timeout=1))["type"] != "sync":
                    pass
                assert event["syncCount"] == count
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "B's syncs never reached A after Redis came back"
        await events.close()


def test_the_share_page_on_one_replica_shows_a_sync_sent_to_the_other(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    session_id = new_session_id()
    creds = {**call_sync(a, "POST", "/api/share", {"sessionID": session_id}), "session_id": session_id}
    message, items = message_items(creds, 4000, "Hello from **replica B**")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            open_live(page, a, creds["id"])
            call_sync(b, "POST", f"/api/share/{creds['id']}/sync", {"secret": creds["secret"], "data": items})
            page.wait_for_selector(f"#msg-{message['id']} strong", timeout=5_000)
            assert page.evaluate("window.__sameDocument") is True  # shown live, not by a reload
        finally:
            browser.close()


# --------------------------------------------------------------------------- the relay in-process


class _Socket:
    """Stands in for a viewer's socket: the tests read the viewer's queue instead."""

    closed = False


def _viewer(hub: LiveHub, share_id: str, fmt: str = FORMAT_REFERENCE) -> Viewer:
    viewer = Viewer(_Socket(), fmt)  # type: ignore[arg-type]
    hub.add(share_id, viewer)
    return viewer


async def _frame(viewer: Viewer) -> Any:
    frame = await asyncio.wait_for(viewer.queue.get(), timeout=5)
    return None if frame is None else json.loads(frame)


@pytest.fixture
async def relays(redis_server: RedisServer) -> AsyncIterator[list[tuple[LiveHub, RedisRelay]]]:
    """Two hubs, each with its relay on one fresh channel of the real Redis."""
    channel = f"cloudsession:test:{uuid.uuid4().hex}"
    pairs = []
    for _ in range(2):
        hub = LiveHub()
        relay = RedisRelay(hub, redis_client(redis_server.url), channel)
        await relay.start()
        hub.relay = relay
        pairs.append((hub, relay))
    try:
        yield pairs
    finally:
        for _, relay in pairs:
            await relay.stop()


async def test_a_replica_does_not_deliver_its_own_event_twice(relays: list[tuple[LiveHub, RedisRelay]]) -> None:
    (hub1, _), (hub2, _) = relays
    own, other = _viewer(hub1, "share1"), _viewer(hub2, "share1")
    await hub1.share_synced("share1", titled("one"), 1)
    assert (await _frame(own))[0]["data"]["title"] == "one"  # at once, before Redis
    assert (await _frame(other))[0]["data"]["title"] == "one"
    # hub1 receives its own message before hub2's next one (one channel, one order), so the
    # next frame hub1's viewer gets is hub2's, not a second copy of its own.
    await hub2.share_synced("share1", titled("two"), 2)
    assert (await _frame(own))[0]["data"]["title"] == "two"
    assert (await _frame(other))[0]["data"]["title"] == "two"
    assert own.queue.empty() and other.queue.empty()


async def test_a_sync_relayed_after_a_later_one_closes_reference_viewers(relays: list[tuple[LiveHub, RedisRelay]]) -> None:
    (hub1, _), (hub2, _) = relays
    reference, events = _viewer(hub2, "share1"), _viewer(hub2, "share1", FORMAT_EVENTS)
    # Sync 2 is accepted by replica 1 and sync 3 by replica 2 before 2 has crossed Redis.
    await hub1.share_synced("share1", titled("two"), 2)
    await hub2.share_synced("share1", titled("three"), 3)
    assert (await _frame(reference))[0]["data"]["title"] == "three"
    assert [(await _frame(events))["syncCount"] for _ in range(2)] == [3, 2]  # fetches current state
    # Sync 2's items would overwrite newer ones: the reference viewer is closed to re-read.
    assert await _frame(reference) is None and reference.close_code == CLOSE_TOO_SLOW


async def test_malformed_or_foreign_messages_are_ignored(relays: list[tuple[LiveHub, RedisRelay]], redis_server: RedisServer) -> None:
    (hub, relay), _ = relays
    viewer = _viewer(hub, "share1", FORMAT_EVENTS)
    base = {"v": 1, "from": "elsewhere", "kind": "synced", "syncCount": 5, "items": []}
    hostile: list[bytes] = [
        b"not json",
        b"[1, 2]",
        json.dumps({**base, "v": 2}).encode(),
        json.dumps({**base, "from": 7}).encode(),
        json.dumps({**base, "syncCount": "5"}).encode(),
        json.dumps({**base, "syncCount": True}).encode(),
        json.dumps({**base, "syncCount": -1}).encode(),
        json.dumps({**base, "items": "nope"}).encode(),
        json.dumps({**base, "items": [1]}).encode(),
        json.dumps({**base, "kind": "rename"}).encode(),
        json.dumps({**base, "items": [{"type": "session", "data": {"pad": "x" * MAX_RELAY_BYTES}}]}).encode(),
        json.dumps({**base, "from": relay.replica}).encode(),  # this replica's own
    ]
    publisher = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        for data in hostile:
            await publisher.publish(f"{relay.channel}:share1", data)
        for channel in (f"{relay.channel}:share2", f"{relay.channel}:../share1", f"{relay.channel}:", "elsewhere:share1"):
            await publisher.publish(channel, json.dumps(base))  # other shares or other channels
        await publisher.publish(f"{relay.channel}:share1", json.dumps({**base, "syncCount": 6, "items": titled("valid")}))
    finally:
        await publisher.aclose()
    assert await _frame(viewer) == {"type": "sync", "syncCount": 6, "messages": [], "session": True, "diffs": False, "models": False}
    assert viewer.queue.empty()


async def test_events_missed_while_redis_was_away_are_announced_when_it_is_back(tmp_path: Path) -> None:
    # The publishing replica cannot authenticate until the password is lifted: the same as
    # Redis being away for it, while the listening replica stays subscribed throughout.
    server = RedisServer(tmp_path, password=PASSWORD).start()
    cut_off_hub, listening_hub = LiveHub(), LiveHub()
    channel = f"cloudsession:test:{uuid.uuid4().hex}"
    listening = RedisRelay(listening_hub, redis_client(server.url), channel)
    cut_off = RedisRelay(cut_off_hub, redis_client(f"redis://127.0.0.1:{server.port}/0"), channel)
    try:
        await listening.start()
        listening_hub.relay = listening
        await cut_off.start(wait_seconds=0.2)
        cut_off_hub.relay = cut_off
        local, remote = _viewer(cut_off_hub, "share1"), _viewer(listening_hub, "share1", FORMAT_EVENTS)
        for count in (1, 2):
            await cut_off_hub.share_synced("share1", titled(f"sync {count}"), count)  # never raises
        assert [(await _frame(local))[0]["data"]["title"] for _ in range(2)] == ["sync 1", "sync 2"]
        await asyncio.sleep(0.3)  # let the publisher fail
        assert remote.queue.empty()
        admin = redis.asyncio.Redis.from_url(server.url)
        await admin.config_set("requirepass", "")
        await admin.aclose()
        # Both syncs were queued before the first attempt failed: one resync to the latest count.
        assert json.loads(await asyncio.wait_for(remote.queue.get(), timeout=20)) == {"type": "resync", "syncCount": 2}
    finally:
        await cut_off.stop()
        await listening.stop()
        server.stop()


async def test_without_redis_url_the_hub_has_no_relay(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from factories import settings_for_tests

    from cloudsession.web.app import create_app
    from cloudsession.web.keys import LIVE

    client = await aiohttp_client(create_app(settings_for_tests(tmp_path / "data")))
    hub = client.app[LIVE]
    assert isinstance(hub, LiveHub) and hub.relay is None


# --------------------------------------------------------------------------- the setting


def test_redis_url_from_environment_and_config_file(tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}@cache.internal:6380/2"
    for environ in ({"REDIS_URL": url}, {"CLOUDSESSION_REDIS_URL": url}):
        settings = load_settings(environ=environ)
        assert settings.redis_url is not None and settings.redis_url.get_secret_value() == url
        assert PASSWORD not in repr(settings) and PASSWORD not in json.dumps(settings.redacted())
        assert settings.redacted()["redis_url"] == "redis://<redacted>@cache.internal:6380/2"
    config = tmp_path / "wrangler.toml"
    config.write_text('name = "cs"\n[vars]\nREDIS_URL = "redis://cache.internal:6379/0"\n')
    assert load_settings(config_file=config, environ={}).redacted()["redis_url"] == "redis://cache.internal:6379/0"
    assert load_settings(environ={}).redis_url is None
    with pytest.raises(ConfigError) as bad:
        load_settings(environ={"REDIS_URL": f"http://:{PASSWORD}@cache.internal"})
    assert "REDIS_URL" in str(bad.value) and PASSWORD not in str(bad.value)


def test_check_config_redacts_the_redis_password(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": f"redis://user:{PASSWORD}@cache.internal:6379/0?password={PASSWORD}"}
    result = subprocess.run(
        [sys.executable, "-m", "cloudsession", "check-config", "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert PASSWORD not in result.stdout + result.stderr
    assert json.loads(result.stdout)["redis_url"] == "redis://<redacted>@cache.internal:6379/0?<redacted>"


async def test_an_access_change_on_one_replica_disconnects_viewers_on_the_other(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    async with aiohttp.ClientSession() as http:
        creds = await create(http, a)
        events = await watch(http, a, creds, events=True)
        reference = await watch(http, a, creds)
        await call(http, "POST", f"{b.url}/api/share/{creds['id']}/privacy", {"secret": creds["secret"], "private": True})
        assert await close_code(events) == CLOSE_ACCESS_CHANGED
        assert await close_code(reference) == CLOSE_ACCESS_CHANGED
