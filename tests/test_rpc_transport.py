"""The aiohttp transports through real HTTP and WebSocket connections, with the toy target:
batch framing and error statuses, WebSocket concurrency, releases, aborts and closes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from rpc_toy import Toy, rpc_handler

from cloudsession.rpc.codec import RpcLimits
from cloudsession.rpc.transport import WRONG_METHOD_TEXT

SMALL = RpcLimits(max_message_bytes=2048, max_batch_bytes=4096, max_pushes_per_batch=5, max_concurrent_calls=3)


@pytest.fixture
async def toy(aiohttp_client):
    """A client for an app serving a fresh Toy per session at /rpc, and /small with tight limits."""
    mains: list[Toy] = []

    def factory(request: web.Request) -> Toy:
        mains.append(Toy())
        return mains[-1]

    app = web.Application()
    app.router.add_route("*", "/rpc", rpc_handler(factory))
    app.router.add_route("*", "/small", rpc_handler(factory, SMALL))
    client = await aiohttp_client(app)
    client.mains = mains
    return client


def lines(*messages) -> str:
    return "\n".join(json.dumps(m) for m in messages)


def push(method, *args, on=0):
    return ["push", ["pipeline", on, [method], list(args)]]


async def batch(client, body, path="/rpc"):
    resp = await client.post(path, data=body.encode() if isinstance(body, str) else body)
    text = await resp.text()
    return resp, text


# -- HTTP batch ------------------------------------------------------------------------------------


async def test_batch_answers_every_pulled_id(toy):
    resp, text = await batch(toy, lines(push("make", "a"), push("join", ["pipeline", 1, ["id"]], ["pipeline", 1, ["secret"]]), ["pull", 1], ["pull", 2]))
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert text.split("\n") == [
        '["resolve",1,{"id":"id-a","secret":"secret-a","list":[[1,[[2,3]]]]}]',
        '["resolve",2,"id-a/secret-a"]',
    ]


async def test_unpulled_calls_run_but_are_not_awaited(toy):
    resp, text = await batch(toy, lines(push("slow", 300, "unpulled"), push("echo", 1), ["pull", 2]))
    assert (resp.status, text) == (200, '["resolve",2,1]')
    assert toy.mains[-1].calls == [], "the response did not wait for the slow unpulled call"
    await asyncio.sleep(0.4)
    assert toy.mains[-1].calls == ["unpulled"], "but it still ran"


@pytest.mark.parametrize("body", ["", "\n"])
async def test_empty_batch(toy, body):
    resp, text = await batch(toy, body)
    assert (resp.status, text) == (200, "")


async def test_trailing_newline_and_crlf_are_tolerated(toy):
    resp, text = await batch(toy, '["push",["pipeline",0,["echo"],[1]]]\r\n["pull",1]\r\n')
    assert (resp.status, text) == (200, '["resolve",1,1]')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('["push",["pipeline",0,["echo"],[1]]]\n\n["pull",1]', "empty line in RPC batch"),
        ('["push",', "malformed JSON"),
        ('["pull",1]', "no such export ID: 1"),
        ('["bogus",1]', "bad RPC message"),
        ('["push",["pipeline",5,["x"],[]]]', "no such entry on exports table: 5"),
        ('["push",[1,2]]', "unknown special value"),
        ('["push",NaN]', "invalid JSON constant NaN"),
        ('["abort",["error","Error","bye"]]', "aborted by the peer: bye"),
        (b'["push","\xff"]', "not valid UTF-8"),
    ],
)
async def test_protocol_errors_are_a_clear_400(toy, body, message):
    resp, text = await batch(toy, body)
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert message in json.loads(text)["error"]


async def test_protocol_error_after_a_call_still_runs_that_call(toy):
    resp, _ = await batch(toy, lines(push("record", "x"), ["pull", 9]))
    assert resp.status == 400
    await asyncio.sleep(0.01)
    assert toy.mains[-1].calls == ["x"]


async def test_size_and_count_limits_are_413(toy):
    resp, text = await batch(toy, lines(push("echo", "x" * 5000)), path="/small")
    assert resp.status == 413 and "maximum size of 4096 bytes" in text
    resp, text = await batch(toy, lines(push("echo", "x" * 3000)), path="/small")
    assert resp.status == 413 and "maximum size of 2048 bytes" in text
    resp, text = await batch(toy, lines(*[push("echo", i) for i in range(6)]), path="/small")
    assert resp.status == 413 and "too many calls in one batch (limit 5)" in text
    resp, text = await batch(toy, lines(*[push("echo", i) for i in range(5)], ["pull", 5]), path="/small")
    assert (resp.status, text) == (200, '["resolve",5,4]')


async def test_depth_limit_is_a_400(toy):
    deep = "1"
    for _ in range(300):
        deep = '{"a":' + deep + "}"
    resp, text = await batch(toy, f'["push",["pipeline",0,["echo"],[{deep}]]]\n["pull",1]')
    assert resp.status == 400 and "maximum depth of 256" in text


async def test_calls_waiting_on_client_promises_do_not_hang_a_batch(toy):
    resp, text = await asyncio.wait_for(batch(toy, lines(push("echo", ["promise", -1]), ["pull", 1])), 5)
    assert resp.status == 200
    assert text.split("\n")[-1] == '["reject",1,["error","Error","Batch RPC request ended before the client resolved a promise."]]'


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_get_the_reference_text(toy, method):
    resp = await toy.request(method, "/rpc")
    assert resp.status == 400
    assert await resp.text() == WRONG_METHOD_TEXT


# -- WebSocket ---------------------------------------------------------------------------------


async def receive(ws, timeout=5):
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_websocket_calls_run_concurrently_and_answer_when_ready(toy):
    async with toy.ws_connect("/rpc") as ws:
        for message in (push("slow", 200, "slow"), ["pull", 1], push("echo", "fast"), ["pull", 2]):
            await ws.send_str(json.dumps(message))
        assert await receive(ws) == ["resolve", 2, "fast"]
        assert await receive(ws) == ["resolve", 1, "slow"]
        # Ids continue across calls on one connection; releases are tracked.
        await ws.send_str(json.dumps(["release", 1, 1]))
        await ws.send_str(json.dumps(push("handle", "h")))
        await ws.send_str(json.dumps(["pull", 3]))
        assert await receive(ws) == ["resolve", 3, ["export", -1]]
        await ws.send_str(json.dumps(["push", ["pipeline", -1, ["info"], []]]))
        await ws.send_str(json.dumps(["pull", 4]))
        assert await receive(ws) == ["resolve", 4, {"name": "h"}]
        await ws.send_str(json.dumps(["release", -1, 1]))
        await ws.send_str(json.dumps(["pull", 1]))  # released above: a protocol error
        assert await receive(ws) == ["abort", ["error", "Error", "no such export ID: 1"]]
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.PROTOCOL_ERROR


async def test_websocket_server_can_call_a_client_callback(toy):
    async with toy.ws_connect("/rpc") as ws:
        await ws.send_str(json.dumps(push("callback", ["export", -1], "ping")))
        await ws.send_str(json.dumps(["pull", 1]))
        assert await receive(ws) == ["push", ["pipeline", -1, [], ["ping"]]]
        assert await receive(ws) == ["pull", 1]
        await ws.send_str(json.dumps(["resolve", 1, "pong"]))
        assert [await receive(ws) for _ in range(3)] == [["release", 1, 1], ["release", -1, 1], ["resolve", 1, "pong"]]


async def test_websocket_concurrent_call_limit(toy):
    async with toy.ws_connect("/small") as ws:
        for i in range(4):
            await ws.send_str(json.dumps(push("slow", 100, f"s{i}")))
        await ws.send_str(json.dumps(["pull", 4]))
        assert await receive(ws) == ["reject", 4, ["error", "Error", "Too many concurrent calls on this connection (limit 3)."]]


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        (lambda ws: ws.send_bytes(b'["pull",1]'), "binary WebSocket frames are not supported"),
        (lambda ws: ws.send_str("not json"), "malformed JSON"),
    ],
)
async def test_websocket_protocol_errors_abort_then_close(toy, send, reason):
    async with toy.ws_connect("/rpc") as ws:
        await send(ws)
        abort = await receive(ws)
        assert abort[0] == "abort" and reason in abort[1][2]
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.PROTOCOL_ERROR


async def test_websocket_frame_size_limit(toy):
    async with toy.ws_connect("/small") as ws:
        await ws.send_str(json.dumps(push("echo", "x" * 3000)))
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_websocket_close_ends_the_session_cleanly(toy):
    ws = await toy.ws_connect("/rpc")
    await ws.send_str(json.dumps(push("slow", 100, "after close")))
    await ws.send_str(json.dumps(["pull", 1]))
    await ws.close(code=3000, message=b"RPC session was shut down by disposing the main stub")
    await asyncio.sleep(0.2)
    assert toy.mains[-1].calls == ["after close"], "a running call finishes; its answer is dropped"
    # The server is still healthy for the next session.
    resp, text = await batch(toy, lines(push("echo", 1), ["pull", 1]))
    assert (resp.status, text) == (200, '["resolve",1,1]')


async def test_websocket_bug_ends_the_session_without_details(toy, monkeypatch, caplog):
    from cloudsession.rpc.session import RpcSession

    def broken(self, text):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(RpcSession, "receive", broken)
    async with toy.ws_connect("/rpc") as ws:
        await ws.send_str(json.dumps(["pull", 1]))
        assert await receive(ws) == ["abort", ["error", "Error", "Internal error"]]
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.INTERNAL_ERROR
    assert "secret internals" in caplog.text
