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
viewers (per share and per client address), pings idle sockets, and never lets a slow viewer
delay a sync or hold memory without bound: frames are serialised once per sync and shared by
every viewer; each viewer has a queue bounded in frames and in bytes (``max_queued_bytes``), and
a viewer whose queue is full is told to resync (events) or disconnected (reference). The socket
under a viewer (``web/live.py``) writes a frame in pieces as the client reads them, each within a
deadline, so an unread frame never becomes a per-viewer copy in the transport's buffer.

With several replicas, ``REDIS_URL`` makes the hub relay every event through Redis pub/sub
(``relay.py``), so a viewer connected to one replica hears about syncs accepted by any; the worker
processes of one ``serve --workers N`` relay to each other the same way without Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cloudsession.jsonio import json_bytes

if TYPE_CHECKING:
    from cloudsession.live.relay import Relay

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


MAX_QUEUED_FRAMES = 64
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024


class Socket(Protocol):
    """What the hub needs of a viewer's WebSocket (``web/live.py`` adapts aiohttp's)."""

    async def send_text(self, payload: bytes) -> None:
        """Send one text message (UTF-8 already); TimeoutError when the client stops reading."""
        ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...

    def abort(self) -> None:
        """Drop the connection at once, with whatever is still unsent."""
        ...


@dataclass(eq=False)
class Viewer:
    """One connected socket: its format, its client address and its outgoing queue (drained by
    ``pump``). Frames are bytes objects shared with every other viewer of the same sync."""

    ws: Socket
    format: str
    address: str = ""
    # Bytes of frames waiting behind the one being sent; a frame that would take the queue past
    # it (or past MAX_QUEUED_FRAMES) makes the viewer too slow. An empty queue takes any frame.
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(maxsize=MAX_QUEUED_FRAMES))
    queued_bytes: int = 0
    close_code: int = 1000
    close_reason: str = ""
    # Set by ``finish``: the queue ends with the close, which no later frame may push out.
    closing: bool = False

    def offer(self, frame: bytes, sync_count: int) -> None:
        if self.closing:
            return
        fits = self.queue.empty() or self.queued_bytes + len(frame) <= self.max_queued_bytes
        if fits and not self.queue.full():
            self._put(frame)
        elif self.format == FORMAT_EVENTS:
            # Drop what is queued: one resync replaces any number of missed events.
            self._clear()
            self._put(json_bytes({"type": "resync", "syncCount": sync_count}))
        else:
            self.finish(CLOSE_TOO_SLOW, "Viewer too slow")

    def _put(self, frame: bytes | None) -> None:
        self.queue.put_nowait(frame)
        self.queued_bytes += len(frame) if frame is not None else 0

    def _clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0

    def finish(self, code: int, reason: str, last_frame: bytes | None = None) -> None:
        """Replace whatever is queued with an optional last frame and the close."""
        self.close_code, self.close_reason, self.closing = code, reason, True
        self._clear()
        if last_frame is not None:
            self._put(last_frame)
        self._put(None)

    async def pump(self) -> None:
        """Send queued frames in order; a ``None`` closes the socket with the recorded code. A
        client that stops reading (the socket's send deadline passes) is dropped at once: its
        unsent data goes with it."""
        try:
            while True:
                frame = await self.queue.get()
                if frame is None:
                    await self.ws.close(code=self.close_code, message=self.close_reason.encode())
                    return
                self.queued_bytes -= len(frame)
                await self.ws.send_text(frame)
        except TimeoutError:
            log.info("live viewer %s stopped reading; disconnected", self.address or "?")
            self.ws.abort()


class LiveHub:
    """Fan-out of share events to this process's WebSocket viewers, and through ``relay`` (when
    Redis is configured) to the viewers of the other replicas (see docs/views.md)."""

    def __init__(self, *, max_viewers: int = 10_000, max_viewers_per_share: int = 500, max_viewers_per_address: int = 20) -> None:
        self.max_viewers = max_viewers
        self.max_viewers_per_share = max_viewers_per_share
        self.max_viewers_per_address = max_viewers_per_address
        self._viewers: dict[str, set[Viewer]] = {}
        self._per_address: dict[str, int] = {}
        # Set by ``redis_fanout`` while Redis is configured or sibling workers run; None: this
        # process's viewers only.
        self.relay: Relay | None = None
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

    def viewers_from(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def has_room(self, share_id: str, address: str = "") -> bool:
        return (
            self.viewer_count < self.max_viewers
            and self.viewers_of(share_id) < self.max_viewers_per_share
            and self.viewers_from(address) < self.max_viewers_per_address
        )

    def add(self, share_id: str, viewer: Viewer, redact: Callable[[str], str] | None = None) -> None:
        viewers = self._viewers.setdefault(share_id, set())
        if viewer not in viewers:
            viewers.add(viewer)
            self._per_address[viewer.address] = self._per_address.get(viewer.address, 0) + 1
        if redact is not None:
            self._redact[share_id] = redact

    def frame(self, share_id: str, data: Any) -> bytes:
        """``data`` serialised for the viewers of ``share_id``: every frame is made here."""
        text = json_bytes(data).decode()
        redact = self._redact.get(share_id)
        return (redact(text) if redact is not None else text).encode()

    def remove(self, share_id: str, viewer: Viewer) -> None:
        viewers = self._viewers.get(share_id)
        if viewers is not None and viewer in viewers:
            viewers.discard(viewer)
            left = self._per_address.get(viewer.address, 0) - 1
            if left > 0:
                self._per_address[viewer.address] = left
            else:
                self._per_address.pop(viewer.address, None)
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
        # Serialised (and encoded) once per format, however many viewers there are.
        reference = event = b""
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
