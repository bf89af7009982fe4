"""``/ws/<id>``: a viewer's live feed of one share (frame formats in ``live/hub.py``).

Unlike the reference, the door checks that the share exists and is readable, that a browser's
``Origin`` is this server, and that the hub has room; idle sockets are pinged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from cloudsession.errors import SessionNotFound
from cloudsession.live.hub import FORMAT_EVENTS, FORMAT_REFERENCE, LiveHub, Viewer
from cloudsession.shares.public import current_redactor
from cloudsession.web.http import forwarded_host, request_read_token
from cloudsession.web.keys import LIVE, SERVICE, SETTINGS

log = logging.getLogger(__name__)

def _origin_allowed(request: web.Request) -> bool:
    """Browsers send ``Origin`` on WebSocket upgrades; it must be this server. Non-browser
    clients send none and are let through (they cannot be tricked into connecting)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    allowed = {request.host.lower()}
    forwarded = forwarded_host(request)
    if forwarded:
        allowed.add(forwarded.lower())
    public_url = request.app[SETTINGS].public_url
    if public_url:
        allowed.add(urlsplit(public_url).netloc.lower())
    return parts.netloc.lower() in allowed


def _is_upgrade(request: web.Request) -> bool:
    # The reference's exact check (compat-contract §6), answered with its exact 426.
    upgrade = request.headers.get("Upgrade", "").lower()
    connection = request.headers.get("Connection", "").lower()
    return upgrade == "websocket" and "upgrade" in connection


async def share_socket(request: web.Request) -> web.StreamResponse:
    """``GET /ws/{id}``: a viewer's live feed of one share."""
    if not _is_upgrade(request):
        return web.Response(status=426, text="Expected WebSocket upgrade", content_type="text/plain", charset="UTF-8")
    if not _origin_allowed(request):
        return web.Response(status=403, text="Origin not allowed", content_type="text/plain", charset="UTF-8")
    share_id = request.match_info["id"]
    try:
        metadata = await request.app[SERVICE].metadata(share_id, request_read_token(request))
    except SessionNotFound:
        return web.Response(status=404, text="Session not found", content_type="text/plain", charset="UTF-8")
    hub = request.app[LIVE]
    if not isinstance(hub, LiveHub) or not hub.has_room(share_id):
        return web.Response(status=503, text="Too many viewers", content_type="text/plain", charset="UTF-8")
    fmt = FORMAT_EVENTS if request.query.get("format") == FORMAT_EVENTS else FORMAT_REFERENCE
    ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=4096, autoping=True)
    await ws.prepare(request)
    viewer = Viewer(ws, fmt)
    # Reading the share registered its owner in this request's redaction scope: every frame the
    # hub makes for this share's viewers passes through it.
    redactor = current_redactor()
    hub.add(share_id, viewer, redactor.serialised if redactor else None)
    if fmt == FORMAT_EVENTS:
        viewer.offer(hub.frame(share_id, {"type": "hello", "syncCount": metadata.get("syncCount", 0)}), 0)
    pump = asyncio.create_task(viewer.pump())
    try:
        async for message in _incoming(ws):
            del message  # client frames are ignored, as in the reference
    finally:
        hub.remove(share_id, viewer)
        pump.cancel()
        try:
            await pump
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception:  # a send failing on a dying socket is expected, not a server error
            log.debug("share %s: viewer send failed", share_id, exc_info=True)
        if not ws.closed:
            await ws.close(code=viewer.close_code, message=viewer.close_reason.encode())
    return ws


async def _incoming(ws: web.WebSocketResponse) -> AsyncIterator[Any]:
    async for message in ws:
        if message.type == WSMsgType.ERROR:
            log.debug("websocket error: %s", ws.exception())
            return
        yield message
