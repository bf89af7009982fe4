"""Rate limits per client address: the one place that decides which requests count against what.

Five limits (``RateLimitSettings`` in config.py, defaults in docs/operations.md):

- ``create``: ``POST /api/share`` and RPC ``createShare``;
- ``sync``: the writes that carry a share secret (sync, ops, delete, redeem, rotate, privacy,
  expiry, read-token; RPC ``syncShare``/``appendOps``);
- ``rpc``: requests to ``/rpc/share`` (an HTTP batch or a WebSocket session each);
- ``admin_failures``: wrong admin keys (header, sign-in form, sign-in cookie, /metrics). Counted
  in the shared store at the moment a key is found wrong, so parallel guesses are counted as
  they are made, not after a delay; once over, every admin-key check from the address answers
  429 whatever the key (a right key included, so a 429 never tells a guess was right);
- ``share_misses``: 404s on routes that name a share (reads, pages, ``/ws``, writes): share-id
  guessing. Once over, those routes answer 429 for that address.

Counting uses the ``limits`` library's sliding-window counter (two counters per address and
limit, so memory stays small whatever the traffic): in memory on one replica, in Redis when
``REDIS_URL`` is set so that replicas share the counts. The workers of one ``serve --workers N``
without Redis count in memory each, and each allows ``1/N`` of every limit (rounded down, at least
1): a client cannot get more than the limit in total however the kernel spreads its connections
over the workers, at the price of getting less when they all land on one (``worker_share``;
docs/running.md). A rate-limit store that fails or does not
answer within ``STORAGE_DEADLINE`` lets the request through (counted in /metrics): limits
protect the service, they must never take it down.

The client address is the TCP peer, unless the peer is one of ``TRUSTED_PROXIES``: then the
``X-Forwarded-For`` chain is walked from the right (the hop the trusted proxy saw) past further
trusted proxies to the first address that is not one. IPv6 clients are counted per /64 (one
host usually holds a whole /64). 429 answers carry ``Retry-After`` and, under ``/api/``, the
reference's JSON error shape (``errors.RateLimited``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from cloudsession.config import Settings
from cloudsession.errors import RateLimited, ShareError
from cloudsession.live.relay import relay_channel
from cloudsession.metrics import Metrics
from cloudsession.web.http import IPNetwork, client_ip
from cloudsession.web.keys import LIMITER, METRICS, SETTINGS, WORKER

log = logging.getLogger(__name__)

LIMIT_NAMES = ("create", "sync", "rpc", "admin_failures", "share_misses")
# A rate-limit check waits at most this long for its store (Redis), then lets the request through.
STORAGE_DEADLINE = 1.0
KEY_PREFIX = "cloudsession-ratelimit"

# Route name -> the limit every request to it counts against (before the handler runs).
ROUTE_LIMITS = {
    "api.create": "create",
    "api.sync": "sync",
    "durable.ops": "sync",
    "api.delete": "sync",
    "durable.redeem": "sync",
    "durable.rotate": "sync",
    "durable.read_token": "sync",
    "durable.privacy": "sync",
    "durable.expiry": "sync",
    "rpc.share": "rpc",
}
# Routes that name a share in their path: a 404 there is a share-id miss.
SHARE_ROUTES = frozenset(
    {
        "api.get", "api.data", "api.metadata", "api.sync", "api.delete",
        "durable.ops", "durable.redeem", "durable.rotate", "durable.read_token", "durable.privacy", "durable.expiry",
        "views.share", "views.fragments", "views.nav", "views.locate", "views.card", "live.socket",
    }
)  # fmt: skip


class RateLimiter:
    """Checks and counts requests per client address against the configured limits."""

    def __init__(self, storage: Storage, limits: dict[str, list[RateLimitItem]], trusted_proxies: Sequence[IPNetwork], metrics: Metrics | None = None) -> None:
        self.storage = storage
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self.limits = limits
        self.trusted_proxies = tuple(trusted_proxies)
        self.metrics = metrics
        self._warned_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None, workers: int = 1) -> RateLimiter | None:
        """None when rate limits are off. ``workers``: the processes of one ``serve --workers N``
        that count in memory side by side (each gets its share of every limit)."""
        cfg = settings.rate_limits
        if not cfg.enabled:
            return None
        limits = {name: parse_many(getattr(cfg, name)) for name in LIMIT_NAMES if getattr(cfg, name) != "off"}
        if settings.redis_url is None and workers > 1:
            limits = {name: [worker_share(item, workers) for item in items] for name, items in limits.items()}
        storage: Storage
        if settings.redis_url is not None:
            url = settings.redis_url.get_secret_value()
            url = "async+redis+unix" + url.removeprefix("unix") if url.startswith("unix") else "async+" + url
            # Per deployment, like the live relay's channels: deployments on other stores that share
            # the Redis server keep their own counts.
            prefix = f"{KEY_PREFIX}:{relay_channel(settings).rsplit(':', 1)[-1]}"
            storage = RedisStorage(
                url, implementation="redispy", key_prefix=prefix, wrap_exceptions=True, socket_timeout=STORAGE_DEADLINE, socket_connect_timeout=STORAGE_DEADLINE
            )
        else:
            storage = MemoryStorage()
        return cls(storage, limits, cfg.trusted_proxies, metrics)

    async def close(self) -> None:
        timer = getattr(self.storage, "timer", None)  # the memory store's expiry task
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()
        bridge = getattr(self.storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        if client is not None and hasattr(client, "aclose"):
            await client.aclose()

    # -- addresses

    def client_key(self, request: web.BaseRequest) -> str:
        """The address requests are counted under (see the module doc)."""
        address = client_ip(request, self.trusted_proxies)
        if address is None:
            return "unknown"
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address)

    # -- checks

    async def hit(self, name: str, key: str) -> None:
        """Count one request against limit ``name``; raise RateLimited when it is over."""
        for item in self.limits.get(name, ()):
            if not await self._guarded(self.strategy.hit(item, name, key), True):
                await self._refuse(name, item, key)

    async def check(self, name: str, key: str) -> None:
        """Raise RateLimited when limit ``name`` is exhausted for ``key``, without counting."""
        for item in self.limits.get(name, ()):
            if not await self._guarded(self.strategy.test(item, name, key), True):
                await self._refuse(name, item, key)

    async def _refuse(self, name: str, item: RateLimitItem, key: str) -> None:
        retry_after = float(item.get_expiry())
        try:
            stats = await asyncio.wait_for(self.strategy.get_window_stats(item, name, key), STORAGE_DEADLINE)
            retry_after = stats.reset_time - time.time()
        except Exception:
            pass
        if self.metrics is not None:
            self.metrics.rate_limited.labels(name).inc()
        raise RateLimited(math.ceil(min(max(retry_after, 1.0), item.get_expiry())))

    async def _guarded(self, call: Awaitable[bool], default: bool) -> bool:
        try:
            return await asyncio.wait_for(call, STORAGE_DEADLINE)
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.rate_limit_errors.inc()
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("rate-limit store failed (%s); requests are let through until it answers", type(exc).__name__)
            return default


def worker_share(item: RateLimitItem, workers: int) -> RateLimitItem:
    """``item`` for one of ``workers`` processes that each count alone: a ``1/workers`` share of
    its amount, rounded down (never above the limit in total), and at least 1."""
    return type(item)(max(1, item.amount // workers), item.multiples, item.namespace)


# -- the web side: the app key, the middleware, and the admin-key hook ---------------------------



def request_key(request: web.Request) -> str | None:
    """The request's client key, or None when rate limits are off."""
    limiter = request.app.get(LIMITER)
    if limiter is None:
        return None
    return limiter.client_key(request)


async def count(request: web.Request, name: str) -> None:
    """Count one request against limit ``name`` (RateLimited when over). For calls inside one
    request (RPC methods on a WebSocket session)."""
    limiter, key = request.app.get(LIMITER), request_key(request)
    if limiter is not None and key is not None:
        await limiter.hit(name, key)


async def admin_attempt(request: web.Request, ok: bool) -> None:
    """After an admin key (or sign-in cookie) was checked: a wrong one is counted, and over the
    limit both wrong and right ones are refused (RateLimited)."""
    limiter, key = request.app.get(LIMITER), request_key(request)
    if limiter is None or key is None:
        return
    if ok:
        await limiter.check("admin_failures", key)
    else:
        await limiter.hit("admin_failures", key)


def rpc_limiter(request: web.Request) -> Callable[[str], Awaitable[None]]:
    """What the RPC target calls before ``createShare`` (``create``) and syncs (``sync``)."""

    async def limit(name: str) -> None:
        await count(request, name)

    return limit


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def ratelimit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts the request against its route's limit before the handler; on share routes, refuses
    an address over its miss limit and counts the 404s it gets. Inside the error middleware, so
    RateLimited is rendered like any domain error."""
    limiter = request.app.get(LIMITER)
    route = request.match_info.route.name if request.match_info.route is not None else None
    if limiter is None or route is None:
        return await handler(request)
    key = request_key(request) or "unknown"
    share_route = route in SHARE_ROUTES
    if share_route:
        await limiter.check("share_misses", key)
    if route in ROUTE_LIMITS:
        await limiter.hit(ROUTE_LIMITS[route], key)
    if not share_route:
        return await handler(request)
    try:
        response = await handler(request)
    except (ShareError, web.HTTPException) as exc:
        if getattr(exc, "status", None) == 404:
            await limiter.hit("share_misses", key)
        raise
    if response.status == 404:
        await limiter.hit("share_misses", key)
    return response


async def rate_limiter(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the limiter (memory or Redis) for the application's lifetime."""
    worker = app.get(WORKER)
    limiter = RateLimiter.from_settings(app[SETTINGS], app.get(METRICS), workers=worker.count if worker is not None else 1)
    app[LIMITER] = limiter
    try:
        yield
    finally:
        if limiter is not None:
            await limiter.close()
