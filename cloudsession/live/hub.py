"""Live updates for share viewers: the hub that implements the share service's ``EventSink``.

The WebSocket door is ``web/live.py``; the relay between replicas is ``relay.py``.

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

With several replicas, ``REDIS_URL`` makes the hub relay every event through Redis pub/sub
(``RedisRelay`` below), so a viewer connected to one replica hears about syncs accepted by any.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cloudsession.jsonio import json_bytes

if TYPE_CHECKING:
    from cloudsession.live.relay import RedisRelay

log = logging.getLogger(__name__)

FORMAT_REFERENCE = "reference"
FORMAT_EVENTS = "events"
CLOSE_DELETED = 4404
# The share's read capabilities changed (secret rotated, made private): the viewer must reconnect,
# and the handshake checks its read token again. The page reconnects on any code but 4404.
CLOSE_ACCESS_CHANGED = 4401
CLOSE_TOO_SLOW = 1013  # "try again later": the viewer fell too far behind
# An events frame lists at most this many message ids; beyond it the page resyncs instead.
MAX_EVENT_MESSAGES = 500


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


class Socket(Protocol):
    """What the hub needs of a viewer's WebSocket (aiohttp's ``WebSocketResponse`` is one)."""

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


@dataclass(eq=False)
class Viewer:
    """One connected socket: its format and its outgoing queue (drained by ``pump``)."""

    ws: Socket
    format: str
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    close_code: int = 1000
    close_reason: str = ""
    # Set by ``finish``: the queue ends with the close, which no later frame may push out.
    closing: bool = False

    def offer(self, frame: str, sync_count: int) -> None:
        if self.closing:
            return
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
        self.close_code, self.close_reason, self.closing = code, reason, True
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
    """Fan-out of share events to this process's WebSocket viewers, and through ``relay`` (when
    Redis is configured) to the viewers of the other replicas (see docs/views.md)."""

    def __init__(self, *, max_viewers: int = 10_000, max_viewers_per_share: int = 500) -> None:
        self.max_viewers = max_viewers
        self.max_viewers_per_share = max_viewers_per_share
        self._viewers: dict[str, set[Viewer]] = {}
        # Set by ``redis_fanout`` while Redis is configured; None: this process's viewers only.
        self.relay: RedisRelay | None = None
        # The latest sync count told to each watched share's viewers: with several replicas,
        # syncs accepted by different ones can arrive out of order (see deliver_synced).
        self._sync_counts: dict[str, int] = {}
        # share id -> the redaction every frame to its viewers passes through (the owner's real
        # session ID replaced; given by the door that admitted the viewer, shares/public.py).
        self._redact: dict[str, Callable[[str], str]] = {}

    @property
    def viewer_count(self) -> int:
        return sum(len(v) for v in self._viewers.values())

    def viewers_of(self, share_id: str) -> int:
        return len(self._viewers.get(share_id, ()))

    def has_room(self, share_id: str) -> bool:
        return self.viewer_count < self.max_viewers and self.viewers_of(share_id) < self.max_viewers_per_share

    def add(self, share_id: str, viewer: Viewer, redact: Callable[[str], str] | None = None) -> None:
        self._viewers.setdefault(share_id, set()).add(viewer)
        if redact is not None:
            self._redact[share_id] = redact

    def frame(self, share_id: str, data: Any) -> str:
        """``data`` serialised for the viewers of ``share_id``: every frame is made here."""
        text = json_bytes(data).decode()
        redact = self._redact.get(share_id)
        return redact(text) if redact is not None else text

    def remove(self, share_id: str, viewer: Viewer) -> None:
        viewers = self._viewers.get(share_id)
        if viewers is not None:
            viewers.discard(viewer)
            if not viewers:
                del self._viewers[share_id]
                self._sync_counts.pop(share_id, None)
                self._redact.pop(share_id, None)

    def watched_shares(self) -> list[str]:
        return list(self._viewers)

    # The EventSink methods: this process's viewers first (at once, whatever Redis is doing), then
    # the other replicas through the relay, which only queues and so can neither fail nor slow a sync.

    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        await self.deliver_synced(share_id, items, sync_count)
        if self.relay is not None:
            self.relay.publish(share_id, sync_count, items)

    async def share_deleted(self, share_id: str) -> None:
        await self.deliver_deleted(share_id)
        if self.relay is not None:
            self.relay.publish(share_id, None)

    async def share_access_changed(self, share_id: str) -> None:
        await self.deliver_access_changed(share_id)
        if self.relay is not None:
            self.relay.publish(share_id, None, kind="access")

    async def deliver_synced(self, share_id: str, items: list[dict[str, Any]] | None, sync_count: int) -> None:
        """Tell this process's viewers of a sync. ``items`` is None when they are unknown (a
        relayed sync too large to carry them, or syncs possibly missed while Redis was away)."""
        viewers = self._viewers.get(share_id)
        if not viewers:
            return
        # A sync older than one already told (relayed from another replica after a later local
        # one) is harmless to events viewers, which fetch the current state, but its items would
        # overwrite newer ones for a reference viewer.
        late = sync_count < self._sync_counts.get(share_id, -1)
        self._sync_counts[share_id] = max(sync_count, self._sync_counts.get(share_id, -1))
        # Serialised once per format, however many viewers there are.
        reference = event = ""
        for viewer in list(viewers):
            if viewer.format == FORMAT_EVENTS:
                unknown = {"type": "resync", "syncCount": sync_count}  # re-read the page
                event = event or self.frame(share_id, unknown if items is None else sync_event(items, sync_count))
                viewer.offer(event, sync_count)
            elif items is None or late:
                # A reference viewer cannot be told to resync: closed, as when it falls behind.
                viewer.finish(CLOSE_TOO_SLOW, "Missed updates")
            else:
                reference = reference or self.frame(share_id, items)
                viewer.offer(reference, sync_count)

    async def deliver_deleted(self, share_id: str) -> None:
        deleted = self.frame(share_id, {"type": "deleted"})
        for viewer in list(self._viewers.get(share_id, ())):
            viewer.finish(CLOSE_DELETED, "Share deleted", deleted if viewer.format == FORMAT_EVENTS else None)

    async def deliver_access_changed(self, share_id: str) -> None:
        # Closing is simpler and safer than re-checking each viewer's token here: the handshake
        # is the one place that checks read access, and a viewer still allowed just reconnects.
        for viewer in list(self._viewers.get(share_id, ())):
            viewer.finish(CLOSE_ACCESS_CHANGED, "Access changed; reconnect")

    async def close_all(self) -> None:
        for share_id in list(self._viewers):
            for viewer in list(self._viewers.get(share_id, ())):
                viewer.finish(1001, "Server shutting down")
