"""Typed keys for the objects the application shares between its handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from cloudsession.config import Settings
    from cloudsession.live.relay import Siblings
    from cloudsession.metrics import Metrics
    from cloudsession.render.pages import ViewRenderer
    from cloudsession.shares.events import EventSink
    from cloudsession.shares.service import ShareService
    from cloudsession.web.http import CompressedCache
    from cloudsession.web.lifecycle import InFlight
    from cloudsession.web.ratelimit import RateLimiter

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
SERVICE: web.AppKey[ShareService] = web.AppKey("service")
LIVE: web.AppKey[EventSink] = web.AppKey("live")
RENDERER: web.AppKey[ViewRenderer] = web.AppKey("renderer")
IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("in_flight")
# Webhook signing keys, read from the environment when the app is built (docs/hooks.md).
HOOK_KEYS: web.AppKey[dict[str, bytes]] = web.AppKey("hook_keys")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
LIMITER: web.AppKey[RateLimiter | None] = web.AppKey("rate_limiter")
# Set by `serve --workers N` in each worker process (its number, its siblings' inboxes); absent
# in a single process.
WORKER: web.AppKey[Siblings] = web.AppKey("worker")
# Compressed bodies of hot responses, per ETag and coding (web/http.py).
COMPRESSED: web.AppKey[CompressedCache] = web.AppKey("compressed")
