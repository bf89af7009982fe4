"""The application factory: ``create_app(settings)`` wires store, service and doors together.

Resources live in ``cleanup_ctx`` generators (opened on startup, closed on shutdown) and are
shared through the typed keys in ``app_keys``. One middleware turns domain errors into HTTP
responses: JSON under ``/api/`` (with CORS, as the reference), plain text elsewhere, and a bare
500 without a traceback for anything unexpected (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from cloudsession.app_keys import LIVE, SERVICE, SETTINGS, STORE
from cloudsession.config import Settings
from cloudsession.durable import periodic_sweep
from cloudsession.errors import PayloadTooLarge, ShareError
from cloudsession.live import LiveHub, redis_fanout
from cloudsession.models import json_bytes
from cloudsession.routes import setup_routes
from cloudsession.service import ShareService
from cloudsession.store import open_store
from cloudsession.views import RENDERER, ViewRenderer

__all__ = ["create_app", "SETTINGS", "STORE", "SERVICE", "LIVE"]

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _error_response(request: web.Request, error: ShareError) -> web.Response:
    if _is_api(request) or request.path.startswith("/rpc/"):
        return web.Response(body=json_bytes(error.body()), status=error.status, content_type="application/json")
    return web.Response(text=error.message, status=error.status, content_type="text/plain", charset="UTF-8")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ShareError as error:
        return _error_response(request, error)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].limits.max_body_bytes
        return _error_response(request, PayloadTooLarge(f"Request body exceeds {limit} bytes"))
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):  # the reference answers 404 to both
        if _is_api(request):
            return web.Response(body=b'{"error":"Not Found"}', status=404, content_type="application/json")
        return web.Response(text="404 Not Found", status=404, content_type="text/plain", charset="UTF-8")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.Response(text="Internal Server Error", status=500, content_type="text/plain", charset="UTF-8")


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Access-Control-Allow-Origin: *`` on every /api/ response, errors included (COMPAT)."""
    if not _is_api(request):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["Access-Control-Allow-Origin"] = "*"
        raise
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[cors_middleware, error_middleware],
        client_max_size=settings.limits.max_body_bytes,
    )
    app[SETTINGS] = settings
    LiveHub().attach(app)  # sets app[LIVE]: viewers of /ws/<id> hear about every sync
    app[RENDERER] = ViewRenderer()

    async def storage(app: web.Application) -> AsyncIterator[None]:
        async with open_store(settings) as store:
            app[STORE] = store
            service = ShareService(store, settings, app[LIVE])
            app[SERVICE] = service
            yield
            await service.close()

    app.cleanup_ctx.append(storage)
    app.cleanup_ctx.append(periodic_sweep)  # expired shares and folded journal entries
    app.cleanup_ctx.append(redis_fanout)  # live updates across replicas when REDIS_URL is set
    setup_routes(app)
    return app
