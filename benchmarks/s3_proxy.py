#!/usr/bin/env python3
"""A counting HTTP proxy for an S3 endpoint: forwards every request to ``--upstream`` and counts
requests by method, and the bytes sent (request bodies) and received (response bodies).

``GET /__counts`` answers the counters as JSON (``?reset=1`` zeroes them after answering); that
path is never forwarded. The S3 benchmark points the server's ``AWS_ENDPOINT_URL`` here.

    python benchmarks/s3_proxy.py --port 9100 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def make_app(upstream: str) -> web.Application:
    counts: Counter[str] = Counter()
    http: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        http["s"] = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await http["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.path == "/__counts":
            body: dict[str, Any] = dict(counts)
            if request.query.get("reset"):
                counts.clear()
            return web.json_response(body)
        data = await request.read()
        kind = request.method
        if request.method == "GET" and ("list-type" in request.query or "prefix" in request.query):
            kind = "LIST"
        counts["requests"] += 1
        counts[f"requests_{kind}"] += 1
        counts["bytes_sent"] += len(data)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with http["s"].request(request.method, upstream + request.path_qs, data=data or None, headers=headers, allow_redirects=False) as resp:
            payload = await resp.read()
            counts["bytes_received"] += len(payload)
            out = web.Response(status=resp.status, body=payload, headers={k: v for k, v in resp.headers.items() if k.lower() not in HOP})
            return out

    app = web.Application(client_max_size=1024 * 2**20)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.upstream.rstrip("/")), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
