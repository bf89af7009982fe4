#!/usr/bin/env python3
"""The trivial bound: an aiohttp handler that parses the sync's JSON body and appends it to a
file, with an fsync per request (``--no-fsync`` without; ``--threads``: the write and fsync in a
thread pool, so that concurrent requests' fsyncs overlap and the filesystem can commit them
together, as a server that writes from worker threads gets). Nothing else: no validation, no state.
The benchmarks start it as a process of its own and measure it exactly as they measure
``cloudsession serve`` (same client, same bodies, CPU from /proc).

    python benchmarks/trivial_server.py --port 8790 --file /tmp/trivial.log [--no-fsync | --threads]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web

try:
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # the bound is only tighter with orjson
    loads = json.loads


def make_app(path: str, fsync: bool, threads: bool = False) -> web.Application:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(body: bytes) -> None:
        os.write(fd, body + b"\n")
        if fsync:
            os.fsync(fd)

    async def sync(request: web.Request) -> web.Response:
        body = await request.read()
        doc = loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            return web.json_response({"error": "bad body"}, status=400)
        if threads:
            await asyncio.get_running_loop().run_in_executor(None, write, body)
        else:
            write(body)
        return web.json_response({})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/api/share/{id}/sync", sync)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--threads", action="store_true", help="write and fsync in a thread pool")
    args = parser.parse_args()
    web.run_app(make_app(args.file, not args.no_fsync, args.threads), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
