"""The durable client against real server processes, over REST and over Cap'n Web HTTP batch:
lost responses, restarts, redeem and replay, rotation, and the push command killed mid-way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from servers import ServerProcess

from cloudsession.client.ids import uuid7
from cloudsession.client.outbox import ACKED, Backoff, NewOp, Outbox
from cloudsession.client.sync import DeliveryFailed, DurableClient
from cloudsession.client.transport import TransportError, open_transport
from cloudsession.rpc.codec import RpcLimits, decode

ROOT = Path(__file__).resolve().parents[1]
TRANSPORTS = ["rest", "rpc"]
FAST = Backoff(base=0.01, cap=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("durable") / "data").start()
    yield proc
    proc.stop()


class LosingProxy:
    """A reverse proxy in front of the real server that forwards an append to it, waits for
    the server's answer, and then drops the connection instead of returning it: the server
    applied the ops, the client never hears so."""

    def __init__(self, upstream: str, lose: int) -> None:
        self.upstream = upstream
        self.lose = lose
        self.appends: list[tuple[bytes, bytes]] = []  # (request body, upstream answer)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-opencode-share-key")}
        async with aiohttp.ClientSession() as http, http.request(request.method, self.upstream + request.path_qs, data=body, headers=headers) as resp:
            status, answer, kind = resp.status, await resp.read(), resp.content_type
        is_append = request.path.endswith("/ops") or b'"appendOps"' in body
        if is_append:
            self.appends.append((body, answer))
            if len(self.appends) <= self.lose:
                assert request.transport is not None
                request.transport.abort()  # the answer is lost on the way back
                raise ConnectionResetError("answer dropped by the test proxy")
        return web.Response(status=status, body=answer, content_type=kind)

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def message_ops(count: int, prefix: str) -> list[NewOp]:
    ops = []
    for n in range(count):
        message = NewOp(uuid7(), {"type": "message", "data": {"id": f"msg_{prefix}_{n:04d}", "role": "user"}})
        part = NewOp(uuid7(), {"type": "part", "data": {"id": f"prt_{prefix}_{n:04d}", "messageID": message.item["data"]["id"], "type": "text", "text": "x"}}, (message.op_id,))
        ops += [message, part]
    return ops


async def get_json(url: str, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url + path) as resp:
        return resp.status, await resp.json()


def client_for(tmp_path: Path, url: str, kind: str, session_id: str, **kwargs) -> tuple[DurableClient, Outbox]:
    outbox = Outbox(tmp_path / f"outbox-{kind}.sqlite", backoff=FAST)
    share = outbox.share(url, session_id)
    return DurableClient(outbox, open_transport(kind, url), share, **kwargs), outbox


def server_answer(raw: bytes, kind: str) -> dict:
    """The appendOps answer inside a proxied response body."""
    if kind == "rest":
        return json.loads(raw)
    for line in raw.decode().split("\n"):
        message = json.loads(line)
        if message[0] == "resolve":
            return decode(message[2], RpcLimits()).value
    raise AssertionError(raw)


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_lost_response_then_retry_is_a_duplicate_ack_and_one_final_state(server, tmp_path, kind):
    proxy = LosingProxy(server.url, lose=1)
    async with proxy as proxy_url:
        client, outbox = client_for(tmp_path, proxy_url, kind, f"ses_lostresponse{kind}00000001", batch_size=10)
        ops = message_ops(5, kind)
        outbox.enqueue(client.share, ops)
        try:
            counts = await client.deliver()
        finally:
            await client.transport.close()
    assert counts[ACKED] == 10
    # The same batch went out twice: the server applied it the first time and acknowledged the
    # retry with duplicates at the same cursors.
    assert len(proxy.appends) == 2
    (first_body, first_raw), (second_body, second_raw) = proxy.appends
    assert first_body == second_body
    first, second = server_answer(first_raw, kind), server_answer(second_raw, kind)
    assert [a["op_id"] for a in first["applied"]] == [o.op_id for o in ops]
    assert second["applied"] == [] and second["duplicates"] == first["applied"] and second["cursor"] == first["cursor"] == 10
    status, data = await get_json(server.url, f"/api/share/{client.share.share_id}")
    assert status == 200 and data["metadata"]["syncCount"] == 10
    assert len(data["messages"]) == 5 and len(data["parts"]) == 5
    assert outbox.counts(client.share)[ACKED] == 10
    outbox.close()


async def post_json(url: str, path: str, body: dict, method: str = "POST") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.request(method, url + path, json=body) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_cursor_continues_across_redeem_and_a_client_restart(server, tmp_path, kind):
    session_id = f"ses_cursorcontinues{kind}0001"
    client, outbox = client_for(tmp_path, server.url, kind, session_id, batch_size=4)
    outbox.enqueue(client.share, message_ops(3, f"c{kind}"))
    await client.deliver()
    await client.transport.close()
    outbox.close()
    # A new process: a fresh outbox object on the same file, a fresh transport.
    client, outbox = client_for(tmp_path, server.url, kind, session_id, batch_size=4)
    assert client.share.cursor == 6
    redeemed = await client.connect()
    assert redeemed["cursor"] == 6 and redeemed["capabilityEpoch"] == 0
    more = message_ops(2, f"d{kind}")
    outbox.enqueue(client.share, more)
    batch = outbox.next_batch(client.share, 10)
    answer = await client.transport.append_ops(client.share.share_id, client.share.secret, 0, batch.envelopes)
    assert [a["cursor"] for a in answer["applied"]] == [7, 8, 9, 10]
    outbox.record_answer(client.share, batch, answer)
    assert (await client.transport.redeem(client.share.share_id, client.share.secret))["cursor"] == 10
    await client.transport.close()
    outbox.close()


async def test_replay_from_the_servers_cursor_after_the_share_was_lost(server, tmp_path):
    client, outbox = client_for(tmp_path, server.url, "rest", "ses_replayafterloss000000001")
    outbox.enqueue(client.share, message_ops(4, "lost"))
    await client.deliver()
    share_id, secret = client.share.share_id, client.share.secret
    assert (await post_json(server.url, f"/api/share/{share_id}", {"secret": secret}, method="DELETE"))[0] == 200
    # Nothing is pending, but redeem shows the server at cursor 0 (the share was re-created):
    # everything it acknowledged before is sent again.
    counts = await client.deliver()
    assert counts[ACKED] == 8
    status, data = await get_json(server.url, f"/api/share/{share_id}")
    assert status == 200 and data["metadata"]["syncCount"] == 8 and len(data["parts"]) == 4
    await client.transport.close()
    outbox.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_rotation_refuses_the_old_secret_and_the_owner_recovers(server, tmp_path, kind):
    client, outbox = client_for(tmp_path, server.url, kind, f"ses_rotation{kind}000000000001")
    outbox.enqueue(client.share, message_ops(1, f"r{kind}"))
    await client.deliver()
    share_id, old = client.share.share_id, client.share.secret
    status, rotated = await post_json(server.url, f"/api/share/{share_id}/rotate", {"secret": old})
    assert status == 200 and rotated["capabilityEpoch"] == 1
    envelope = {"op_id": uuid7(), "batch_id": "x", "seq": 0, "item": {"type": "message", "data": {"id": "m_old", "role": "user"}}}
    for call in (client.transport.append_ops(share_id, old, 0, [envelope]), client.transport.redeem(share_id, old)):
        with pytest.raises(TransportError) as refused:
            await call
        assert refused.value.status == 403
    # The owner holds the session ID: create answers with the current secret and delivery goes on.
    outbox.enqueue(client.share, message_ops(1, f"s{kind}"))
    counts = await client.deliver()
    assert counts[ACKED] == 4 and client.share.secret == rotated["secret"] and client.share.epoch == 1
    await client.transport.close()
    outbox.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_read_token_cannot_append(server, kind):
    transport = open_transport(kind, server.url)
    try:
        share = await transport.create(f"ses_readtokenonly{kind}000001", {"private": True})
        assert share["readToken"].startswith("rt_")
        envelope = {"op_id": uuid7(), "batch_id": "x", "seq": 0, "item": {"type": "message", "data": {"id": "m", "role": "user"}}}
        with pytest.raises(TransportError) as refused:
            await transport.append_ops(share["id"], share["readToken"], 0, [envelope])
        assert refused.value.status == 403
        assert (await get_json(server.url, f"/api/share/{share['id']}?token={share['readToken']}"))[1]["messages"] == []
    finally:
        await transport.close()


async def test_expired_share_answers_410_and_the_servers_sweep_deletes_it(tmp_path):
    data_dir = tmp_path / "data"
    proc = ServerProcess(data_dir, {"CLOUDSESSION_SWEEP_INTERVAL_SECONDS": "0.3"}).start()
    try:
        for kind in TRANSPORTS:
            client, outbox = client_for(tmp_path, proc.url, kind, f"ses_expiring{kind}000000000001", create_options={"ttl": 1})
            outbox.enqueue(client.share, message_ops(1, f"e{kind}"))
            await client.deliver()
            share_id = client.share.share_id
            assert list(data_dir.rglob(f"*{share_id}*"))
            await asyncio.sleep(1.1)
            with pytest.raises(TransportError) as gone:
                await client.transport.redeem(share_id, client.share.secret)
            assert gone.value.status in (410, 404)  # 404 once the sweep has run
            for _ in range(100):
                if not [p for p in data_dir.rglob(f"*{share_id}*") if p.is_file()]:
                    break
                await asyncio.sleep(0.1)
            assert not [p for p in data_dir.rglob(f"*{share_id}*") if p.is_file()]
            assert (await get_json(proc.url, f"/api/share/{share_id}"))[0] == 404
            await client.transport.close()
            outbox.close()
    finally:
        proc.stop()


async def test_gc_command_deletes_expired_shares_and_a_client_gives_up_after_410(tmp_path):
    data_dir = tmp_path / "data"
    proc = ServerProcess(data_dir, {"CLOUDSESSION_SWEEP_INTERVAL_SECONDS": "0"}).start()
    try:
        client, outbox = client_for(tmp_path, proc.url, "rest", "ses_gccommand0000000000001", create_options={"ttl": 1})
        outbox.enqueue(client.share, message_ops(1, "gc"))
        await client.deliver()
        share_id = client.share.share_id
        keep = (await post_json(proc.url, "/api/share", {"sessionID": "ses_gccommand00000000000kept"}))[1]
        await asyncio.sleep(1.1)
        assert (await get_json(proc.url, f"/api/share/{share_id}"))[0] == 410
        # A client with ops still queued learns the share is gone and gives them up.
        outbox.enqueue(client.share, message_ops(1, "late"))
        with pytest.raises(DeliveryFailed, match="410"):
            await client.deliver()
        assert outbox.counts(client.share) == {"pending": 0, "in_flight": 0, "acked": 2, "failed": 2}
        await client.transport.close()
        outbox.close()
        command = [sys.executable, "-m", "cloudsession", "gc", "--json", "--data-dir", str(data_dir)]
        done = await asyncio.to_thread(subprocess.run, command, env=proc.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["expired"] == [share_id]
        assert (await get_json(proc.url, f"/api/share/{share_id}"))[0] == 404
        assert (await get_json(proc.url, f"/api/share/{keep['id']}"))[0] == 200
    finally:
        proc.stop()


# -- cloudsession push, killed and resumed ----------------------------------------------------------


def export_file(path: Path, session_id: str, messages: int, parts: int) -> int:
    doc = {
        "info": {"id": session_id, "title": "pushed", "directory": "/d", "time": {"created": 1, "updated": 2}},
        "messages": [
            {
                "info": {"id": f"msg_{n:05d}", "sessionID": session_id, "role": "user", "time": {"created": n}},
                "parts": [
                    {"id": f"prt_{n:05d}_{k}", "sessionID": session_id, "messageID": f"msg_{n:05d}", "type": "text", "text": "t" * 200}
                    for k in range(parts)
                ],
            }
            for n in range(messages)
        ],
    }
    path.write_text(json.dumps(doc))
    return 1 + messages * (1 + parts)


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_push_killed_mid_way_resumes_and_applies_every_op_once(server, tmp_path, kind):
    session_id = f"ses_pushkilled{kind}0000000001"
    total = export_file(tmp_path / "session.json", session_id, messages=80, parts=3)
    outbox_path = tmp_path / "outbox.sqlite"
    cmd = [sys.executable, "-m", "cloudsession", "push", str(tmp_path / "session.json"), "--server", server.url,
           "--transport", kind, "--outbox", str(outbox_path), "--batch-size", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert first.stdout is not None
    lines = [first.stdout.readline() for _ in range(3)]
    assert f"{total} ops queued" in lines[0] and all("acknowledged" in line for line in lines[1:]), lines
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    outbox = Outbox(outbox_path)
    share = outbox.share(server.url, session_id)
    counts = outbox.counts(share)
    assert 0 < counts[ACKED] < total, counts
    outbox.close()

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and f"done: {total} ops delivered, 0 failed" in second.stdout
    status, data = asyncio.run(get_json(server.url, f"/api/share/{share.share_id}"))
    # Every op was applied exactly once: one sync per op, whatever was in flight at the kill.
    assert status == 200 and data["metadata"]["syncCount"] == total
    assert len(data["messages"]) == 80 and len(data["parts"]) == 240 and data["session"]["title"] == "pushed"
    # Running it again has nothing left to do.
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert third.returncode == 0 and f"done: {total} ops delivered" in third.stdout
    assert asyncio.run(get_json(server.url, f"/api/share/{share.share_id}"))[1]["metadata"]["syncCount"] == total


async def test_capability_privacy_and_expiry_calls_over_rpc(server):
    rpc = open_transport("rpc", server.url)
    try:
        share = await rpc.create("ses_rpccalls0000000000000001", {})
        sid, secret = share["id"], share["secret"]
        token = (await rpc.call("getReadToken", sid, secret))["readToken"]
        assert (await rpc.call("setPrivate", sid, secret, True)) == {"private": True, "readToken": token, "capabilityEpoch": 0}
        assert (await get_json(server.url, f"/api/share/{sid}"))[0] == 404
        assert (await get_json(server.url, f"/api/share/{sid}?token={token}"))[0] == 200
        with pytest.raises(TransportError) as bad:
            await rpc.call("setPrivate", sid, secret, "yes")
        assert bad.value.status == 400
        expiry = await rpc.call("setExpiry", sid, secret, {"ttl": 600})
        assert (await rpc.redeem(sid, secret))["expiresAt"] == expiry["expiresAt"]
        assert await rpc.call("setExpiry", sid, secret, None) == {"expiresAt": None}
        rotated = await rpc.call("rotateSecret", sid, secret)
        assert rotated["capabilityEpoch"] == 1 and rotated["readToken"] != token
        with pytest.raises(TransportError) as refused:
            await rpc.call("syncShare", sid, secret, [])
        assert refused.value.status == 403 and refused.value.message == "Invalid secret"
        assert (await rpc.call("syncShare", sid, rotated["secret"], []))["success"] is True
        assert (await rpc.create("ses_rpccalls0000000000000001", {}))["secret"] == rotated["secret"]
    finally:
        await rpc.close()
