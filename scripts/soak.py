#!/usr/bin/env python3
"""Soak: minutes of mixed load against real ``cloudsession serve`` processes, with faults.

Starts ``--processes`` servers (default 2) on one store: a filesystem data dir, or with ``--s3`` a
bucket on a local moto server reached through a fault-injecting proxy (S3 500s, 503 SlowDown,
delays, connections reset before and after the write landed). ``--crash`` kills one server with
SIGKILL every ``--crash-every`` seconds and restarts it. Meanwhile ``--workers`` clients create
shares, sync (the reference's /sync and the durable /ops), read (/data, the object, /metadata),
view pages, delete, and ``--viewers`` WebSocket viewers watch shares live.

It prints RSS and open sockets of every server at the start and at the end, the requests done,
a histogram of status codes, and the lost-write count: every message whose sync was
acknowledged (200) must be in its share at the end, unless that share was deleted. Exits 1 if a
write was lost or a server answered 500.

Loopback only; every loop is bounded by the deadline, and the script stops by itself.

    .venv/bin/python scripts/soak.py [--minutes 10] [--s3] [--crash] [--fault-rate 0.05] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloudsession.client.ids import uuid7  # noqa: E402

NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes ---------------------------------------------------------------------------------------


class Server:
    """One ``cloudsession serve`` process on a fixed port (a restart keeps the port)."""

    def __init__(self, data_dir: Path, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.env, self.log_path = data_dir, env, log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server not ready in {timeout}s; see {self.log_path}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def sockets(self) -> int:
        assert self.proc is not None
        count = 0
        for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                count += os.readlink(fd).startswith("socket:")
        return count


def start_moto(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto in its own process, with the test suite's write lock (its conditional writes are
    not atomic otherwise; see tests/conftest.py)."""
    port = free_port()
    code = (
        "import sys, time, logging; sys.path.insert(0, 'tests');"
        "from conftest import _install_moto_write_lock; _install_moto_write_lock();"
        "logging.getLogger('werkzeug').setLevel(logging.ERROR);"
        "from moto.server import ThreadedMotoServer;"
        f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False); s.start();"
        "time.sleep(10**7)"
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with open(log_dir / "moto.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url + "/soak", method="PUT"), timeout=1).close()  # create the bucket
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto did not start")


# -- the S3 fault proxy -----------------------------------------------------------------------------


@dataclass
class FaultProxy:
    """Forwards S3 requests to moto; a ``rate`` fraction of them meet a fault instead."""

    upstream: str
    rate: float
    rng: random.Random
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        fault = self.rng.choice(["500", "503-slowdown", "delay", "reset-before", "reset-after"]) if self.rng.random() < self.rate else None
        self.counts[fault or "forwarded"] += 1
        if fault == "500":
            return web.Response(status=500, body=_s3_error("InternalError", "We encountered an internal error."), content_type="application/xml")
        if fault == "503-slowdown":
            return web.Response(status=503, body=_s3_error("SlowDown", "Please reduce your request rate."), content_type="application/xml")
        if fault == "reset-before":
            return _reset(request)
        if fault == "delay":
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        try:
            body = await request.read()
        except ConnectionError:  # the server went away mid-request (a --crash kill)
            return _reset(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        async with self.session.request(request.method, self.upstream + request.path_qs, headers=headers, data=body, allow_redirects=False) as upstream:
            payload = await upstream.read()
            if fault == "reset-after":
                return _reset(request)  # the write landed; the answer is lost
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in ("transfer-encoding", "content-length", "content-encoding", "connection")}
            return web.Response(status=upstream.status, body=payload, headers=out_headers)


def _s3_error(code: str, message: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()


def _reset(request: web.Request) -> web.Response:
    if request.transport is not None:
        sock = request.transport.get_extra_info("socket")
        if sock is not None:  # RST rather than FIN: what a dropped connection looks like
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        request.transport.abort()
    return web.Response(status=599)  # never reaches the client


# -- the load -----------------------------------------------------------------------------------------


@dataclass
class Share:
    id: str
    secret: str
    batch: str
    seq: int = 0
    acked: set[str] = field(default_factory=set)
    deleted: bool = False


@dataclass
class Load:
    servers: list[Server]
    deadline: float
    rng: random.Random
    http: aiohttp.ClientSession
    shares: list[Share] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    actions: collections.Counter[str] = field(default_factory=collections.Counter)
    frames: int = 0
    viewer_sessions: int = 0
    rejected_ops: int = 0
    counter: int = 0

    def url(self) -> str:
        return self.rng.choice(self.servers).url

    def live_share(self) -> Share | None:
        live = [s for s in self.shares[-200:] if not s.deleted]
        return self.rng.choice(live) if live else None

    async def call(self, action: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.actions[action] += 1
        try:
            async with self.http.request(method, self.url() + path, json=body, timeout=REQUEST_TIMEOUT) as resp:
                data = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.read()
                self.statuses[str(resp.status)] += 1
                return resp.status, data
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self.statuses[f"error:{type(exc).__name__}"] += 1
            return 0, None

    async def create(self) -> None:
        status, data = await self.call("create", "POST", "/api/share", {"sessionID": f"ses_soak{uuid7().replace('-', '')[:22]}"})
        if status == 200:
            self.shares.append(Share(data["id"], data["secret"], f"soak-{data['id']}"))

    def _message(self, share: Share) -> tuple[str, list[dict[str, Any]]]:
        self.counter += 1
        mid = f"msg_soak{self.counter:08d}"
        text = "lorem ipsum " * self.rng.randint(1, 40)
        message = {"id": mid, "sessionID": "ses_soak", "role": "user", "time": {"created": int(time.time() * 1000)}}
        part = {"id": f"prt_soak{self.counter:08d}", "sessionID": "ses_soak", "messageID": mid, "type": "text", "text": text}
        return mid, [{"type": "message", "data": message}, {"type": "part", "data": part}]

    async def sync(self) -> None:
        share = self.live_share()
        if share is None:
            return await self.create()
        mid, items = self._message(share)
        status, _ = await self.call("sync", "POST", f"/api/share/{share.id}/sync", {"secret": share.secret, "data": items})
        if status == 200:
            share.acked.add(mid)

    async def ops(self) -> None:
        share = self.live_share()
        if share is None:
            return await self.create()
        mid, items = self._message(share)
        envelopes = []
        for item in items:
            share.seq += 1
            envelopes.append({"op_id": uuid7(), "batch_id": share.batch, "seq": share.seq, "item": item})
        status, data = await self.call("ops", "POST", f"/api/share/{share.id}/ops", {"secret": share.secret, "ops": envelopes})
        if status == 200:
            done = {a["op_id"] for a in data["applied"] + data["duplicates"]}
            self.rejected_ops += len(data["rejected"])
            if envelopes[0]["op_id"] in done:
                share.acked.add(mid)

    async def read(self) -> None:
        share = self.live_share()
        if share is not None:
            suffix = self.rng.choice(["/data", "", "/metadata"])
            await self.call("read", "GET", f"/api/share/{share.id}{suffix}")

    async def page(self) -> None:
        share = self.live_share()
        if share is not None:
            await self.call("page", "GET", f"/share/{share.id}")

    async def delete(self) -> None:
        live = [s for s in self.shares if not s.deleted]
        if len(live) < 20:
            return
        share = self.rng.choice(live)
        share.deleted = True  # whatever the answer: an unanswered delete may have landed
        await self.call("delete", "DELETE", f"/api/share/{share.id}", {"secret": share.secret})

    async def worker(self) -> None:
        actions = [self.create, self.sync, self.ops, self.read, self.page, self.delete]
        weights = [4, 30, 30, 25, 6, 1]
        while time.monotonic() < self.deadline:
            await self.rng.choices(actions, weights)[0]()

    async def viewer(self) -> None:
        while time.monotonic() < self.deadline:
            share = self.live_share()
            if share is None:
                await asyncio.sleep(0.2)
                continue
            self.viewer_sessions += 1
            until = min(self.deadline, time.monotonic() + self.rng.uniform(5, 30))
            try:
                async with (
                    asyncio.timeout(until - time.monotonic() + 20),
                    self.http.ws_connect(self.url().replace("http", "ws") + f"/ws/{share.id}", timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws,
                ):
                    while time.monotonic() < until:
                        try:
                            msg = await ws.receive(timeout=max(0.1, until - time.monotonic()))
                        except TimeoutError:
                            break
                        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
                        self.frames += 1
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                self.statuses["ws-connect-failed"] += 1
                await asyncio.sleep(0.5)

    async def crasher(self, every: float) -> int:
        crashes = 0
        while time.monotonic() + every < self.deadline:
            await asyncio.sleep(every)
            victim = self.rng.choice(self.servers)
            victim.kill9()
            crashes += 1
            await asyncio.sleep(0.5)
            await asyncio.to_thread(victim.start)
            victim.restarts += 1
        return crashes

    async def lost_writes(self) -> tuple[int, int, int]:
        """(acknowledged messages checked, lost, shares checked)."""
        checked = lost = shares = 0
        for share in self.shares:
            if share.deleted or not share.acked:
                continue
            present = None
            for _ in range(20):
                status, data = await self.call("verify", "GET", f"/api/share/{share.id}/data")
                if status == 200:
                    present = {i["data"]["id"] for i in data if i.get("type") == "message"}
                    break
                await asyncio.sleep(0.5)
            shares += 1
            checked += len(share.acked)
            missing = share.acked - (present or set())
            if missing:
                lost += len(missing)
                print(f"LOST on {share.id}: {sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}")
        return checked, lost, shares


def snapshot(servers: list[Server]) -> list[tuple[float, int]]:
    return [(s.rss_mib(), s.sockets()) for s in servers]


async def run(args: argparse.Namespace) -> int:
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # the proxy's aborted connections
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="cloudsession-soak-"))
    env = {
        **os.environ,
        "SESSIONS_SHARED_SECRET": NAMESPACE,
        "CLOUDSESSION_LOG_LEVEL": "WARNING",
        # All the load comes from one address: with the per-address limits on, the figures would
        # measure the limiter. --rate-limits keeps them.
        "CLOUDSESSION_RATE_LIMITS": "true" if args.rate_limits else "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    moto = proxy_runner = None
    proxy: FaultProxy | None = None
    if args.s3:
        moto, moto_url = start_moto(tmp)
        proxy = FaultProxy(moto_url, args.fault_rate, random.Random(args.seed + 1))
        proxy.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        proxy_runner = web.AppRunner(app, access_log=None)
        await proxy_runner.setup()
        proxy_port = free_port()
        await web.TCPSite(proxy_runner, "127.0.0.1", proxy_port).start()
        env.update({"CLOUDSESSION_STORE": "s3://soak/shares", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy_port}"})
    servers = [Server(tmp / "data", env, tmp) for _ in range(args.processes)]
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        start = snapshot(servers)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            load = Load(servers, started + args.minutes * 60, rng, http)
            tasks = [asyncio.create_task(load.worker()) for _ in range(args.workers)]
            tasks += [asyncio.create_task(load.viewer()) for _ in range(args.viewers)]
            crasher = asyncio.create_task(load.crasher(args.crash_every)) if args.crash else None
            peak = [(0.0, 0)] * len(servers)
            last_report = started
            while time.monotonic() < load.deadline:
                await asyncio.sleep(min(5.0, max(0.0, load.deadline - time.monotonic())))
                with contextlib.suppress(OSError, AssertionError):
                    peak = [(max(p[0], n[0]), max(p[1], n[1])) for p, n in zip(peak, snapshot(servers), strict=True)]
                if time.monotonic() - last_report >= 30:
                    last_report = time.monotonic()
                    print(f"  ... {(last_report - started) / 60:.1f} min: {sum(load.actions.values())} requests, {dict(load.statuses)}", file=sys.stderr, flush=True)
            # Every loop ends at the deadline; a task still running a minute later is stuck.
            _, stuck = await asyncio.wait([*tasks, *([crasher] if crasher else [])], timeout=60)
            for task in stuck:
                task.cancel()
            crashes = crasher.result() if crasher and crasher not in stuck else 0
            elapsed = time.monotonic() - started
            end = snapshot(servers)
            for server in servers:  # every write must be readable from any process
                if not server.alive():
                    await asyncio.to_thread(server.start)
            actions = dict(load.actions)
            requests = sum(actions.values())
            checked, lost, shares_checked = await load.lost_writes()
    finally:
        for server in servers:
            server.stop()
        if proxy is not None and proxy.session is not None:
            await proxy.session.close()
        if proxy_runner is not None:
            await proxy_runner.cleanup()
        if moto is not None:
            moto.kill()
            moto.wait()

    print(f"soak: {elapsed / 60:.1f} min, {len(servers)} processes on the {'S3 (moto, fault proxy)' if args.s3 else 'filesystem'} store, "
          f"{args.workers} workers, {args.viewers} viewers, seed {args.seed}")
    for n, server in enumerate(servers):
        (rss0, sock0), (rss1, sock1), (rssp, sockp) = start[n], end[n], peak[n]
        print(f"  server {n}: RSS {rss0:.0f} MiB at start, {rss1:.0f} MiB at end (peak {rssp:.0f}); "
              f"sockets {sock0} at start, {sock1} at end (peak {sockp}); restarts {server.restarts}")
    print(f"  requests: {requests} ({requests / elapsed:.0f}/s): " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
    print("  status codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items())))
    print(f"  shares created: {len(load.shares)}, deleted: {sum(s.deleted for s in load.shares)}")
    print(f"  live viewers: {load.viewer_sessions} sessions, {load.frames} frames received")
    if args.crash:
        print(f"  kill -9 and restart: {crashes}")
    if proxy is not None:
        print("  S3 requests through the fault proxy: " + ", ".join(f"{k} {v}" for k, v in sorted(proxy.counts.items())))
    print(f"  rejected ops: {load.rejected_ops}")
    print(f"  acknowledged messages checked: {checked} in {shares_checked} shares; lost writes: {lost}")
    server_errors = load.statuses.get("500", 0)
    print(f"  500 answers: {server_errors}")
    print(f"  client tasks stuck after the deadline: {len(stuck)}")
    failed = bool(lost or server_errors or stuck)
    if failed:
        print(f"  server logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=8, help="concurrent request loops")
    parser.add_argument("--viewers", type=int, default=10, help="concurrent /ws viewers")
    parser.add_argument("--s3", action="store_true", help="S3 store on a local moto server behind a fault proxy")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="fraction of S3 requests that meet a fault (--s3)")
    parser.add_argument("--crash", action="store_true", help="kill -9 and restart one server every --crash-every seconds")
    parser.add_argument("--crash-every", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate-limits", action="store_true", help="keep the per-address rate limits on (off by default: one client address)")
    return asyncio.run(_interruptible(run(parser.parse_args())))


async def _interruptible(main: Any) -> int:
    """SIGINT and SIGTERM cancel the run, so its servers and moto are stopped on the way out."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return int(await task)
    except asyncio.CancelledError:
        print("soak: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
