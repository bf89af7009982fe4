"""Event hooks end to end: real ``cloudsession serve`` processes, a real HTTP receiver, real
commands; a receiver that is down and comes back, a hook that hangs, a restart, two replicas."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import factories as f
from aiohttp import web
from servers import NAMESPACE, ServerProcess, free_port, running_servers

REAL = "ses_hooks0real0session00000001"
WEBHOOK_KEY = "whsec-test-key-8f2b"  # test-only signing key, checked never to reach a payload
ADMIN = "hooks-admin-key-test"

# A command hook: writes its environment and stdin to one file per delivery; "hang" sleeps.
HOOK_SCRIPT = """
import json, os, sys, time
out = sys.argv[1]
data = sys.stdin.read()
name = os.environ["CLOUDSESSION_DELIVERY_ID"] + "-" + os.environ["CLOUDSESSION_EVENT"]
with open(os.path.join(out, name + ".json"), "w") as fh:
    json.dump({"env": dict(os.environ), "stdin": json.loads(data)}, fh)
if len(sys.argv) > 2 and sys.argv[2] == "hang":
    open(os.path.join(out, "hanging"), "w").close()
    time.sleep(60)
"""


class Receiver:
    """A webhook receiver on loopback that records every delivery; ``down`` makes it answer 503."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.down = False
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.down:
            return web.Response(status=503)
        self.received.append((dict(request.headers), body))
        return web.Response(status=204)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


def verify(headers: dict[str, str], body: bytes, key: str) -> bool:
    """The verification snippet of docs/hooks.md."""
    fields = dict(part.split("=", 1) for part in headers["X-Cloudsession-Signature"].split(","))
    expected = hmac.new(key.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


def config(tmp_path: Path, receiver: Receiver, *, hang: bool = False, idle_after: int = 2) -> list[str]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    out = tmp_path / "deliveries"
    out.mkdir(exist_ok=True)
    command = [sys.executable, str(script), str(out)] + (["hang"] if hang else [])
    path = tmp_path / "cloudsession.toml"
    path.write_text(
        f"[hooks]\nsynced_interval = 1\nidle_after = {idle_after}\npoll_seconds = 0.2\nretry_seconds = 0.2\nrequest_timeout = 2\n"
        f"[[hooks.webhooks]]\nurl = {json.dumps(receiver.url)}\nsecret_env = \"HOOK_KEY\"\n"
        f"[[hooks.commands]]\nname = \"script\"\ncommand = {json.dumps(command)}\ntimeout = 1\n"
    )
    return ["--config", str(path)]


ENV = {"HOOK_KEY": WEBHOOK_KEY, "SESSIONS_RPC_SHARED_KEY": ADMIN, "CLOUDSESSION_SWEEP_INTERVAL_SECONDS": "1"}


async def call(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_for(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for hook deliveries")
        await asyncio.sleep(0.1)


def command_deliveries(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "deliveries").glob("*.json"))]


async def test_every_event_reaches_webhooks_and_commands_once_with_public_context_only(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        server = ServerProcess(tmp_path / "data", ENV, args=config(tmp_path, receiver)).start()
        try:
            status, share = await call(server.url, "POST", "/api/share", {"sessionID": REAL, "labels": {"job": "ci-42"}})
            assert status == 200
            sid, secret = share["id"], share["secret"]
            for _ in range(3):
                item = f.item("session", f.session(REAL, title=f"Fix {REAL} bug"))  # the title mentions the real id
                assert (await call(server.url, "POST", f"/api/share/{sid}/sync", {"secret": secret, "data": [item]}))[0] == 200
            rotated = (await call(server.url, "POST", f"/api/share/{sid}/rotate", {"secret": secret}))[1]
            secret = rotated["secret"]
            assert (await call(server.url, "POST", f"/api/share/{sid}/privacy", {"secret": secret, "private": True}))[0] == 200
            assert (await call(server.url, "POST", f"/api/share/{sid}/finalize", {"secret": secret}))[0] == 200
            other = (await call(server.url, "POST", "/api/share", {"sessionID": "ses_hooks0other0session0000002"}))[1]
            assert (await call(server.url, "DELETE", f"/api/share/{other['id']}", {"secret": other["secret"]}))[0] == 200
            brief = (await call(server.url, "POST", "/api/share", {"sessionID": "ses_hooks0brief0session0000003", "ttl": 1}))[1]

            wanted = {
                ("share.created", sid), ("share.synced", sid), ("share.rotated", sid), ("share.privacy_changed", sid),
                ("share.finalized", sid), ("share.idle", sid), ("share.created", other["id"]), ("share.deleted", other["id"]),
                ("share.created", brief["id"]), ("share.expired", brief["id"]),
            }  # fmt: skip
            await wait_for(lambda: wanted <= {(e["event"], e["share"]["id"]) for e in receiver.events()}, timeout=30)
            await wait_for(lambda: wanted <= {(d["stdin"]["event"], d["stdin"]["share"]["id"]) for d in command_deliveries(tmp_path)})
            await asyncio.sleep(1.5)  # anything delivered twice would show by now
        finally:
            server.stop()

    events = receiver.events()
    counts = Counter((e["event"], e["share"]["id"]) for e in events)
    assert all(n == 1 for key, n in counts.items() if key[0] != "share.synced"), counts
    synced = [e for e in events if e["event"] == "share.synced"]
    assert 1 <= len(synced) <= 3 and synced[-1]["share"]["syncCount"] == 3  # coalesced, the count at the window's end
    assert len({e["id"] for e in events}) == len(events)
    for headers, body in receiver.received:
        assert verify(headers, body, WEBHOOK_KEY)
        assert headers["X-Cloudsession-Delivery"] == json.loads(body)["id"]
    created = next(e for e in events if e["event"] == "share.created" and e["share"]["id"] == sid)
    public_id = created["share"]["sessionId"]
    assert public_id.startswith("ses_") and public_id != REAL and created["share"]["labels"] == {"job": "ci-42"}

    # Never a credential or the real session id, in any payload or any command's environment.
    everything = b"".join(body for _, body in receiver.received).decode() + json.dumps(command_deliveries(tmp_path))
    for credential in (REAL, share["secret"], secret, rotated["readToken"], ADMIN, WEBHOOK_KEY, NAMESPACE):
        assert credential not in everything
    finalized = next(d for d in command_deliveries(tmp_path) if d["stdin"]["event"] == "share.finalized")
    env = finalized["env"]
    assert env["OPENCODE_SESSION_ID"] == public_id and env["CLOUDSESSION_SHARE_ID"] == sid
    assert env["CLOUDSESSION_SHARE_URL"] == f"{server.url}/share/{sid}" and env["CLOUDSESSION_EVENT"] == "share.finalized"
    assert env["CLOUDSESSION_SYNC_COUNT"] == "3" and env["CLOUDSESSION_LABEL_JOB"] == "ci-42"
    assert env["OPENCODE_SESSION_TITLE"] == f"Fix {public_id} bug"
    assert "SESSIONS_SHARED_SECRET" not in env and "HOOK_KEY" not in env


async def test_a_down_receiver_and_a_hanging_command_delay_nothing_and_deliveries_survive_a_restart(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        receiver.down = True
        args = config(tmp_path, receiver, hang=True, idle_after=3600)
        server = ServerProcess(tmp_path / "data", ENV, args=args).start()
        try:
            status, share = await call(server.url, "POST", "/api/share", {"sessionID": REAL})
            assert status == 200
            await wait_for(lambda: (tmp_path / "deliveries" / "hanging").exists())
            # The command hook is hanging and the receiver refuses: syncs are answered all the same.
            item = f.item("session", f.session(REAL))
            assert (await call(server.url, "POST", f"/api/share/{share['id']}/sync", {"secret": share["secret"], "data": [item]}))[0] == 200
            assert (tmp_path / "deliveries" / "hanging").exists() and receiver.received == []
        finally:
            server.stop()  # with the webhook delivery still owed

        receiver.down = False
        restarted = ServerProcess(tmp_path / "data", ENV, args=args).start()
        try:
            await wait_for(lambda: {"share.created", "share.synced"} <= {e["event"] for e in receiver.events()}, timeout=30)
            await asyncio.sleep(1.0)
        finally:
            restarted.stop()
    counts = Counter(e["id"] for e in receiver.events())
    assert all(n == 1 for n in counts.values()), counts


async def test_with_two_replicas_each_event_fires_once(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        with running_servers(2, tmp_path / "data", ENV, args=config(tmp_path, receiver)) as (a, b):
            share = (await call(a.url, "POST", "/api/share", {"sessionID": REAL}))[1]
            item = f.item("session", f.session(REAL))
            for server in (a, b, a, b):
                assert (await call(server.url, "POST", f"/api/share/{share['id']}/sync", {"secret": share["secret"], "data": [item]}))[0] == 200
            # share.idle is noticed by both replicas' scans; recorded and delivered once.
            await wait_for(lambda: "share.idle" in {e["event"] for e in receiver.events()}, timeout=30)
            await asyncio.sleep(2.0)
    counts = Counter(e["event"] for e in receiver.events())
    assert counts["share.created"] == 1 and counts["share.idle"] == 1 and 1 <= counts["share.synced"] <= 2, counts
    assert len({e["id"] for e in receiver.events()}) == len(receiver.events())
