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

With several replicas, ``REDIS_URL`` makes the hub relay every event through Redis pub/sub
(``RedisRelay`` below), so a viewer connected to one replica hears about syncs accepted by any.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web

from cloudsession.api import request_read_token
from cloudsession.app_keys import LIVE, SERVICE, SETTINGS
from cloudsession.config import ConfigError, Settings
from cloudsession.errors import SessionNotFound
from cloudsession.models import json_bytes

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from cloudsession.service import ShareService

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


class EventSink(Protocol):
    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        """An accepted sync. ``items`` are the public (id-rewritten, stripped) sync items."""

    async def share_deleted(self, share_id: str) -> None:
        """The share was deleted (or expired); viewers should be told and closed."""

    async def share_access_changed(self, share_id: str) -> None:
        """Who may read the share changed (rotation, private); viewers must re-authenticate."""


class NullSink:
    """Used when nobody listens (CLI tools, tests of the service alone)."""

    async def share_synced(self, share_id: str, items: list[dict[str, Any]], sync_count: int) -> None:
        return None

    async def share_deleted(self, share_id: str) -> None:
        return None

    async def share_access_changed(self, share_id: str) -> None:
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
                self._sync_counts.pop(share_id, None)

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
                event = event or json_bytes(unknown if items is None else sync_event(items, sync_count)).decode()
                viewer.offer(event, sync_count)
            elif items is None or late:
                # A reference viewer cannot be told to resync: closed, as when it falls behind.
                viewer.finish(CLOSE_TOO_SLOW, "Missed updates")
            else:
                reference = reference or json_bytes(items).decode()
                viewer.offer(reference, sync_count)

    async def deliver_deleted(self, share_id: str) -> None:
        deleted = json_bytes({"type": "deleted"}).decode()
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


# --------------------------------------------------------------------------- across replicas


# One relayed message at most; a sync whose items do not fit goes out without them (its viewers
# elsewhere resync). Every replica receives every message, so this bounds what one sync costs them.
MAX_RELAY_BYTES = 1024 * 1024
# Events waiting for Redis at most; beyond it (Redis slow or away) they are remembered as "missed".
MAX_OUTBOX_BYTES = 16 * 1024 * 1024
# Shares remembered as missed while Redis is away, announced (as resyncs) when it is back.
MAX_MISSED_SHARES = 10_000
RELAY_VERSION = 1
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
# One read of the subscription waits this long; between reads the connection is health-checked.
POLL_SECONDS = 5.0


def relay_channel(settings: Settings) -> str:
    """The channel prefix of one deployment (a share's channel is ``<prefix>:<share id>``):
    replicas on the same store meet under it, deployments on other stores sharing the Redis
    server do not hear each other. Hashed: no bucket name or path shows in Redis."""
    if settings.store.backend == "s3":
        location = f"s3:{settings.store.bucket}/{settings.store.prefix}"
    else:
        location = f"fs:{settings.store_path.resolve()}"
    return "cloudsession:live:" + hashlib.sha256(location.encode()).hexdigest()[:32]


def _backoff() -> Iterator[float]:
    """Retry delays: doubling up to a cap, with jitter so replicas do not retry in lockstep."""
    delay = BACKOFF_FIRST_SECONDS
    while True:
        yield delay * random.uniform(0.5, 1.0)
        delay = min(delay * 2, BACKOFF_MAX_SECONDS)


@dataclass
class _Outgoing:
    share_id: str
    sync_count: int | None  # None: deleted (or an access change)
    data: bytes
    kind: str = "synced"


class RedisRelay:
    """Carries this replica's share events to the other replicas, and theirs to its viewers.

    Design: a channel per share (``<prefix>:<share id>``) under one pattern subscription per
    replica (``<prefix>:*``), taken once at startup. Subscribing per share as viewers come and go
    would spare replicas the events of shares nobody watches there, but costs a round trip per
    viewer and leaves a gap in which a new viewer's events are lost; with one pattern a viewer
    costs Redis nothing. The price, every replica receiving every event, stays small: the share
    id is read from the channel name, so events of unwatched shares are dropped unparsed, and
    messages are bounded (``MAX_RELAY_BYTES``). Replicas are few.

    A message is ``{"v": 1, "from": <replica>, "kind": "synced", "syncCount": n, "items":
    [...] | null}``, ``{"v": 1, "from": <replica>, "kind": "deleted"}`` or ``{..., "kind":
    "access"}`` (viewers must re-authenticate): the public items the
    local viewers got (never the secret or the real session id). ``from`` is a random id per
    process: a replica has already told its own viewers and skips its own messages, so each
    viewer gets each event exactly once.

    Redis never stands in the way of a sync: ``publish`` only queues (bounded), a background
    task sends. While Redis is away, events for other replicas are remembered per share and
    announced as resyncs when it is back; after the subscription was lost, this replica's viewers
    are told to resync (they may have missed other replicas' syncs). Both loops retry with backoff.
    """

    def __init__(self, hub: LiveHub, client: Redis, channel: str, service: ShareService | None = None) -> None:
        self.hub = hub
        self.client = client
        self.channel = channel
        self.service = service  # reads sync counts for the catch-up after an outage
        self.replica = secrets.token_hex(8)
        self.subscribed = asyncio.Event()
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._outbox_bytes = 0
        self._missed: dict[str, int | None] = {}
        # Access changes missed while Redis was away: re-sent as such, never folded into a resync.
        self._missed_access: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_invalid = False

    # -- lifecycle

    async def start(self, wait_seconds: float = 5.0) -> None:
        """Start both loops; wait (briefly) for the subscription so that a replica reporting
        healthy already hears the others. Redis being away is no reason not to start."""
        self._spawn(self._publish_loop())
        self._spawn(self._subscribe_loop())
        try:
            await asyncio.wait_for(self.subscribed.wait(), wait_seconds)
        except asyncio.TimeoutError:
            log.warning("Redis not reachable at startup; live updates from other replicas start when it is")

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- outgoing

    def _message(self, sync_count: int | None, items: list[dict[str, Any]] | None, kind: str = "synced") -> bytes:
        if kind == "access":
            return json_bytes({"v": RELAY_VERSION, "from": self.replica, "kind": "access"})
        if sync_count is None:
            return json_bytes({"v": RELAY_VERSION, "from": self.replica, "kind": "deleted"})
        body = {"v": RELAY_VERSION, "from": self.replica, "kind": "synced", "syncCount": sync_count}
        data = json_bytes({**body, "items": items})
        return data if len(data) <= MAX_RELAY_BYTES else json_bytes({**body, "items": None})

    def publish(self, share_id: str, sync_count: int | None, items: list[dict[str, Any]] | None = None, *, kind: str = "synced") -> None:
        """Queue an event (``sync_count`` None: deleted; ``kind="access"``: an access change)
        for the other replicas. Never waits."""
        data = self._message(sync_count, items, kind)
        outgoing = _Outgoing(share_id, sync_count, data, kind)
        if self._outbox_bytes + len(data) > MAX_OUTBOX_BYTES:
            self._miss(outgoing)
            return
        self._outbox_bytes += len(data)
        self._outbox.put_nowait(outgoing)

    def _miss(self, outgoing: _Outgoing) -> None:
        share_id, sync_count = outgoing.share_id, outgoing.sync_count
        if outgoing.kind == "access":
            if len(self._missed_access) < MAX_MISSED_SHARES:
                self._missed_access.add(share_id)
            return
        if share_id in self._missed or len(self._missed) < MAX_MISSED_SHARES:
            self._missed[share_id] = sync_count  # the latest state is all the others need

    async def _publish_loop(self) -> None:
        delays, failing = _backoff(), False
        while True:
            outgoing: _Outgoing | None = None
            try:
                while self._missed_access:
                    share_id = next(iter(self._missed_access))
                    await self.client.publish(f"{self.channel}:{share_id}", self._message(None, None, "access"))
                    self._missed_access.discard(share_id)
                while self._missed:
                    share_id, sync_count = next(iter(self._missed.items()))
                    await self.client.publish(f"{self.channel}:{share_id}", self._message(sync_count, None))
                    del self._missed[share_id]
                outgoing = await self._outbox.get()
                self._outbox_bytes -= len(outgoing.data)
                await self.client.publish(f"{self.channel}:{outgoing.share_id}", outgoing.data)
            except Exception as exc:  # noqa: BLE001 - Redis gone, refused, timed out...: retry later
                if outgoing is not None:
                    self._miss(outgoing)
                while not self._outbox.empty():
                    queued = self._outbox.get_nowait()
                    self._outbox_bytes -= len(queued.data)
                    self._miss(queued)
                if not failing:
                    log.warning("Redis publish failed (%s); other replicas' viewers will resync when it is back", _describe(exc))
                failing = True
                await asyncio.sleep(next(delays))
                continue
            if failing:
                log.warning("Redis publish works again")
                delays, failing = _backoff(), False

    # -- incoming

    async def _subscribe_loop(self) -> None:
        delays, failing = _backoff(), False
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.psubscribe(f"{self.channel}:*")
                if failing:
                    log.warning("Redis subscription restored; telling this replica's viewers to resync")
                    self._spawn(self._catch_up())
                    delays, failing = _backoff(), False
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
                    if message is not None and message.get("type") == "pmessage":
                        await self.receive(message["channel"], message["data"])
            except Exception as exc:  # noqa: BLE001 - any failure of the connection: resubscribe
                self.subscribed.clear()
                if not failing:
                    log.warning("Redis subscription lost (%s); this replica's viewers hear only its own syncs until it is back", _describe(exc))
                failing = True
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                    pass
            await asyncio.sleep(next(delays))

    async def receive(self, channel: bytes, data: bytes) -> None:
        """Deliver one relayed message to this replica's viewers, unless it is this replica's own."""
        share_id = channel.decode("utf-8", "replace").removeprefix(self.channel + ":")
        if not self.hub.viewers_of(share_id):
            return  # nobody watches it here (so only ids of real shares get further)
        message = self._parse(data)
        if message is None or message["from"] == self.replica:
            return  # invalid, or already delivered here when it happened
        if message["kind"] == "deleted":
            await self.hub.deliver_deleted(share_id)
        elif message["kind"] == "access":
            await self.hub.deliver_access_changed(share_id)
        else:
            await self.hub.deliver_synced(share_id, message["items"], message["syncCount"])

    def _parse(self, data: bytes) -> dict[str, Any] | None:
        """The message if it is one of ours and well-formed; anyone able to publish on the
        channel could send anything, and the viewers must only ever get what a sync would give."""
        try:
            message = orjson.loads(data) if len(data) <= MAX_RELAY_BYTES else None
        except orjson.JSONDecodeError:
            message = None
        if (
            isinstance(message, dict)
            and message.get("v") == RELAY_VERSION
            and isinstance(message.get("from"), str)
            and (message.get("kind") in ("deleted", "access") or _valid_sync(message))
        ):
            return message
        if not self._warned_invalid:  # once: a flood of bad messages must not flood the log
            log.warning("ignored a malformed message on the live channel (another version, or not ours)")
            self._warned_invalid = True
        return None

    async def _catch_up(self) -> None:
        """After the subscription was lost, other replicas' syncs may have been missed: tell the
        viewers of every watched share to resync (or that the share is gone)."""
        if self.service is None:
            return
        for share_id in self.hub.watched_shares():
            try:
                state = await self.service.load(share_id)
            except SessionNotFound:
                await self.hub.deliver_deleted(share_id)
            except Exception as exc:  # noqa: BLE001 - the store away too: their next reconnect catches up
                log.warning("share %s: catch-up after the Redis outage failed (%s)", share_id, _describe(exc))
            else:
                await self.hub.deliver_synced(share_id, None, state.meta.sync_count)


def _valid_sync(message: dict[str, Any]) -> bool:
    count, items = message.get("syncCount"), message.get("items")
    return (
        message.get("kind") == "synced"
        and isinstance(count, int)
        and not isinstance(count, bool)
        and count >= 0
        and (items is None or (isinstance(items, list) and all(isinstance(item, dict) for item in items)))
    )


def _describe(exc: BaseException) -> str:
    # Redis errors name host and port at most, never the password of the URL.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def redis_client(url: str) -> Redis:
    """The relay's client: bounded waits, and no retrying inside the library (the relay's loops
    retry with backoff, and must see a failure to know that events were missed)."""
    try:  # imported here: the package is needed only by deployments that configure Redis
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ConfigError("REDIS_URL is set but the redis package is not installed (pip install 'redis>=5.0.1')") from None
    return Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=10,
        socket_keepalive=True,
        health_check_interval=int(POLL_SECONDS * 3),
        retry=Retry(NoBackoff(), 0),
    )


async def redis_fanout(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: with ``REDIS_URL`` set, relay share events between replicas while the
    application runs (``RedisRelay``); without it, nothing (viewers hear their own replica)."""
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
