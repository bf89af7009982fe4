"""Anonymous attacks on a real ``cloudsession serve`` process: memory measured as the process's
RSS (VmRSS in /proc/<pid>/status) and connections watched from the attacker's side.

The bounds are generous on purpose: each attack cost hundreds of megabytes to gigabytes before
it was bounded (scripts/attack_memory.py prints the figures); these tests only tell "bounded"
from "grows with the attack". The trickling tests run with two-second deadlines and allow ten.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import ServerProcess

SES = "ses_hardening000000000000000001"
MiB = 1024 * 1024
# Generous: the attacks below cost 700 MiB and more without the bounds.
MEMORY_BOUND = 150 * MiB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest RSS of a process while the ``with`` block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pid))


def call(server: ServerProcess, path: str, body: Any) -> Any:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = getattr(request, "param", {})
    process = ServerProcess(tmp_path / "data", env).start()
    try:
        yield process
    finally:
        process.stop()


def pid_of(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


async def status_of(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_compressed_bodies_cost_no_memory(server: ServerProcess) -> None:
    creds = call(server, "/api/share", {"sessionID": SES})
    inflated = b'{"secret":"wrong","data":"' + b"a" * (60 * MiB) + b'"}'
    body = gzip.compress(inflated, 9)
    assert len(body) < 100_000
    head = (
        f"POST /api/share/{creds['id']}/sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    before = rss(pid_of(server))
    with PeakRss(pid_of(server)) as peak:
        statuses = await asyncio.gather(*(status_of(server.port, head + body) for _ in range(10)))
    assert peak.peak - before < MEMORY_BOUND, f"RSS grew by {(peak.peak - before) / MiB:.0f} MiB"
    assert statuses == [415] * 10


def big_items(megabytes: int, tag: str) -> list[dict[str, Any]]:
    message = {"id": f"msg_{tag}", "sessionID": SES, "role": "assistant", "time": {"created": 1}}
    text = "x" * 100_000
    parts = [
        {"type": "part", "data": {"id": f"prt_{tag}_{n:04d}", "messageID": message["id"], "sessionID": SES, "type": "text", "text": text}}
        for n in range(megabytes * 10)
    ]
    return [{"type": "message", "data": message}, *parts]


def stuck_viewer(port: int, path: str) -> socket.socket:
    """A WebSocket viewer (offering compression, as browsers do) that never reads a frame."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
    )
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)  # byte by byte: leave every frame unread
        assert chunk, "viewer refused"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def tcp_state(sock: socket.socket) -> int:
    """The socket's TCP state (Linux ``tcp_info.tcpi_state``), read without consuming data."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


TCP_ESTABLISHED = 1


async def closed_by_server(viewers: list[socket.socket], within: float) -> int:
    """How many of ``viewers`` the server has not closed (no FIN or reset arrived) after up to
    ``within`` seconds; nothing is read from them, so they stay viewers that never read."""
    for _ in range(int(within * 10)):
        still_open = sum(tcp_state(v) == TCP_ESTABLISHED for v in viewers)
        if not still_open:
            return 0
        await asyncio.sleep(0.1)
    return still_open


VIEWER_ENV = {"CLOUDSESSION_VIEWER_SEND_TIMEOUT_SECONDS": "2", "CLOUDSESSION_MAX_VIEWERS_PER_ADDRESS": "100"}


@pytest.mark.parametrize("server", [VIEWER_ENV], indirect=True)
async def test_viewers_that_never_read_cost_bounded_memory_and_are_dropped(server: ServerProcess) -> None:
    creds = call(server, "/api/share", {"sessionID": SES})
    sync = f"/api/share/{creds['id']}/sync"
    # The same sync with nobody watching first: the sync's own cost is not the viewers'.
    await asyncio.to_thread(call, server, sync, {"secret": creds["secret"], "data": big_items(10, "warm")})
    viewers = [stuck_viewer(server.port, f"/ws/{creds['id']}") for _ in range(60)]
    try:
        await asyncio.sleep(0.3)
        before = rss(pid_of(server))
        with PeakRss(pid_of(server)) as peak:
            await asyncio.to_thread(call, server, sync, {"secret": creds["secret"], "data": big_items(10, "attack")})
            await asyncio.sleep(3)
        assert peak.peak - before < MEMORY_BOUND, f"RSS grew by {(peak.peak - before) / MiB:.0f} MiB"
        # Past the send deadline the server gives up on them (and on what they did not read).
        still_open = await closed_by_server(viewers, 10)
        assert still_open == 0, f"{still_open} of {len(viewers)} never-reading viewers still connected"
    finally:
        for viewer in viewers:
            viewer.close()


TRICKLE_ENV = {"CLOUDSESSION_KEEPALIVE_TIMEOUT_SECONDS": "2", "CLOUDSESSION_BODY_TIMEOUT_SECONDS": "2"}


async def trickle(port: int, prefix: bytes) -> tuple[bool, bytes]:
    """Send ``prefix``, then one byte every 0.2 s for up to 10 s. Returns whether the server
    closed the connection, and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(prefix)
        for _ in range(50):
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                writer.write(b"a")
                continue
            if not chunk:
                return True, answer
            answer += chunk
        return False, answer
    except ConnectionError:
        return True, answer
    finally:
        writer.close()


@pytest.mark.parametrize("server", [TRICKLE_ENV], indirect=True)
async def test_trickling_heads_and_bodies_are_closed(server: ServerProcess) -> None:
    creds = call(server, "/api/share", {"sessionID": SES})
    heads = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # a header that never ends
        b"GET /share/" + creds["id"].encode() + b" HTTP/1.1\r\nHo",
        b"",  # not a byte of a request line
    ]

    def post(path: str, content_type: str = "application/json") -> bytes:
        return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 3000\r\n\r\n".encode()

    bodies = [
        post(f"/api/share/{creds['id']}/sync"),
        post("/api/share"),
        post("/rpc/share", "text/plain"),
        post("/sessions/login", "application/x-www-form-urlencoded"),
    ]
    results = await asyncio.gather(*(trickle(server.port, h) for h in heads * 5), *(trickle(server.port, b) for b in bodies * 5))
    head_results, body_results = results[: len(heads) * 5], results[len(heads) * 5 :]
    assert all(closed for closed, _ in head_results), [r for r in head_results if not r[0]]
    assert all(closed for closed, _ in body_results), [r for r in body_results if not r[0]]
    assert all(answer.startswith(b"HTTP/1.1 408") for _, answer in body_results), [a[:40] for _, a in body_results]
    # The server is fine afterwards, and nothing was created or changed.
    metadata = json.loads(urllib.request.urlopen(f"{server.url}/api/share/{creds['id']}/metadata", timeout=10).read())
    assert metadata["syncCount"] == 0
