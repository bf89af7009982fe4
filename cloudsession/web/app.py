"""The application factory: ``create_app(settings)`` wires the domain, the live hub, the renderer
and the doors together. Wiring only: resources are in ``lifecycle.py``, routes in ``routes.py``,
error handling in ``middleware.py``."""

from __future__ import annotations

from aiohttp import web

from cloudsession.config import Settings
from cloudsession.live.hub import LiveHub
from cloudsession.render.pages import ViewRenderer
from cloudsession.web import lifecycle
from cloudsession.web.http import ServerLog
from cloudsession.web.keys import IN_FLIGHT, LIVE, RENDERER, SERVICE, SETTINGS
from cloudsession.web.middleware import body_guard_middleware, cors_middleware, error_middleware
from cloudsession.web.routes import setup_routes

__all__ = ["create_app", "SETTINGS", "SERVICE", "LIVE"]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[lifecycle.in_flight_middleware, cors_middleware, error_middleware, body_guard_middleware],
        client_max_size=settings.limits.max_body_bytes,
        # Passed to every connection's handler, whoever runs the app (``serve``, the tests), and
        # winning over run_app's own defaults; see docs/hardening.md.
        handler_args={
            # Idle connections, and request heads that do not complete, are closed after this.
            "keepalive_timeout": settings.keepalive_timeout_seconds,
            # Request bodies are never inflated: the body guard refuses a Content-Encoding (415).
            "auto_decompress": False,
            # A request that breaks HTTP is one INFO line, not a traceback.
            "logger": ServerLog(),
        },
    )
    app[SETTINGS] = settings
    app[IN_FLIGHT] = lifecycle.InFlight()  # what a shutdown waits for (cli/serve.py)
    # Viewers of /ws/<id> hear about every sync.
    app[LIVE] = LiveHub(
        max_viewers_per_share=settings.limits.max_viewers_per_share,
        max_viewers_per_address=settings.limits.max_viewers_per_address,
    )
    app[RENDERER] = ViewRenderer()
    app.on_shutdown.append(lifecycle.close_viewers)
    app.cleanup_ctx.append(lifecycle.share_service)
    app.cleanup_ctx.append(lifecycle.periodic_sweep)  # expired shares and folded journal entries
    app.cleanup_ctx.append(lifecycle.redis_fanout)  # live updates across replicas when REDIS_URL is set
    setup_routes(app)
    return app
