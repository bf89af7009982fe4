"""A fault-injecting HTTP proxy in front of an S3 endpoint (moto), for tests.

Point a store (``AWS_ENDPOINT_URL`` or ``endpoint_url``) at ``proxy.url``; each request is
forwarded to the upstream unless the current :class:`Faults` picks a fault for it:

``500`` / ``503`` / ``slowdown``
    answered at once with that S3 error (InternalError, ServiceUnavailable, SlowDown); the
    request never reaches the store.
``reset-before``
    the connection is dropped without forwarding: nothing happened.
``reset-after``
    forwarded, and the connection dropped instead of the answer: a write has landed and its
    writer does not know.
``delay``
    forwarded after a pause (``Faults.delay`` seconds, drawn uniformly).
``blackhole``
    the request is read and never answered (a store that accepts connections and hangs).

``stats`` counts what happened; ``stats["lost-write-answers"]`` counts writes (PUT, DELETE,
POST) that reached the store but whose answer did not reach the client (``reset-after``, or a
client that gave up while the store was answering), the only way an unacknowledged write can be
in the store afterwards.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

KINDS = ("500", "503", "slowdown", "reset-before", "reset-after", "delay", "blackhole")
_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
_WRITES = frozenset({"PUT", "DELETE", "POST"})
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"})


def is_list(request: web.Request) -> bool:
    return request.method == "GET" and "list-type" in request.query


@dataclass
class Faults:
    """Which requests fail and how: each request matching ``applies`` gets one of ``kinds`` with
    probability ``rate`` (1.0: every one)."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ()
    delay: tuple[float, float] = (0.0, 0.05)
    applies: Callable[[web.Request], bool] = lambda request: True

    def choose(self, request: web.Request, rng: random.Random) -> str | None:
        if not self.kinds or not self.applies(request) or rng.random() >= self.rate:
            return None
        return rng.choice(self.kinds)


NO_FAULTS = Faults()


class FaultyS3Proxy:
    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = NO_FAULTS
        self.stats: Counter[str] = Counter()
        self.url = ""
        self._rng = random.Random(seed)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> FaultyS3Proxy:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FaultyS3Proxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the proxy ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self.faults.choose(request, self._rng)
        self.stats["requests"] += 1
        if fault is not None:
            self.stats[fault] += 1
        if fault == "blackhole":
            await self._closing.wait()  # accepted, never answered
            return self._drop(request)
        if fault == "reset-before":
            return self._drop(request)
        if fault in _ERRORS:
            status, code, message = _ERRORS[fault]
            xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault</RequestId></Error>'
            return web.Response(status=status, body=b"" if request.method == "HEAD" else xml.encode(), content_type="application/xml")
        if fault == "delay":
            await asyncio.sleep(self._rng.uniform(*self.faults.delay))
            if self._gone(request):
                return self._drop(request)  # the client gave up: do not write behind its back
        status, headers, data = await self._forward(request, body)
        self._forwarded(request, status)
        if fault == "reset-after" or self._gone(request):
            if request.method in _WRITES:
                self.stats["lost-write-answers"] += 1
            return self._drop(request)
        return web.Response(status=status, headers=headers, body=data)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._http.request(
            request.method, self.upstream + request.raw_path, headers=headers, data=body,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
            return resp.status, out, data

    def _forwarded(self, request: web.Request, status: int) -> None:
        """Called for every request that reached the store, with its status (a hook)."""

    @staticmethod
    def _gone(request: web.Request) -> bool:
        return request.transport is None or request.transport.is_closing()

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection without an answer (a reset, as the client sees it)."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=599)  # never written: the transport is gone
