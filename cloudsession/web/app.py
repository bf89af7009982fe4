"""The application factory: ``create_app(settings)`` wires the domain, the live hub, the renderer
and the doors together. Wiring only: resources are in ``lifecycle.py``, routes in ``routes.py``,
error handling in ``middleware.py``."""

from __future__ import annotations

import ctypes
import os

from aiohttp import web

from cloudsession.config import ConfigError, Settings
from cloudsession.hooks.dispatch import resolve_secrets, target_names
from cloudsession.live.hub import LiveHub
from cloudsession.metrics import Metrics
from cloudsession.render.pages import ViewRenderer
from cloudsession.web import lifecycle, observability, ratelimit
from cloudsession.web.http import CompressedCache, ServerLog
from cloudsession.web.keys import COMPRESSED, HOOK_KEYS, IN_FLIGHT, LIVE, METRICS, RENDERER, SERVICE, SETTINGS
from cloudsession.web.middleware import (
    body_guard_middleware,
    compress_middleware,
    cors_middleware,
    error_middleware,
    redaction_middleware,
)
from cloudsession.web.routes import setup_routes

__all__ = ["create_app", "SETTINGS", "SERVICE", "LIVE"]


# Allocations of this size or more get their own mapping, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD_BYTES`` (unless ``MALLOC_MMAP_THRESHOLD_``
    is set). By default glibc raises it after each large free, up to 32 MiB; then the transient
    tens of megabytes of a large request or response (bodies, JSON buffers, snapshots) come
    from the heap and stay resident, fragmented around the cache's long-lived entities: a
    45 MB share cost +186 MB RSS once written, +75 MB with the threshold fixed (docs/reads.md).
    Below it, the buffers of ordinary reads are reused from the heap (no page faults per read).
    A no-op (False) on a C library without ``mallopt``."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def create_app(settings: Settings) -> web.Application:
    tune_allocator()
    app = web.Application(
        # compress first: it only marks the final answer (after redaction) for gzip and changes
        # no status; then observe (request id, log context, the audit's actor, request metrics)
        # so it sees every final status; then the redaction, which covers every answer, error
        # pages included; the rate limiter and the body guard innermost, so their answers are
        # rendered by the error middleware.
        middlewares=[
            lifecycle.in_flight_middleware,  # what a shutdown waits for (cli/serve.py)
            compress_middleware,
            observability.observe_middleware,
            redaction_middleware,
            cors_middleware,
            error_middleware,
            body_guard_middleware,
            ratelimit.ratelimit_middleware,
        ],
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
    app[COMPRESSED] = CompressedCache()  # compressed hot responses, per ETag (web/http.py)
    app[IN_FLIGHT] = lifecycle.InFlight()  # what a shutdown waits for (cli/serve.py)
    # Read now: a webhook whose signing key is missing stops startup with one clear line.
    app[HOOK_KEYS] = resolve_secrets(settings.hooks, os.environ)
    if settings.hooks.enabled:
        target_names(settings.hooks)  # unique, or one line at startup
        if settings.public_url is None:
            raise ConfigError("PUBLIC_URL must be set when hooks are configured: payloads carry share URLs, and no request says the origin")
    app[METRICS] = Metrics()  # a registry per app: /metrics (docs/operations.md)
    observability.watch(app, app[METRICS])
    app.on_response_prepare.append(observability.add_request_id)
    app.cleanup_ctx.append(observability.lifecycle_log)  # first: its "stopped" line comes last
    app.cleanup_ctx.append(ratelimit.rate_limiter)
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
    app.cleanup_ctx.append(observability.metrics_site)  # /metrics on METRICS_ADDRESS, when set
    setup_routes(app)
    return app
