"""Operational endpoints: liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from cloudsession.app_keys import STORE
from cloudsession.store.base import StoreError


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving requests."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """The store answers: a cheap HEAD of a key that need not exist."""
    try:
        await request.app[STORE].head("index/.readyz")
    except StoreError:
        return web.json_response({"ok": False, "store": "unavailable"}, status=503)
    return web.json_response({"ok": True})
