"""Resources that live as long as the application: ``cleanup_ctx`` generators opened on startup
and closed on shutdown, in the order ``app.py`` appends them, and the shutdown hook."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from cloudsession.errors import ShareError
from cloudsession.hooks.dispatch import Dispatcher
from cloudsession.live.hub import LiveHub
from cloudsession.live.relay import RedisRelay, redis_client, relay_channel
from cloudsession.shares.hookbox import HookBox
from cloudsession.shares.service import open_service
from cloudsession.shares.sweep import sweep
from cloudsession.web.keys import HOOK_KEYS, LIVE, METRICS, SERVICE, SETTINGS

log = logging.getLogger(__name__)


async def share_service(app: web.Application) -> AsyncIterator[None]:
    """The store and the share service on it, telling the live hub about every change, and the
    event hooks' dispatcher when hooks are configured (docs/hooks.md)."""
    settings = app[SETTINGS]
    async with open_service(settings, events=app[LIVE], metrics=app.get(METRICS)) as service:
        app[SERVICE] = service
        try:
            await service.remove_crash_leftovers()
        except ShareError as exc:  # a store that is down at startup must not stop the server
            log.warning("could not look for temporary files left by a crash: %s", exc.message)
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
    interval = app[SETTINGS].sweep_interval_seconds

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
    """With ``REDIS_URL`` set, relay share events between replicas while the application runs
    (``RedisRelay``); without it, nothing (viewers hear their own replica)."""
    settings, hub = app[SETTINGS], app[LIVE]
    if settings.redis_url is None or not isinstance(hub, LiveHub):
        yield
        return
    relay = RedisRelay(hub, redis_client(settings.redis_url.get_secret_value()), relay_channel(settings), app.get(SERVICE))
    await relay.start()
    hub.relay = relay
    try:
        yield
    finally:
        hub.relay = None
        await relay.stop()
