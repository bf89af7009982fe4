"""Operational endpoints: liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from aiohttp import web

from cloudsession.errors import ShareError
from cloudsession.web.keys import SERVICE, WORKER


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving requests; under ``serve --workers N``, also which worker
    answered (its number, 1..N: nothing about the machine)."""
    worker = request.app.get(WORKER)
    return web.json_response({"ok": True} if worker is None else {"ok": True, "worker": worker.index})


async def readyz(request: web.Request) -> web.Response:
    """The store answers (``ShareService.ready``)."""
    try:
        await request.app[SERVICE].ready()
    except ShareError as error:
        return web.json_response({"ok": False, "store": "unavailable"}, status=503, headers=error.headers())
    return web.json_response({"ok": True})
