"""Resources that live as long as the application: ``cleanup_ctx`` generators opened on startup
and closed on shutdown, in the order ``app.py`` appends them, and the shutdown hook."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from cloudsession.errors import ShareError
from cloudsession.hooks.dispatch import Dispatcher
from cloudsession.live.hub import LiveHub
from cloudsession.live.relay import RedisRelay, Relay, SiblingTransport, redis_client, relay_channel
from cloudsession.shares.hookbox import HookBox
from cloudsession.shares.service import open_service
from cloudsession.shares.sweep import sweep
from cloudsession.web.keys import HOOK_KEYS, IN_FLIGHT, LIVE, METRICS, SERVICE, SETTINGS, WORKER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)


class InFlight:
    """Requests being read or handled right now (WebSocket sessions aside), so that a shutdown
    can wait for them: a sync whose body is still arriving when SIGTERM lands is finished, not
    dropped. (aiohttp's own shutdown stops reading from every connection first, so such a sync
    would hang until the shutdown timeout and then fail.)"""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight, at most ``timeout`` seconds; False if some still are."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request in ``IN_FLIGHT`` while its handler runs (a live socket is not counted:
    viewers are closed at shutdown, they are not waited for)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await handler(request)
    tracker = request.app[IN_FLIGHT]
    tracker.enter()
    try:
        return await handler(request)
    finally:
        tracker.leave()


def first_worker(app: web.Application) -> bool:
    """True in a single process, and in worker 1 of ``serve --workers N``: the one that does the
    store-wide chores (the crash leftovers at startup, the periodic sweep) for all of them."""
    worker = app.get(WORKER)
    return worker is None or worker.index == 1


async def share_service(app: web.Application) -> AsyncIterator[None]:
    """The store and the share service on it, telling the live hub about every change, and the
    event hooks' dispatcher when hooks are configured (docs/hooks.md)."""
    settings = app[SETTINGS]
    async with open_service(settings, events=app[LIVE], metrics=app.get(METRICS)) as service:
        app[SERVICE] = service
        try:
            if first_worker(app):  # one walk of the store, not one per worker of `serve --workers`
                await service.remove_crash_leftovers()
        except ShareError as exc:  # a store that is down at startup must not stop the server
            log.warning("could not look for temporary files left by a crash: %s", exc.message)
        # A data dir from before the listing keys: built now (or, when large, in the background).
        await service.prepare_listing()
        if not settings.hooks.enabled:
            yield
            return
        service.hooks = HookBox(service, settings.hooks, settings.public_url or "")
        dispatcher = asyncio.get_running_loop().create_task(Dispatcher(service.hooks, settings.hooks, app[HOOK_KEYS]).run())
        try:
            yield
        finally:
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)
            await service.hooks.flush()


async def close_viewers(app: web.Application) -> None:
    """``on_shutdown``: every viewer's socket is closed (with 1001) before the server waits for
    open requests to finish, so live viewers never hold a shutdown up."""
    hub = app[LIVE]
    if isinstance(hub, LiveHub):
        await hub.close_all()


async def periodic_sweep(app: web.Application) -> AsyncIterator[None]:
    """Sweep every ``sweep_interval_seconds`` while the server runs: expired shares, folded journal
    entries, old delete records (``shares/sweep.py``)."""
    interval = app[SETTINGS].sweep_interval_seconds if first_worker(app) else 0  # one sweeper per `serve --workers`

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                report = await sweep(app[SERVICE])
                if report.expired or report.journal_entries_deleted:
                    log.info("sweep: %d expired shares deleted, %d journal entries pruned", len(report.expired), report.journal_entries_deleted)
            except ShareError as exc:
                log.warning("sweep failed: %s", exc.message)
            except Exception:
                log.exception("sweep failed")

    task = asyncio.get_running_loop().create_task(loop()) if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def redis_fanout(app: web.Application) -> AsyncIterator[None]:
    """Relay share events to the other processes while the application runs: through Redis with
    ``REDIS_URL`` set (``RedisRelay``: every worker of every replica), else between the sibling
    workers of one ``serve --workers N`` (``SiblingTransport``); a single process without Redis
    relays nothing (its viewers hear their own process)."""
    settings, hub = app[SETTINGS], app[LIVE]
    siblings = app.get(WORKER)
    if not isinstance(hub, LiveHub):
        yield
        return
    relay: Relay
    if settings.redis_url is not None:
        relay = RedisRelay(hub, redis_client(settings.redis_url.get_secret_value()), relay_channel(settings), app.get(SERVICE))
    elif siblings is not None and siblings.peers:
        relay = Relay(hub, SiblingTransport(siblings), app.get(SERVICE))
    else:
        yield
        return
    await relay.start()
    hub.relay = relay
    try:
        yield
    finally:
        hub.relay = None
        await relay.stop()
