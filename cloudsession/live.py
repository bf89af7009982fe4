"""Live updates for share viewers: the ``EventSink`` the share service calls, and ``/ws/<id>``.

The share service calls ``share_synced`` after every accepted sync and ``share_deleted`` after a
delete. ``LiveHub`` fans these out to the WebSocket viewers of that share, in one of two frame
formats chosen by the viewer when it connects:

- ``/ws/<id>`` (the reference's format, kept for existing consumers): one text frame per sync,
  the JSON array of the sync's public items, exactly what the reference broadcast.
- ``/ws/<id>?format=events`` (the share page's format): small JSON events naming what changed,
  so the page fetches rendered fragments for just those messages (``/share/<id>/fragments``)::

    {"type": "hello", "syncCount": 12}                 on connect
    {"type": "sync", "syncCount": 13, "messages": ["msg_..."], "session": true,
     "diffs": false, "models": false}                  per accepted sync
    {"type": "resync", "syncCount": 14}                too much changed or the viewer fell
                                                       behind: re-read the page's digest
    {"type": "deleted"}                                the share was deleted

Both formats close with code 4404 when the share is deleted. Unlike the reference, the hub checks
that the share exists and that a browser's ``Origin`` is this server, bounds the number of
viewers, pings idle sockets, and never lets a slow viewer delay a sync: each viewer has a small
queue, and a viewer whose queue is full is told to resync (events) or disconnected (reference).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from cloudsession.api import request_read_token
from cloudsession.app_keys import LIVE, SERVICE, SETTINGS
from cloudsession.errors import SessionNotFound
from cloudsession.models import json_bytes

log = logging.getLogger(__name__)

FORMAT_REFERENCE = "reference"
FORMAT_EVENTS = "events"
CLOSE_DELETED = 4404
CLOSE_TOO_SLOW = 1013  # "try again later": the viewer fell too far behind
# An events frame lists at most this many message ids; beyond it the page resyncs instead.
MAX_EVENT_MESSAGES = 500


class EventSink(Protocol):
    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        """An accepted sync. ``items`` are the public (id-rewritten, stripped) sync items."""

    async def share_deleted(self, share_id: str) -> None:
        """The share was deleted (or expired); viewers should be told and closed."""


class NullSink:
    """Used when nobody listens (CLI tools, tests of the service alone)."""

    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        return None

    async def share_deleted(self, share_id: str) -> None:
        return None


def sync_event(items: list[dict[str, Any]], sync_count: int) -> dict[str, Any]:
    """The events-format frame for one sync: which messages, and whether header or diffs changed."""
    messages: dict[str, None] = {}
    touched = {"session": False, "diffs": False, "models": False}
    for item in items:
        kind, data = item.get("type"), item.get("data")
        if kind == "message" and isinstance(data, dict) and isinstance(data.get("id"), str):
            messages[data["id"]] = None
        elif kind == "part" and isinstance(data, dict) and isinstance(data.get("messageID"), str):
            messages[data["messageID"]] = None
        elif kind == "session":
            touched["session"] = True
        elif kind == "session_diff":
            touched["diffs"] = True
        elif kind == "model":
            touched["models"] = True
    if len(messages) > MAX_EVENT_MESSAGES:
        return {"type": "resync", "syncCount": sync_count}
    return {"type": "sync", "syncCount": sync_count, "messages": list(messages), **touched}


@dataclass(eq=False)
class Viewer:
    """One connected socket: its format and its outgoing queue (drained by ``pump``)."""

    ws: web.WebSocketResponse
    format: str
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    close_code: int = 1000
    close_reason: str = ""

    def offer(self, frame: str, sync_count: int) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            if self.format == FORMAT_EVENTS:
                # Drop what is queued: one resync replaces any number of missed events.
                while not self.queue.empty():
                    self.queue.get_nowait()
                self.queue.put_nowait(json_bytes({"type": "resync", "syncCount": sync_count}).decode())
            else:
                self.finish(CLOSE_TOO_SLOW, "Viewer too slow")

    def finish(self, code: int, reason: str, last_frame: str | None = None) -> None:
        """Replace whatever is queued with an optional last frame and the close."""
        self.close_code, self.close_reason = code, reason
        while not self.queue.empty():
            self.queue.get_nowait()
        if last_frame is not None:
            self.queue.put_nowait(last_frame)
        self.queue.put_nowait(None)

    async def pump(self) -> None:
        """Send queued frames in order; a ``None`` closes the socket with the recorded code."""
        while True:
            frame = await self.queue.get()
            if frame is None:
                await self.ws.close(code=self.close_code, message=self.close_reason.encode())
                return
            await self.ws.send_str(frame)


class LiveHub:
    """In-process fan-out of share events to WebSocket viewers (one process; see docs/views.md)."""

    def __init__(self, *, max_viewers: int = 10_000, max_viewers_per_share: int = 500) -> None:
        self.max_viewers = max_viewers
        self.max_viewers_per_share = max_viewers_per_share
        self._viewers: dict[str, set[Viewer]] = {}

    def attach(self, app: web.Application) -> LiveHub:
        """Become the application's event sink, and close every socket on shutdown."""
        app[LIVE] = self

        async def shutdown(_app: web.Application) -> None:
            await self.close_all()

        app.on_shutdown.append(shutdown)
        return self

    @property
    def viewer_count(self) -> int:
        return sum(len(v) for v in self._viewers.values())

    def viewers_of(self, share_id: str) -> int:
        return len(self._viewers.get(share_id, ()))

    def has_room(self, share_id: str) -> bool:
        return self.viewer_count < self.max_viewers and self.viewers_of(share_id) < self.max_viewers_per_share

    def add(self, share_id: str, viewer: Viewer) -> None:
        self._viewers.setdefault(share_id, set()).add(viewer)

    def remove(self, share_id: str, viewer: Viewer) -> None:
        viewers = self._viewers.get(share_id)
        if viewers is not None:
            viewers.discard(viewer)
            if not viewers:
                del self._viewers[share_id]

    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        viewers = self._viewers.get(share_id)
        if not viewers:
            return
        # Serialised once per format, however many viewers there are.
        reference = event = ""
        for viewer in list(viewers):
            if viewer.format == FORMAT_EVENTS:
                event = event or json_bytes(sync_event(items, sync_count)).decode()
                viewer.offer(event, sync_count)
            else:
                reference = reference or json_bytes(items).decode()
                viewer.offer(reference, sync_count)

    async def share_deleted(self, share_id: str) -> None:
        deleted = json_bytes({"type": "deleted"}).decode()
        for viewer in list(self._viewers.get(share_id, ())):
            viewer.finish(CLOSE_DELETED, "Share deleted", deleted if viewer.format == FORMAT_EVENTS else None)

    async def close_all(self) -> None:
        for share_id in list(self._viewers):
            for viewer in list(self._viewers.get(share_id, ())):
                viewer.finish(1001, "Server shutting down")


# --------------------------------------------------------------------------- the /ws/<id> door


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
    forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
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
    hub.add(share_id, viewer)
    if fmt == FORMAT_EVENTS:
        viewer.offer(json_bytes({"type": "hello", "syncCount": metadata.get("syncCount", 0)}).decode(), 0)
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
