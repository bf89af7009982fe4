"""``/ws/<id>``: a viewer's live feed of one share (frame formats in ``live/hub.py``).

Unlike the reference, the door checks that the share exists and is readable, that a browser's
``Origin`` is this server, and that the hub has room (per share and per client address); idle
sockets are pinged. Frames leave through ``FrameSocket``: written in pieces as the client reads
them, so a viewer that never reads costs a bounded amount of memory and is dropped after
``viewer_send_timeout_seconds`` (docs/hardening.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from cloudsession.errors import SessionNotFound
from cloudsession.live.hub import FORMAT_EVENTS, FORMAT_REFERENCE, LiveHub, Viewer
from cloudsession.shares.public import current_redactor
from cloudsession.web.http import client_address, forwarded_host, request_read_token
from cloudsession.web.keys import LIVE, SERVICE, SETTINGS

log = logging.getLogger(__name__)

# A frame is written as fragments of at most this many bytes, each once the transport's buffer
# has drained below its high-water mark: what one viewer holds in the transport stays about this
# size, however large the frame and however slow the client.
FRAGMENT_BYTES = 64 * 1024
_OP_TEXT, _OP_CONTINUATION, _FIN = 0x1, 0x0, 0x80


def _frame_header(first_byte: int, length: int) -> bytes:
    # Server frames are never masked (RFC 6455 section 5.1).
    if length < 126:
        return struct.pack("!BB", first_byte, length)
    if length < 65536:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


class FrameSocket:
    """A viewer's WebSocket as the hub sees it (``live.hub.Socket``).

    aiohttp's ``send_str`` would encode a copy of the frame for each viewer and hand all of it
    to the transport, which keeps whatever the client has not read: 100 viewers that never read
    and one 20 MB sync cost gigabytes. Here a message is sent as a text frame and continuation
    frames (RFC 6455 section 5.4) of ``FRAGMENT_BYTES``, sliced from the one encoded frame every
    viewer shares; before each piece the transport must have drained, within ``timeout``.
    aiohttp's own control frames (pings, pongs, the close) may fall between two pieces, which
    the protocol allows. Permessage-deflate is never negotiated on these sockets.
    """

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, timeout: float) -> None:
        self._request, self._ws, self._timeout = request, ws, timeout

    async def send_text(self, payload: bytes) -> None:
        view = memoryview(payload)
        offset, total = 0, len(payload)
        while True:
            piece = view[offset : offset + FRAGMENT_BYTES]
            first = offset == 0
            offset += len(piece)
            last = offset >= total
            async with asyncio.timeout(self._timeout):
                await self._request.writer.drain()
            transport = self._request.transport
            if self._ws.closed or transport is None or transport.is_closing():
                raise ConnectionResetError("viewer went away")
            opcode = _OP_TEXT if first else _OP_CONTINUATION
            transport.write(_frame_header((_FIN if last else 0) | opcode, len(piece)) + piece)
            if last:
                return

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return await self._ws.close(code=code, message=message)

    def abort(self) -> None:
        reset(self._request)


def reset(request: web.Request) -> None:
    """Drop a viewer's connection with a reset: what it did not read is discarded at once, by
    this process and by the kernel (a plain close would leave the kernel trying to deliver it)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()

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
    address = client_address(request)
    if not isinstance(hub, LiveHub) or not hub.has_room(share_id, address):
        return web.Response(status=503, text="Too many viewers", content_type="text/plain", charset="UTF-8")
    settings = request.app[SETTINGS]
    fmt = FORMAT_EVENTS if request.query.get("format") == FORMAT_EVENTS else FORMAT_REFERENCE
    # compress=False: compressing one shared frame once per viewer would multiply the work and
    # give every viewer its own copy; nothing a viewer sends is worth inflating either.
    ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=4096, autoping=True, compress=False)
    frames = FrameSocket(request, ws, settings.viewer_send_timeout_seconds)
    viewer = Viewer(frames, fmt, address=address, max_queued_bytes=settings.limits.viewer_buffer_bytes)
    # Reading the share registered its owner in this request's redaction scope: every frame the
    # hub makes for this share's viewers passes through it. Counted before the handshake's first
    # await, so parallel handshakes cannot all pass the caps.
    redactor = current_redactor()
    hub.add(share_id, viewer, redactor.serialised if redactor else None)
    try:
        await ws.prepare(request)
    except BaseException:
        hub.remove(share_id, viewer)
        raise
    if fmt == FORMAT_EVENTS:
        viewer.offer(hub.frame(share_id, {"type": "hello", "syncCount": metadata.get("syncCount", 0)}), 0)
    pump = asyncio.create_task(viewer.pump())
    # A pump that ends by itself (close sent, or the client dropped for not reading) ends the
    # handler too, whatever the client is (not) sending.
    ending = False
    pump.add_done_callback(lambda _: None if ending or ws.closed else frames.abort())
    try:
        async for message in _incoming(ws):
            del message  # client frames are ignored, as in the reference
    finally:
        ending = True
        hub.remove(share_id, viewer)
        pump.cancel()
        try:
            await pump
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception:  # a send failing on a dying socket is expected, not a server error
            log.debug("share %s: viewer send failed", share_id, exc_info=True)
        if not ws.closed:
            try:
                await ws.close(code=viewer.close_code, message=viewer.close_reason.encode())
            except ConnectionError:
                pass
        transport = request.transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            # Closed, but the client is not reading even the close: do not let the connection
            # linger with its unsent bytes.
            reset(request)
    return ws


async def _incoming(ws: web.WebSocketResponse) -> AsyncIterator[Any]:
    async for message in ws:
        if message.type == WSMsgType.ERROR:
            log.debug("websocket error: %s", ws.exception())
            return
        yield message
