"""Live updates on /ws/<id> through real WebSockets: both frame formats, the handshake checks
(426, Origin, unknown share, viewer limits), deletion, and the hub's slow-viewer handling."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from factories import settings_for_tests
from view_data import SES, item, part, rich_items, session, user

from cloudsession.live.hub import CLOSE_ACCESS_CHANGED, CLOSE_DELETED, FORMAT_EVENTS, FORMAT_REFERENCE, LiveHub, Viewer, sync_event
from cloudsession.web.app import create_app
from cloudsession.web.keys import LIVE


@pytest.fixture
async def web(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await aiohttp_client(create_app(settings_for_tests(tmp_path / "data")))


async def create(web) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return await (await web.post("/api/share", json={"sessionID": SES})).json()


async def sync(web, creds: dict[str, str], items: list[dict[str, Any]]) -> int:  # type: ignore[no-untyped-def]
    response = await web.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": items})
    assert response.status == 200
    return (await response.json())["syncCount"]


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    message = await asyncio.wait_for(ws.receive(), timeout=5)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return json.loads(message.data)


async def test_reference_frame_is_the_syncs_public_data_array(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    ws = await web.ws_connect(f"/ws/{creds['id']}")
    message = user(1000)
    items = [
        {"type": "message", "data": message, "extra": "stripped like the reference"},
        item("part", part(message, "text", text="a")),
        item("session", session()),
    ]
    await sync(web, creds, items)
    frame = await next_json(ws)
    assert [f["type"] for f in frame] == ["message", "part", "session"]
    assert all(set(f) == {"type", "data"} for f in frame)
    assert frame[0]["data"]["id"] == message["id"] and frame[1]["data"]["text"] == "a"
    # The real session id is replaced by the public one, and the secret never appears.
    raw = json.dumps(frame)
    assert SES not in raw and creds["secret"] not in raw
    assert frame[0]["data"]["sessionID"] == frame[2]["data"]["id"] != SES
    await ws.close()


async def test_events_frames_name_what_changed(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    ws = await web.ws_connect(f"/ws/{creds['id']}?format=events")
    assert await next_json(ws) == {"type": "hello", "syncCount": 0}
    items = rich_items()
    count = await sync(web, creds, items)
    event = await next_json(ws)
    assert event["type"] == "sync" and event["syncCount"] == count
    assert event["messages"] == [i["data"]["id"] for i in items if i["type"] == "message"]
    assert (event["session"], event["diffs"], event["models"]) == (True, True, True)
    only_part = next(i for i in items if i["type"] == "part")
    await sync(web, creds, [only_part])
    event = await next_json(ws)
    assert event["messages"] == [only_part["data"]["messageID"]]
    assert (event["session"], event["diffs"], event["models"]) == (False, False, False)
    await ws.close()


async def test_deletion_tells_viewers_and_closes_their_sockets(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    events = await web.ws_connect(f"/ws/{creds['id']}?format=events")
    reference = await web.ws_connect(f"/ws/{creds['id']}")
    await next_json(events)  # hello
    assert (await web.delete(f"/api/share/{creds['id']}", json={"secret": creds["secret"]})).status == 200
    assert await next_json(events) == {"type": "deleted"}
    for ws in (events, reference):
        closing = await asyncio.wait_for(ws.receive(), timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == CLOSE_DELETED
    assert web.app[LIVE].viewer_count == 0


async def test_handshake_checks(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    plain = await web.get(f"/ws/{creds['id']}", headers={"Connection": "keep-alive"})
    assert plain.status == 426 and await plain.text() == "Expected WebSocket upgrade"
    assert plain.content_type == "text/plain"
    with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
        await web.ws_connect("/ws/Nope1234")
    assert unknown.value.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as foreign:
        await web.ws_connect(f"/ws/{creds['id']}", origin="https://evil.example")
    assert foreign.value.status == 403
    host = f"http://{web.host}:{web.port}"
    same = await web.ws_connect(f"/ws/{creds['id']}", origin=host)
    public = await web.ws_connect(f"/ws/{creds['id']}", origin="http://share.test")  # PUBLIC_URL
    await same.close()
    await public.close()


async def test_viewer_limit_per_share(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    web.app[LIVE].max_viewers_per_share = 2
    first = await web.ws_connect(f"/ws/{creds['id']}")
    second = await web.ws_connect(f"/ws/{creds['id']}")
    with pytest.raises(aiohttp.WSServerHandshakeError) as full:
        await web.ws_connect(f"/ws/{creds['id']}")
    assert full.value.status == 503
    await first.close()
    await asyncio.sleep(0.05)
    third = await web.ws_connect(f"/ws/{creds['id']}")
    for ws in (second, third):
        await ws.close()


async def test_client_frames_are_ignored(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    ws = await web.ws_connect(f"/ws/{creds['id']}")
    await ws.send_str("hello?")
    await sync(web, creds, [item("session", session())])
    frame = await next_json(ws)
    assert frame[0]["type"] == "session"  # nothing echoed before the sync frame
    await ws.close()


# --------------------------------------------------------------------------- the hub (unit level)


class _Sink:
    """Stands in for a socket so the queue policy can be tested without a network."""

    closed = False


def _viewer(fmt: str) -> Viewer:
    return Viewer(_Sink(), fmt)  # type: ignore[arg-type]


async def test_slow_events_viewer_gets_one_resync_instead_of_a_backlog() -> None:
    hub = LiveHub()
    viewer = _viewer(FORMAT_EVENTS)
    hub.add("share1", viewer)
    for n in range(200):
        await hub.share_synced("share1", [item("session", {"id": "s"})], n)
    queued = [viewer.queue.get_nowait() for _ in range(viewer.queue.qsize())]
    frames = [json.loads(f) for f in queued]
    assert len(frames) < 64
    assert frames[0]["type"] == "resync"
    assert [f["type"] for f in frames[1:]] == ["sync"] * (len(frames) - 1)
    assert frames[-1]["syncCount"] == 199


async def test_slow_reference_viewer_is_disconnected() -> None:
    hub = LiveHub()
    viewer = _viewer(FORMAT_REFERENCE)
    hub.add("share1", viewer)
    for n in range(65):
        await hub.share_synced("share1", [item("session", {"id": "s"})], n)
    assert viewer.queue.get_nowait() is None and viewer.close_code == 1013


async def test_a_viewer_being_closed_stays_closed_however_many_syncs_follow() -> None:
    # A slow viewer whose access changed must be disconnected even if syncs keep coming before
    # its queue drains: the close must not be dropped to make room for a resync.
    hub = LiveHub()
    viewer = _viewer(FORMAT_EVENTS)
    hub.add("share1", viewer)
    await hub.share_access_changed("share1")
    for n in range(100):
        await hub.share_synced("share1", [item("session", {"id": "s"})], n)
    assert viewer.queue.get_nowait() is None and viewer.close_code == CLOSE_ACCESS_CHANGED


def test_sync_event_resyncs_when_too_many_messages_changed() -> None:
    items = [item("message", {"id": f"msg_{n}"}) for n in range(501)]
    assert sync_event(items, 9) == {"type": "resync", "syncCount": 9}


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int:
    """The close code the server sent, skipping frames queued before it (an events "hello")."""
    while True:
        message = await asyncio.wait_for(ws.receive(), timeout=5)
        if message.type == aiohttp.WSMsgType.CLOSE:
            return int(message.data)
        assert message.type == aiohttp.WSMsgType.TEXT, message


async def test_making_a_share_private_disconnects_viewers_without_a_token(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    viewers = [await web.ws_connect(f"/ws/{creds['id']}"), await web.ws_connect(f"/ws/{creds['id']}?format=events")]
    resp = await web.post(f"/api/share/{creds['id']}/privacy", json={"secret": creds["secret"], "private": True})
    assert resp.status == 200
    token = (await resp.json())["readToken"]
    assert [await closed_with(ws) for ws in viewers] == [CLOSE_ACCESS_CHANGED] * 2
    # The handshake is where read access is checked: without the token the share is not there.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await web.ws_connect(f"/ws/{creds['id']}")
    assert refused.value.status == 404
    ws = await web.ws_connect(f"/ws/{creds['id']}?token={token}")
    await sync(web, creds, [item("session", session())])
    assert isinstance(await next_json(ws), list)
    await ws.close()


async def test_rotation_disconnects_viewers_holding_the_old_read_token(web) -> None:  # type: ignore[no-untyped-def]
    creds = await (await web.post("/api/share", json={"sessionID": SES, "private": True})).json()
    old_token = (await (await web.post(f"/api/share/{creds['id']}/read-token", json={"secret": creds["secret"]})).json())["readToken"]
    ws = await web.ws_connect(f"/ws/{creds['id']}?token={old_token}")
    rotated = await (await web.post(f"/api/share/{creds['id']}/rotate", json={"secret": creds["secret"]})).json()
    assert await closed_with(ws) == CLOSE_ACCESS_CHANGED
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await web.ws_connect(f"/ws/{creds['id']}?token={old_token}")
    assert refused.value.status == 404
    ws = await web.ws_connect(f"/ws/{creds['id']}?token={rotated['readToken']}")
    await ws.close()


async def test_frames_never_carry_the_real_session_id_even_inside_text(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web)
    ws = await web.ws_connect(f"/ws/{creds['id']}")
    message = user(1000)
    await sync(web, creds, [item("message", message), item("part", part(message, "text", text=f"my session is {SES}"))])
    frame = await next_json(ws)
    assert SES not in json.dumps(frame)
    assert frame[1]["data"]["text"].startswith("my session is ses_") and frame[1]["data"]["text"] != f"my session is {SES}"
    await ws.close()
