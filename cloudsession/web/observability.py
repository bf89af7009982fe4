"""What an operator sees of the running server: request ids, per-request log context, the access
log, ``/metrics``, and one log line at startup and one at shutdown (docs/operations.md).

- ``observe_middleware`` (outermost) accepts a sane ``X-Request-ID`` (at most 128 of
  ``[A-Za-z0-9._-]``) or generates one, returns it on the response (``on_response_prepare``, so
  WebSockets and error pages carry it too), binds the request's log context (``logs.py``:
  request id, route name, share id; the share service adds the public session id) and records
  requests by route name, method and status, with their latency, in ``Metrics``.
- ``AccessLogger`` writes one line per request with that context, the status and the duration,
  never the query string (read tokens travel in ``?token=``) and never a body.
- ``/metrics`` (Prometheus text format) answers to the admin key (``x-opencode-share-key``) or
  ``Authorization: Bearer <METRICS_TOKEN>``; with ``METRICS_ADDRESS`` it is served only on that
  separate address, open unless ``METRICS_TOKEN`` is set. Wrong keys count as admin failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from cloudsession import __version__, logs
from cloudsession.credentials import SHARE_ID_RE, secrets_equal
from cloudsession.live.hub import LiveHub
from cloudsession.metrics import CONTENT_TYPE, Metrics
from cloudsession.shares import audit
from cloudsession.web.auth import checked_admin_header
from cloudsession.web.http import client_address
from cloudsession.web.keys import LIMITER, LIVE, METRICS, SETTINGS
from cloudsession.web.ratelimit import admin_attempt

log = logging.getLogger("cloudsession.server")
access_log = logging.getLogger("cloudsession.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_from(header: str | None) -> str:
    """The client's request id when sane, else a new one."""
    if header is not None and _REQUEST_ID_RE.match(header):
        return header
    # 32 hex digits like uuid4().hex. Unique, not secret: ``random`` (seeded from the system's
    # entropy), not os.urandom, whose system call releases the GIL on every request.
    return f"{random.getrandbits(128):032x}"


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    return (route.name if route is not None else None) or "unmatched"


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    route = _route_name(request)
    share_id = request.match_info.get("id")
    # aiohttp runs each request in its own task (a copy of the context), so this binding lasts
    # exactly as long as the request, its response's preparation and its access-log line.
    logs.bind(request_id=request_id, route=route, share_id=share_id if share_id and SHARE_ID_RE.match(share_id) else None)
    # Who is acting, for the audit trail (shares/audit.py); the task's context ends with the request.
    via = "rpc" if request.path.startswith("/rpc/") else "http"
    audit.current_actor.set(audit.Actor(client_address(request), request.headers.get("User-Agent", ""), request_id, via))
    metrics = request.app.get(METRICS)
    start, status = time.perf_counter(), 500
    if metrics is not None:
        metrics.in_flight.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's convention)
        raise
    finally:
        if metrics is not None:
            metrics.in_flight.dec()
            metrics.request_done(route, request.method, status, time.perf_counter() - start)


async def add_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response (pages, JSON, WebSocket upgrades) names its request."""
    context = logs.current()
    if "request_id" in context:
        response.headers[REQUEST_ID_HEADER] = context["request_id"]


class AccessLogger(AbstractAccessLogger):
    """One line per request: client address, method, path without the query string, status,
    bytes, duration, and the request's context (request id, route, share id, public session id)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        remote = client_address(request) or "-"
        self.logger.info(
            '%s "%s %s" %s %s %.4fs',
            remote, request.method, request.path, response.status, response.body_length, time,
            extra={  # and the request's context, added by logs.ContextFilter
                "remote": remote,
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "bytes": response.body_length,
                "duration_ms": round(time * 1000, 2),
            },
        )  # fmt: skip


# -- /metrics ------------------------------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _metrics_allowed(request: web.Request, *, open_without_token: bool) -> bool:
    settings = request.app[SETTINGS]
    given = _bearer(request)
    if given is not None and settings.metrics_token is not None:
        ok = secrets_equal(given, settings.metrics_token.get_secret_value())
        await admin_attempt(request, ok)
        if ok:
            return True
    if open_without_token and settings.metrics_token is None:
        return True
    return await checked_admin_header(request)


def _exposition(metrics: Metrics) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


def _unauthorized() -> web.Response:
    return web.Response(status=401, text="Unauthorized", content_type="text/plain", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics`` on the main address (404 when ``METRICS_ADDRESS`` moves it elsewhere)."""
    if request.app[SETTINGS].metrics_address:
        raise web.HTTPNotFound()
    if not await _metrics_allowed(request, open_without_token=False):
        return _unauthorized()
    return _exposition(request.app[METRICS])


async def metrics_site(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: with ``METRICS_ADDRESS``, a second site serving only ``/metrics``."""
    settings = app[SETTINGS]
    if not settings.metrics_address:
        yield
        return
    host, _, port = settings.metrics_address.rpartition(":")
    host = host.strip("[]")
    side = web.Application()
    side[SETTINGS], side[METRICS], side[LIMITER] = settings, app[METRICS], app.get(LIMITER)

    async def serve(request: web.Request) -> web.Response:
        if not await _metrics_allowed(request, open_without_token=True):
            return _unauthorized()
        return _exposition(request.app[METRICS])

    side.router.add_get("/metrics", serve, name="metrics")
    runner = web.AppRunner(side, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        log.error("METRICS_ADDRESS %s: cannot listen (%s)", settings.metrics_address, exc.strerror or exc)
        raise
    log.info("metrics on http://%s/metrics", settings.metrics_address)
    try:
        yield
    finally:
        await runner.cleanup()


# -- wiring --------------------------------------------------------------------------------------


def watch(app: web.Application, metrics: Metrics) -> None:
    """Series read at scrape time: live viewers and the Redis relay's state."""
    settings = app[SETTINGS]

    def viewers() -> int:
        hub = app.get(LIVE)
        return hub.viewer_count if isinstance(hub, LiveHub) else 0

    def relay() -> dict[str, Any] | None:
        if settings.redis_url is None:
            return None
        hub = app.get(LIVE)
        if isinstance(hub, LiveHub) and hub.relay is not None:
            return hub.relay.state()
        return {"subscribed": False, "outbox_bytes": 0, "missed_shares": 0, "published": 0, "publish_failures": 0, "received": 0}

    metrics.watch_viewers(viewers)
    metrics.watch_relay(relay)


async def lifecycle_log(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (first in, last out): one line with the effective configuration, secrets
    redacted, when the server starts, and one when it has stopped."""
    settings = app[SETTINGS]
    config = settings.redacted()
    log.info("cloudsession %s starting", __version__, extra={"config": config})
    started = time.monotonic()
    try:
        yield
    finally:
        log.info("cloudsession stopped after %.1fs", time.monotonic() - started, extra={"uptime_seconds": round(time.monotonic() - started, 1)})
