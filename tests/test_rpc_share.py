"""``/rpc/share`` through HTTP and WebSocket on the app built by ``create_app``: the ShareRpc
methods against the real service and filesystem store, REST parity, auth, and the promise that a
rejected call leaves stored data untouched."""

from __future__ import annotations

import json

import aiohttp
import factories as f
import pytest
from factories import settings_for_tests

from cloudsession.web.app import create_app

SID = "ses_rpc_share_test_000001"


def call(method, *args, on=0):
    return ["push", ["pipeline", on, [method], list(args)]]


def escape(value):
    """Arrays as the client sends them (``[[...]]``), recursively."""
    if isinstance(value, list):
        return [[escape(v) for v in value]]
    if isinstance(value, dict):
        return {k: escape(v) for k, v in value.items()}
    return value


async def rpc(client, *messages, headers=None):
    """One batch; returns the HTTP status and the parsed answer lines."""
    body = "\n".join(json.dumps(m) for m in messages)
    resp = await client.post("/rpc/share", data=body, headers=headers or {})
    text = await resp.text()
    if resp.status != 200:
        return resp.status, json.loads(text)
    return 200, [json.loads(line) for line in text.split("\n") if line]


async def rpc_call(client, method, *args):
    status, answer = await rpc(client, call(method, *args), ["pull", 1])
    assert status == 200, answer
    [(kind, export_id, value)] = answer
    assert export_id == 1
    return kind, value


async def data(client, share_id):
    resp = await client.get(f"/api/share/{share_id}/data")
    return resp.status, await resp.json()


async def test_create_matches_rest_and_is_idempotent(client):
    kind, share = await rpc_call(client, "createShare", SID)
    assert kind == "resolve" and list(share) == ["id", "secret", "url"]
    rest = await (await client.post("/api/share", json={"sessionID": SID})).json()
    assert share == rest
    assert await rpc_call(client, "createShare", SID) == ("resolve", share)


async def test_create_with_initial_data_is_one_sync(client):
    items = [f.item("session", f.session(SID, title="initial")), f.item("message", f.user_message(SID, id="msg_1"))]
    kind, share = await rpc_call(client, "createShare", SID, escape(items))
    assert kind == "resolve"
    status, stored = await data(client, share["id"])
    assert status == 200
    assert [i["type"] for i in stored if i["type"] in ("session", "message")] == ["session", "message"]
    assert stored[0]["data"]["title"] == "initial"
    meta = await (await client.get(f"/api/share/{share['id']}/metadata")).json()
    assert meta["syncCount"] == 1
    assert await rpc_call(client, "syncShare", share["id"], share["secret"], [[]]) == ("resolve", {"success": True, "syncCount": 2})


async def test_pipelined_create_and_sync_in_one_batch(client):
    items = [f.item("session", f.session(SID, title="pipelined"))]
    status, answer = await rpc(
        client,
        call("createShare", SID),
        call("syncShare", ["pipeline", 1, ["id"]], ["pipeline", 1, ["secret"]], escape(items)),
        ["pull", 1],
        ["pull", 2],
    )
    assert status == 200
    share = answer[0][2]
    assert answer == [["resolve", 1, share], ["resolve", 2, {"success": True, "syncCount": 1}]]
    assert (await data(client, share["id"]))[1][0]["data"]["title"] == "pipelined"


async def test_sync_stores_what_json_stringify_would(client):
    _, share = await rpc_call(client, "createShare", SID)
    session = f.session(SID, title="dates")
    session["time"] = {"created": ["date", 0], "archived": ["undefined"]}
    session["tags"] = [[1, ["undefined"], ["inf"]]]
    kind, value = await rpc_call(client, "syncShare", share["id"], share["secret"], [[{"type": "session", "data": session}]])
    assert kind == "resolve", value
    stored = (await data(client, share["id"]))[1][0]["data"]
    assert stored["time"] == {"created": "1970-01-01T00:00:00.000Z"}
    assert stored["tags"] == [1, None, None]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (lambda s: [s["id"], "wrong-secret", [[]]], ["error", "Error", "Invalid secret"]),
        (lambda s: ["nope", s["secret"], [[]]], ["error", "Error", "Share not found"]),
        (lambda s: ["../etc", s["secret"], [[]]], ["error", "Error", "Share not found"]),
        (lambda s: [7, s["secret"], [[]]], ["error", "TypeError", "id must be a string"]),
        (lambda s: [s["id"], None, [[]]], ["error", "TypeError", "secret must be a string"]),
    ],
)
async def test_sync_errors_are_rejections_and_change_nothing(client, args, error):
    _, share = await rpc_call(client, "createShare", SID, escape([f.item("session", f.session(SID, title="before"))]))
    before = await data(client, share["id"])
    kind, value = await rpc_call(client, "syncShare", *args(share))
    assert (kind, value) == ("reject", error)
    assert await data(client, share["id"]) == before


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"not": "an array"}, "must be an array"),
        ([[{"type": "weird", "data": 1}]], "unknown item type 'weird'"),
        ([[{"type": "session", "data": {"id": "x", "b": ["bytes", "AQID"]}}]], "data.0.data.b holds a value of type bytes"),
        ([[{"type": "session", "data": {"id": "x", "n": ["bigint", "5"]}}]], "holds a value of type BigInt"),
        ([[{"type": "session", "data": {"id": "\ud800"}}]], "lone surrogate"),
    ],
)
async def test_invalid_sync_data_is_a_type_error_and_changes_nothing(client, items, message):
    _, share = await rpc_call(client, "createShare", SID)
    before = await data(client, share["id"])
    kind, value = await rpc_call(client, "syncShare", share["id"], share["secret"], items)
    assert kind == "reject" and value[1] == "TypeError" and message in value[2], value
    assert await data(client, share["id"]) == before


async def test_limits_match_rest(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(settings_for_tests(tmp_path / "d", limits={"max_items_per_sync": 2})))
    _, share = await rpc_call(client, "createShare", SID)
    items = [f.item("message", f.user_message(SID, id=f"msg_{i}")) for i in range(3)]
    kind, value = await rpc_call(client, "syncShare", share["id"], share["secret"], escape(items))
    assert (kind, value) == ("reject", ["error", "Error", "Too many items in one sync: 3 (limit 2)"])


async def test_delete(client):
    _, share = await rpc_call(client, "createShare", SID)
    assert await rpc_call(client, "deleteShare", share["id"], "bad") == ("reject", ["error", "Error", "Invalid secret"])
    assert (await data(client, share["id"]))[0] == 200
    assert await rpc_call(client, "deleteShare", share["id"], share["secret"]) == ("resolve", {"success": True})
    assert (await data(client, share["id"]))[0] == 404
    assert await rpc_call(client, "deleteShare", share["id"], share["secret"]) == ("reject", ["error", "Error", "Share not found"])


@pytest.mark.parametrize("method", ["probeValue", "probeCallback", "noSuchMethod", "_items", "_service", "constructor"])
async def test_only_the_contract_is_exposed(client, method):
    assert await rpc_call(client, method, 1) == ("reject", ["error", "TypeError", f"'{method}' is not a function."])


async def test_internal_failures_are_generic(client, monkeypatch):
    from cloudsession.shares.service import ShareService

    async def broken(self, *args, **kwargs):
        raise RuntimeError("disk on fire at /var/secret/path")

    monkeypatch.setattr(ShareService, "sync", broken)
    _, share = await rpc_call(client, "createShare", SID)
    assert await rpc_call(client, "syncShare", share["id"], share["secret"], [[]]) == ("reject", ["error", "Error", "Internal error"])


async def test_live_viewers_are_notified_like_a_rest_sync(client):
    _, share = await rpc_call(client, "createShare", SID)
    async with client.ws_connect(f"/ws/{share['id']}") as viewer:
        item = f.item("message", f.user_message(SID, id="msg_live"))
        assert (await rpc_call(client, "syncShare", share["id"], share["secret"], escape([item])))[0] == "resolve"
        frame = await viewer.receive(timeout=5)
        assert frame.type is aiohttp.WSMsgType.TEXT
        assert "msg_live" in frame.data and SID not in frame.data and share["secret"] not in frame.data


async def test_websocket_session(client):
    async with client.ws_connect("/rpc/share") as ws:
        for message in (call("createShare", SID), ["pull", 1], call("syncShare", ["pipeline", 1, ["id"]], ["pipeline", 1, ["secret"]], [[]]), ["pull", 2]):
            await ws.send_str(json.dumps(message))
        answers = sorted([json.loads((await ws.receive(timeout=5)).data) for _ in range(2)], key=lambda m: m[1])
        assert answers[0][0] == "resolve" and answers[1] == ["resolve", 2, {"success": True, "syncCount": 1}]


# -- auth -------------------------------------------------------------------------------------------


@pytest.fixture
async def keyed(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(settings_for_tests(tmp_path / "keyed", rpc_shared_key="k3y")))


@pytest.mark.parametrize("headers", [{}, {"x-opencode-share-key": "wrong"}, {"x-opencode-share-key": "K3Y"}, {"x-opencode-share-key": ""}])
async def test_key_required_when_configured(keyed, headers):
    # A malformed body proves nothing was read: the answer is 401, not 400.
    resp = await keyed.post("/rpc/share", data="not json", headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/json"
    assert await resp.text() == '{"error":"Unauthorized"}'
    assert "Access-Control-Allow-Origin" not in resp.headers
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await keyed.ws_connect("/rpc/share", headers=headers)
    assert info.value.status == 401


async def test_key_accepted(keyed):
    status, answer = await rpc(keyed, call("createShare", SID), ["pull", 1], headers={"x-opencode-share-key": "k3y"})
    assert status == 200 and answer[0][0] == "resolve"
    async with keyed.ws_connect("/rpc/share", headers={"x-opencode-share-key": "k3y"}) as ws:
        await ws.send_str(json.dumps(call("createShare", SID)))
        await ws.send_str(json.dumps(["pull", 1]))
        assert json.loads((await ws.receive(timeout=5)).data) == answer[0]


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "PUT"])
async def test_other_methods_after_auth(keyed, method):
    assert (await keyed.request(method, "/rpc/share")).status == 401
    resp = await keyed.request(method, "/rpc/share", headers={"x-opencode-share-key": "k3y"})
    assert resp.status == 400
    assert await resp.text() == "This endpoint only accepts POST or WebSocket requests."


async def test_body_limit_is_413(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(settings_for_tests(tmp_path / "d", limits={"max_body_bytes": 4096})))
    status, answer = await rpc(client, call("createShare", SID, escape([f.item("session", f.session(SID, title="x" * 5000))])), ["pull", 1])
    assert status == 413 and "maximum size of 4096 bytes" in answer["error"]
