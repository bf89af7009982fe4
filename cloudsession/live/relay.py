"""The relay: share events carried between processes, so a viewer connected to one process hears
about syncs accepted by any (docs/views.md).

One implementation of the relay logic (``Relay``: the message format, the bounded outbox, events
remembered while the other side is away and announced as resyncs, retries with backoff) over two
transports:

- ``RedisTransport``: Redis pub/sub, between replicas on any machines (``REDIS_URL``);
- ``SiblingTransport``: Unix datagram sockets between the worker processes of one
  ``cloudsession serve --workers N`` (no Redis needed on one machine).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from cloudsession.config import ConfigError, Settings
from cloudsession.errors import SessionNotFound
from cloudsession.jsonio import json_bytes
from cloudsession.live.hub import LiveHub

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from cloudsession.shares.service import ShareService

log = logging.getLogger(__name__)

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


class Transport(Protocol):
    """How relay messages travel: ``send`` one message about a share to every other process,
    ``listen`` for theirs. Both raise when the transport fails; the relay retries with backoff."""

    # Starts log lines ("Redis subscription lost ..."): "Redis", "Sibling relay".
    name: str
    # The largest message it carries; a sync whose items do not fit goes out without them.
    max_bytes: int

    async def send(self, share_id: str, data: bytes) -> None: ...

    def listen(self, ready: Callable[[], None]) -> AsyncIterator[tuple[str, bytes]]:
        """(share id, message) as they arrive; calls ``ready`` once it hears everything."""
        ...

    async def close(self) -> None: ...


class Relay:
    """Carries this process's share events to the other processes, and theirs to its viewers.

    A message is ``{"v": 1, "from": <replica>, "kind": "synced", "syncCount": n, "items":
    [...] | null}``, ``{"v": 1, "from": <replica>, "kind": "deleted"}`` or ``{..., "kind":
    "access"}`` (viewers must re-authenticate): the public items the
    local viewers got (never the secret or the real session id). ``from`` is a random id per
    process: a process has already told its own viewers and skips its own messages, so each
    viewer gets each event exactly once.

    The transport never stands in the way of a sync: ``publish`` only queues (bounded), a
    background task sends. While the transport fails, events for the others are remembered per
    share and announced as resyncs when it works again; after listening was interrupted, this
    process's viewers are told to resync (they may have missed others' syncs). Both loops retry
    with backoff.
    """

    def __init__(self, hub: LiveHub, transport: Transport, service: ShareService | None = None) -> None:
        self.hub = hub
        self.transport = transport
        self.service = service  # reads sync counts for the catch-up after an outage
        self.replica = secrets.token_hex(8)
        self.subscribed = asyncio.Event()
        self._outbox: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._outbox_bytes = 0
        self._missed: dict[str, int | None] = {}
        # Access changes missed while the transport was away: re-sent as such, never folded into a resync.
        self._missed_access: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned_invalid = False
        # Counters for /metrics (state()).
        self.published = 0
        self.publish_failures = 0
        self.received = 0

    def state(self) -> dict[str, Any]:
        """What /metrics shows of the relay: subscription up, queued bytes, counters."""
        return {
            "subscribed": self.subscribed.is_set(),
            "outbox_bytes": self._outbox_bytes,
            "missed_shares": len(self._missed) + len(self._missed_access),
            "published": self.published,
            "publish_failures": self.publish_failures,
            "received": self.received,
        }

    # -- lifecycle

    async def start(self, wait_seconds: float = 5.0) -> None:
        """Start both loops; wait (briefly) for the subscription so that a process reporting
        healthy already hears the others. The transport being away is no reason not to start."""
        self._spawn(self._publish_loop())
        self._spawn(self._subscribe_loop())
        try:
            await asyncio.wait_for(self.subscribed.wait(), wait_seconds)
        except TimeoutError:
            log.warning("%s not reachable at startup; live updates from the others start when it is", self.transport.name)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.transport.close()

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
        return data if len(data) <= self.transport.max_bytes else json_bytes({**body, "items": None})

    def publish(self, share_id: str, sync_count: int | None, items: list[dict[str, Any]] | None = None, *, kind: str = "synced") -> None:
        """Queue an event (``sync_count`` None: deleted; ``kind="access"``: an access change)
        for the other processes. Never waits."""
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
                    await self.transport.send(share_id, self._message(None, None, "access"))
                    self._missed_access.discard(share_id)
                while self._missed:
                    share_id, sync_count = next(iter(self._missed.items()))
                    await self.transport.send(share_id, self._message(sync_count, None))
                    del self._missed[share_id]
                outgoing = await self._outbox.get()
                self._outbox_bytes -= len(outgoing.data)
                await self.transport.send(outgoing.share_id, outgoing.data)
                self.published += 1
            except Exception as exc:
                self.publish_failures += 1
                if outgoing is not None:
                    self._miss(outgoing)
                while not self._outbox.empty():
                    queued = self._outbox.get_nowait()
                    self._outbox_bytes -= len(queued.data)
                    self._miss(queued)
                if not failing:
                    log.warning("%s publish failed (%s); the others' viewers will resync when it is back", self.transport.name, _describe(exc))
                failing = True
                await asyncio.sleep(next(delays))
                continue
            if failing:
                log.warning("%s publish works again", self.transport.name)
                delays, failing = _backoff(), False

    # -- incoming

    async def _subscribe_loop(self) -> None:
        delays, failing = _backoff(), False

        def ready() -> None:
            nonlocal delays, failing
            if failing:
                log.warning("%s subscription restored; telling this process's viewers to resync", self.transport.name)
                self._spawn(self._catch_up())
                delays, failing = _backoff(), False
            self.subscribed.set()

        while True:
            try:
                async for share_id, data in self.transport.listen(ready):
                    await self.deliver(share_id, data)
            except Exception as exc:
                self.subscribed.clear()
                if not failing:
                    log.warning("%s subscription lost (%s); this process's viewers hear only its own syncs until it is back", self.transport.name, _describe(exc))
                failing = True
            await asyncio.sleep(next(delays))

    async def deliver(self, share_id: str, data: bytes) -> None:
        """Deliver one relayed message to this process's viewers, unless it is this process's own."""
        if not self.hub.viewers_of(share_id):
            return  # nobody watches it here (so only ids of real shares get further)
        message = self._parse(data)
        if message is None or message["from"] == self.replica:
            return  # invalid, or already delivered here when it happened
        self.received += 1
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
        """After listening was interrupted, others' syncs may have been missed: tell the viewers
        of every watched share to resync (or that the share is gone)."""
        if self.service is None:
            return
        for share_id in self.hub.watched_shares():
            try:
                state = await self.service.load(share_id)
            except SessionNotFound:
                await self.hub.deliver_deleted(share_id)
            except Exception as exc:
                log.warning("share %s: catch-up after the relay outage failed (%s)", share_id, _describe(exc))
            else:
                await self.hub.deliver_synced(share_id, None, state.meta.sync_count)


# -- Redis: between replicas ---------------------------------------------------------------------


class RedisTransport:
    """Redis pub/sub: a channel per share (``<prefix>:<share id>``) under one pattern subscription
    per replica (``<prefix>:*``), taken once at startup.

    Subscribing per share as viewers come and go would spare replicas the events of shares nobody
    watches there, but costs a round trip per viewer and leaves a gap in which a new viewer's
    events are lost; with one pattern a viewer costs Redis nothing. The price, every replica
    receiving every event, stays small: the share id is read from the channel name, so events of
    unwatched shares are dropped unparsed, and messages are bounded (``MAX_RELAY_BYTES``).
    Replicas are few."""

    name = "Redis"
    max_bytes = MAX_RELAY_BYTES

    def __init__(self, client: Redis, channel: str) -> None:
        self.client = client
        self.channel = channel

    async def send(self, share_id: str, data: bytes) -> None:
        await self.client.publish(f"{self.channel}:{share_id}", data)

    def share_id(self, channel: bytes) -> str:
        return channel.decode("utf-8", "replace").removeprefix(self.channel + ":")

    async def listen(self, ready: Callable[[], None]) -> AsyncIterator[tuple[str, bytes]]:
        pubsub = self.client.pubsub()
        try:
            await pubsub.psubscribe(f"{self.channel}:*")
            ready()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
                if message is not None and message.get("type") == "pmessage":
                    yield self.share_id(message["channel"]), message["data"]
        finally:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception:
                pass

    async def close(self) -> None:
        await self.client.aclose()


class RedisRelay(Relay):
    """The relay between replicas, through Redis (``REDIS_URL``)."""

    def __init__(self, hub: LiveHub, client: Redis, channel: str, service: ShareService | None = None) -> None:
        self.redis = RedisTransport(client, channel)
        super().__init__(hub, self.redis, service)

    @property
    def client(self) -> Redis:
        return self.redis.client

    @property
    def channel(self) -> str:
        return self.redis.channel

    async def receive(self, channel: bytes, data: bytes) -> None:
        """Deliver a message as received on a Redis channel."""
        await self.deliver(self.redis.share_id(channel), data)


# -- sibling workers: between the processes of one `serve --workers N` ----------------------------

# The send buffer asked for each worker's inbox; the kernel caps it at net.core.wmem_max.
SIBLING_BUFFER_BYTES = 4 * 1024 * 1024


@dataclass
class Siblings:
    """This worker's place among the ``count`` workers of one ``serve --workers N``: its number
    (1..count), the datagram socket it reads (its inbox) and the sockets that write into the
    other workers' inboxes. Made by the supervising parent before it starts the workers
    (``inboxes``), inherited by each; only inherited descriptors reach them, nothing on disk."""

    index: int
    count: int
    inbox: socket.socket | None = None
    peers: list[socket.socket] = field(default_factory=list)


def inboxes(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """One (read end, write end) datagram socket pair per worker: worker i reads the read end of
    pair i and writes into the write ends of the others. Datagrams keep each message whole
    whichever worker wrote it; the parent keeps every pair open, so a restarted worker finds its
    inbox where the others write."""
    pairs = []
    for _ in range(count):
        read, write = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        write.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SIBLING_BUFFER_BYTES)
        for sock in (read, write):
            sock.setblocking(False)
        pairs.append((read, write))
    return pairs


class SiblingTransport:
    """The sibling workers' inboxes: a message is ``<share id>\n<relay message>`` in one datagram
    to each other worker. A send never waits: a worker whose inbox is full (stopped reading, or
    restarting) makes the send fail, and the relay's usual path takes over (the share remembered
    as missed, a resync announced once sends work again)."""

    name = "Sibling relay"

    def __init__(self, siblings: Siblings) -> None:
        if siblings.inbox is None:
            raise ValueError("a sibling transport needs the worker's inbox")
        self.inbox = siblings.inbox
        self.peers = siblings.peers
        # The kernel reports twice the buffer it granted; a datagram must fit in what it granted.
        granted = min((peer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 for peer in self.peers), default=MAX_RELAY_BYTES)
        self.max_bytes = min(MAX_RELAY_BYTES, granted // 2)

    async def send(self, share_id: str, data: bytes) -> None:
        datagram = share_id.encode() + b"\n" + data
        failed: OSError | None = None
        for peer in self.peers:
            # Every peer is tried: one whose inbox is full (a worker restarting) must not keep
            # the event from the others. The failure is raised after, so the relay remembers the
            # share as missed and announces a resync to all once sends work again.
            try:
                peer.send(datagram)  # non-blocking: BlockingIOError when that inbox is full
            except OSError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    async def listen(self, ready: Callable[[], None]) -> AsyncIterator[tuple[str, bytes]]:
        loop = asyncio.get_running_loop()
        ready()
        while True:
            datagram = await loop.sock_recv(self.inbox, self.max_bytes + 1024)
            share_id, _, data = datagram.partition(b"\n")
            yield share_id.decode("utf-8", "replace"), data

    async def close(self) -> None:
        pass  # the descriptors belong to the process (and the parent keeps them for restarts)


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
