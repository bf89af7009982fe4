#!/usr/bin/env python3
"""What one address's bursts get from a real ``cloudsession serve`` with the default rate limits:
prints status counts and wall time, asserts nothing.

Starts the server on a free port with a temporary data directory and an admin key, trusting
127.0.0.1 as a proxy so that each probe can come from its own address (``X-Forwarded-For``):
100 parallel creates, 200 parallel wrong ``/api/sessions`` keys, 30 parallel wrong sign-ins, and
an opencode-like client (a burst of 50 syncs, then one a second for ``--seconds``).

Usage: .venv/bin/python scripts/probe_ratelimits.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import aiohttp

ADMIN_KEY = "probe-admin-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


async def burst(label: str, calls: list) -> None:
    start = time.perf_counter()
    statuses = await asyncio.gather(*calls)
    elapsed = time.perf_counter() - start
    counts = ", ".join(f"{count} x {status}" for status, count in sorted(collections.Counter(statuses).items()))
    print(f"{label}: {counts} in {elapsed:.2f} s")


async def probe(base: str, seconds: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def status(method: str, path: str, client: str, **kwargs) -> int:
            async with http.request(method, base + path, headers={"X-Forwarded-For": client, **kwargs.pop("headers", {})}, **kwargs) as resp:
                await resp.read()
                return resp.status

        await burst("100 parallel creates", [status("POST", "/api/share", "192.0.2.1", json={"sessionID": f"ses_probe_create_{i:010d}"}) for i in range(100)])
        await burst(
            "200 parallel wrong admin keys on /api/sessions",
            [status("GET", "/api/sessions", "192.0.2.2", headers={"x-opencode-share-key": f"guess-{i}"}) for i in range(200)],
        )
        await burst(
            "30 parallel wrong sign-ins on /sessions/login",
            [status("POST", "/sessions/login", "192.0.2.3", data={"key": f"guess-{i}"}, allow_redirects=False) for i in range(30)],
        )

    async with aiohttp.ClientSession(headers={"X-Forwarded-For": "192.0.2.4"}) as http:
        async with http.post(base + "/api/share", json={"sessionID": "ses_probe_client_0000000001"}) as resp:
            share = await resp.json()
        url = f"{base}/api/share/{share['id']}/sync"

        async def sync(n: int) -> int:
            body = {"secret": share["secret"], "data": [{"type": "session", "data": {"id": "ses_probe_client_0000000001", "title": f"step {n}"}}]}
            async with http.post(url, json=body) as resp:
                return resp.status

        statuses = list(await asyncio.gather(*(sync(n) for n in range(50))))
        for n in range(seconds):
            statuses.append(await sync(50 + n))
            await asyncio.sleep(1)
        counts = ", ".join(f"{count} x {s}" for s, count in sorted(collections.Counter(statuses).items()))
        print(f"opencode-like client (50-sync burst, then 1 sync/s for {seconds} s): {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "SESSIONS_SHARED_SECRET": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "PUBLIC_URL": base, "SESSIONS_RPC_SHARED_KEY": ADMIN_KEY,
               "CLOUDSESSION_TRUSTED_PROXIES": "127.0.0.1/32"}
        server = subprocess.Popen(
            [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ready(base)
            asyncio.run(probe(base, args.seconds))
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
