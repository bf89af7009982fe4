"""The application factory: ``create_app(settings)`` wires the domain, the live hub, the renderer
and the doors together. Wiring only: resources are in ``lifecycle.py``, routes in ``routes.py``,
error handling in ``middleware.py``."""

from __future__ import annotations

from aiohttp import web

from cloudsession.config import Settings
from cloudsession.live.hub import LiveHub
from cloudsession.metrics import Metrics
from cloudsession.render.pages import ViewRenderer
from cloudsession.web import lifecycle, observability, ratelimit
from cloudsession.web.keys import LIVE, METRICS, RENDERER, SERVICE, SETTINGS
from cloudsession.web.middleware import cors_middleware, error_middleware
from cloudsession.web.routes import setup_routes

__all__ = ["create_app", "SETTINGS", "SERVICE", "LIVE"]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        # observe (request id, log context, request metrics) outermost so it sees every final
        # status; the rate limiter innermost so its 429s are rendered by the error middleware.
        middlewares=[observability.observe_middleware, cors_middleware, error_middleware, ratelimit.ratelimit_middleware],
        client_max_size=settings.limits.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()  # a registry per app: /metrics (docs/operations.md)
    observability.watch(app, app[METRICS])
    app.on_response_prepare.append(observability.add_request_id)
    app.cleanup_ctx.append(observability.lifecycle_log)  # first: its "stopped" line comes last
    app.cleanup_ctx.append(ratelimit.rate_limiter)
    app[LIVE] = LiveHub()  # viewers of /ws/<id> hear about every sync
    app[RENDERER] = ViewRenderer()
    app.on_shutdown.append(lifecycle.close_viewers)
    app.cleanup_ctx.append(lifecycle.share_service)
    app.cleanup_ctx.append(lifecycle.periodic_sweep)  # expired shares and folded journal entries
    app.cleanup_ctx.append(lifecycle.redis_fanout)  # live updates across replicas when REDIS_URL is set
    app.cleanup_ctx.append(observability.metrics_site)  # /metrics on METRICS_ADDRESS, when set
    setup_routes(app)
    return app
