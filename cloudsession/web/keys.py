"""Typed keys for the objects the application shares between its handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from cloudsession.config import Settings
    from cloudsession.render.pages import ViewRenderer
    from cloudsession.shares.events import EventSink
    from cloudsession.shares.service import ShareService
    from cloudsession.web.lifecycle import InFlight

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
SERVICE: web.AppKey[ShareService] = web.AppKey("service")
LIVE: web.AppKey[EventSink] = web.AppKey("live")
RENDERER: web.AppKey[ViewRenderer] = web.AppKey("renderer")
IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("in_flight")
