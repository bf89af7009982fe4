"""Hardening of the HTTP doors against anonymous clients, in process: compressed bodies, bodies
announced too large, client faults in the log, live viewers bounded in bytes and per address,
page numbers that are digits but not ASCII. The same attacks against a real ``cloudsession
serve`` process, with its memory and its connections measured, are in
``test_hardening_serve.py``."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from factories import settings_for_tests
from view_data import SES, item, part, session, user

from cloudsession.live.hub import CLOSE_TOO_SLOW, FORMAT_EVENTS, FORMAT_REFERENCE, LiveHub, Viewer
from cloudsession.web.app import create_app
from cloudsession.web.keys import LIVE, SERVICE

ADMIN_KEY = "admin-key-for-tests-0123456789"


@pytest.fixture
async def web(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await aiohttp_client(create_app(settings_for_tests(tmp_path / "data", public_listing=True)))


async def create(web) -> dict[str, str]:  # type: ignore[no-untyped-def]
    response = await web.post("/api/share", json={"sessionID": SES})
    assert response.status == 200
    return await response.json()


async def sync(web, creds: dict[str, str], items: list[dict[str, Any]]) -> int:  # type: ignore[no-untyped-def]
    response = await web.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": items})
    assert response.status == 200, await response.text()
    return int((await response.json())["syncCount"])


def store_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def raw_exchange(web, request: bytes, *, read_seconds: float = 5.0) -> bytes:  # type: ignore[no-untyped-def]
    """Send raw bytes on a fresh connection; return the first answer (head and body), or what
    arrived before the server closed or ``read_seconds`` passed without anything."""
    reader, writer = await asyncio.open_connection(web.host, web.port)
    try:
        writer.write(request)
        await writer.drain()
        received = b""
        while True:
            head, sep, body = received.partition(b"\r\n\r\n")
            lengths = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
            if sep and len(body) >= (lengths[0] if lengths else 0):
                return received
            try:
                chunk = await asyncio.wait_for(reader.read(65536), read_seconds)
            except TimeoutError:
                return received
            if not chunk:
                return received
            received += chunk
    finally:
        writer.close()


# --------------------------------------------------------------------------- compressed bodies


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_bodies_are_refused_before_anything_is_inflated(web, tmp_path: Path, encoding: str) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    await sync(web, creds, [item("session", session(title="before"))])
    await web.app[SERVICE].settle_index()  # the index entry lands just after the answer
    before = store_bytes(tmp_path / "data" / "store")
    # A valid sync once inflated: were it inflated, it would be applied.
    plain = json.dumps({"secret": creds["secret"], "data": [item("session", session(title="after"))]}).encode()
    body = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain) if encoding == "deflate" else b"\x8b\x00\x80" + plain + b"\x03"
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    answer = await web.post(f"/api/share/{creds['id']}/sync", data=body, headers=headers)
    assert answer.status == 415
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Encoding" in (await answer.json())["error"]
    created = await web.post("/api/share", data=gzip.compress(b'{"sessionID":"ses_other0000000000000000000000"}'), headers=headers)
    assert created.status == 415
    assert store_bytes(tmp_path / "data" / "store") == before


async def test_compressed_rpc_batches_and_sign_ins_are_refused(web) -> None:  # type: ignore[no-untyped-def]
    batch = await web.post("/rpc/share", data=gzip.compress(b'["pull",1]'), headers={"Content-Encoding": "gzip"})
    assert batch.status == 415 and batch.content_type == "application/json"
    assert "Content-Encoding" in (await batch.json())["error"]
    form = gzip.compress(b"key=" + b"a" * 100_000)  # 100 KB once inflated, 200 bytes on the wire
    login = await web.post(
        "/sessions/login",
        data=form,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert login.status == 415 and login.content_type == "text/html"


@pytest.mark.parametrize("path", ["/rpc/share", "/ws/{id}"])
async def test_websockets_never_negotiate_compression(web, path: str) -> None:  # type: ignore[no-untyped-def]
    # With permessage-deflate a 60 KB frame could stand for a 64 MiB message on /rpc/share, and
    # every viewer would compress its own copy of each frame.
    creds = await create(web)
    ws = await web.ws_connect(path.format(id=creds["id"]), compress=15)
    assert ws.compress == 0
    await ws.close()


# --------------------------------------------------------------------------- announced sizes


@pytest.mark.parametrize("path", ["/api/share/{id}/sync", "/api/share", "/rpc/share"])
async def test_a_content_length_above_the_limit_is_refused_before_the_body(aiohttp_client, tmp_path: Path, path: str) -> None:  # type: ignore[no-untyped-def]
    web = await aiohttp_client(create_app(settings_for_tests(tmp_path / "d", limits={"max_body_bytes": 4096})))
    creds = await create(web)
    head = (
        f"POST {path.format(id=creds['id'])} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    ).encode()
    answer = await raw_exchange(web, head + b'{"secret":')  # the rest never comes
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"4096 bytes" in rest
    assert b"connection: close" in rest.lower()


# --------------------------------------------------------------------------- client faults in the log


async def test_parser_errors_and_aborted_bodies_are_one_line_without_traceback(web, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    caplog.set_level(logging.DEBUG)
    # A request that breaks HTTP (a header line without a colon).
    broken = await raw_exchange(web, b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    assert broken.split(b"\r\n")[0].endswith(b" 400 Bad Request"), broken[:100]
    # Bodies cut off in the middle, on REST and RPC.
    for path in (f"/api/share/{creds['id']}/sync", "/rpc/share"):
        reader, writer = await asyncio.open_connection(web.host, web.port)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"se".encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()
    await asyncio.sleep(0.5)
    assert (await web.get("/healthz")).status == 200
    loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert loud == [], [(r.name, r.levelname, r.getMessage()) for r in loud]
    assert any("no colon" in r.getMessage() or "Invalid header" in r.getMessage() or "BadHttpMessage" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- page numbers


async def test_non_ascii_digits_in_page_numbers_are_ignored(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    await sync(web, creds, [item("session", session()), item("message", user(1000))])
    for path in (f"/share/{creds['id']}", f"/share/{creds['id']}/fragments", "/sessions"):
        for page in ("²", "١٢", "𝟗"):
            response = await web.get(path, params={"page": page, "nav_from": page})
            assert response.status == 200, (path, page)


# --------------------------------------------------------------------------- live viewers


async def test_large_frames_reach_reading_viewers_whole(web) -> None:  # type: ignore[no-untyped-def]
    # Frames are written in 64 KiB pieces (continuation frames): what arrives must be one message.
    creds = await create(web)
    reference = await web.ws_connect(f"/ws/{creds['id']}")
    events = await web.ws_connect(f"/ws/{creds['id']}?format=events")
    assert json.loads((await events.receive()).data)["type"] == "hello"
    message = user(1000)
    items = [item("message", message)] + [item("part", part(message, "text", text=f"{n}" * 50_000)) for n in range(10)]
    count = await sync(web, creds, items)
    frame = await asyncio.wait_for(reference.receive(), 10)
    assert frame.type == aiohttp.WSMsgType.TEXT and len(frame.data) > 500_000
    assert [f["data"]["id"] for f in json.loads(frame.data)] == [i["data"]["id"] for i in items]
    event = json.loads((await asyncio.wait_for(events.receive(), 10)).data)
    assert event["syncCount"] == count and event["messages"] == [message["id"]]
    await sync(web, creds, [item("session", session(title="next"))])
    assert json.loads((await asyncio.wait_for(reference.receive(), 10)).data)[0]["data"]["title"] == "next"
    for ws in (reference, events):
        await ws.close()


async def test_viewers_per_client_address_are_capped(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    web = await aiohttp_client(create_app(settings_for_tests(tmp_path / "d", limits={"max_viewers_per_address": 3})))
    first, second = await create(web), None
    response = await web.post("/api/share", json={"sessionID": "ses_second00000000000000000000"})
    second = await response.json()

    async def connect(share_id: str) -> aiohttp.ClientWebSocketResponse | int:
        try:
            return await web.ws_connect(f"/ws/{share_id}")
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status

    # In parallel, across two shares: the cap counts handshakes still in progress.
    results = await asyncio.gather(*(connect(first["id"] if n % 2 else second["id"]) for n in range(10)))
    sockets = [r for r in results if not isinstance(r, int)]
    assert len(sockets) == 3 and sorted(r for r in results if isinstance(r, int)) == [503] * 7
    assert web.app[LIVE].viewers_from("127.0.0.1") == 3
    await sockets[0].close()
    for _ in range(100):
        if web.app[LIVE].viewers_from("127.0.0.1") == 2:
            break
        await asyncio.sleep(0.02)
    again = await connect(first["id"])
    assert not isinstance(again, int)
    for ws in [*sockets[1:], again]:
        await ws.close()


class _Sink:
    """Stands in for a socket so the queue policy can be tested without a network."""


def test_a_viewer_queue_is_bounded_in_bytes_not_only_in_frames() -> None:
    reference = Viewer(_Sink(), FORMAT_REFERENCE, max_queued_bytes=10_000)  # type: ignore[arg-type]
    reference.offer(b"x" * 50_000, 1)  # an empty queue takes any frame: one sync can be large
    reference.offer(b"y" * 100, 2)  # but nothing may wait behind more than the bound
    assert reference.closing and reference.close_code == CLOSE_TOO_SLOW
    assert reference.queue.get_nowait() is None and reference.queued_bytes == 0

    events = Viewer(_Sink(), FORMAT_EVENTS, max_queued_bytes=10_000)  # type: ignore[arg-type]
    events.offer(b"e" * 6_000, 1)
    events.offer(b"f" * 6_000, 2)
    queued = [events.queue.get_nowait() for _ in range(events.queue.qsize())]
    assert len(queued) == 1 and json.loads(queued[0] or b"") == {"type": "resync", "syncCount": 2}


def test_a_hub_counts_viewers_per_address() -> None:
    hub = LiveHub(max_viewers_per_address=2)
    viewers = [Viewer(_Sink(), FORMAT_REFERENCE, address="10.0.0.1") for _ in range(2)]  # type: ignore[arg-type]
    for n, viewer in enumerate(viewers):
        hub.add(f"share{n}", viewer)
    assert not hub.has_room("share9", "10.0.0.1") and hub.has_room("share9", "10.0.0.2")
    hub.remove("share0", viewers[0])
    hub.remove("share0", viewers[0])  # twice: counted once
    assert hub.viewers_from("10.0.0.1") == 1 and hub.has_room("share9", "10.0.0.1")


@pytest.mark.parametrize("hops", [0, 1])
async def test_the_viewer_cap_counts_the_address_a_trusted_proxy_saw(aiohttp_client, tmp_path: Path, hops: int) -> None:  # type: ignore[no-untyped-def]
    # hops 1: the test client's own address (the peer) is a trusted proxy.
    proxies = ["127.0.0.1/32"] if hops else []
    settings = settings_for_tests(tmp_path / "d", rate_limits={"trusted_proxies": proxies}, limits={"max_viewers_per_address": 1})
    web = await aiohttp_client(create_app(settings))
    creds = await create(web)

    async def connect(forwarded_for: str) -> aiohttp.ClientWebSocketResponse | int:
        try:
            return await web.ws_connect(f"/ws/{creds['id']}", headers={"X-Forwarded-For": forwarded_for})
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status

    first = await connect("198.51.100.1")
    # Entries left of the proxy's own are the client's to invent: they change nothing.
    spoofed = await connect("203.0.113.9, 198.51.100.1")
    other = await connect("198.51.100.2")
    assert not isinstance(first, int) and spoofed == 503
    if hops == 0:
        assert other == 503  # without a trusted proxy the header is ignored: one peer, one address
    else:
        assert not isinstance(other, int)
        await other.close()
    await first.close()
