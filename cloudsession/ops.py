"""Operational endpoints: liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from cloudsession.app_keys import STORE
from cloudsession.store.base import StoreError


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving requests."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """The store answers: a one-key listing (a HEAD cannot tell a missing bucket from a missing key)."""
    try:
        await request.app[STORE].list_page("index/", limit=1)
    except StoreError:
        return web.json_response({"ok": False, "store": "unavailable"}, status=503)
    return web.json_response({"ok": True})
