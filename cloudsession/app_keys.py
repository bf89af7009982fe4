"""Typed keys for objects shared through the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from cloudsession.config import Settings
    from cloudsession.live import EventSink
    from cloudsession.service import ShareService
    from cloudsession.store.base import ObjectStore

SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
STORE: web.AppKey["ObjectStore"] = web.AppKey("store")
SERVICE: web.AppKey["ShareService"] = web.AppKey("service")
LIVE: web.AppKey["EventSink"] = web.AppKey("live")
