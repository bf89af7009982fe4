"""A counting HTTP proxy in front of an S3 endpoint (moto), for tests and measurements.

Point a store's ``endpoint`` at ``proxy.url``; every request is forwarded as it is and recorded
as an :class:`S3Request` (method, key relative to the bucket, whether it was a LIST, the
conditional headers, the status). ``proxy.requests`` holds them in arrival order;
``with proxy.window() as seen:`` collects those made while the block runs (what one sync
cost, for instance).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import unquote

import aiohttp
from aiohttp import web

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"})


@dataclass(frozen=True, slots=True)
class S3Request:
    method: str
    # The object key after the bucket (prefix included); "" for a bucket-level request.
    key: str
    is_list: bool
    if_none_match: str | None
    if_match: str | None
    status: int

    @property
    def kind(self) -> str:
        """LIST, HEAD, GET, PUT, DELETE or POST."""
        return "LIST" if self.is_list else self.method


class CountingS3Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self.requests: list[S3Request] = []
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CountingS3Proxy:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._http = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @contextmanager
    def window(self) -> Iterator[list[S3Request]]:
        """The requests that arrive while the block runs (filled in when it ends)."""
        start = len(self.requests)
        seen: list[S3Request] = []
        try:
            yield seen
        finally:
            seen.extend(self.requests[start:])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._http.request(
            request.method, self.upstream + request.raw_path, headers=headers, data=body,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
            status = resp.status
        # Path-style addressing: /<bucket>/<key>.
        _, _, key = unquote(request.path).lstrip("/").partition("/")
        self.requests.append(S3Request(
            request.method, key, request.method == "GET" and "list-type" in request.query,
            request.headers.get("If-None-Match"), request.headers.get("If-Match"), status,
        ))
        return web.Response(status=status, headers=out, body=data)
