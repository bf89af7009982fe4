"""aiohttp transports for Cap'n Web: HTTP batch (POST) and WebSocket (GET + Upgrade) on one URL.

``serve_rpc(request, main_factory, limits)`` dispatches one request the way capnweb's Workers
entry point does, with one fresh session (and one fresh main object) per request or connection:

* ``POST``: the body is newline-separated messages; the answer is 200 with every message the
  session sent, once every pulled id is answered. Protocol errors are a 4xx JSON
  ``{"error": ...}`` (413 for size and count limits), never a hang or a 500.
* ``GET`` with ``Upgrade: websocket``: one text frame per message, calls run concurrently,
  answers are written by a single writer so frames stay whole and ordered.
* anything else: 400 with the reference's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from .codec import BodyTimeout, LimitExceeded, ProtocolError, RpcLimits, UnsupportedEncoding, dumps
from .session import PeerAborted, RpcSession

log = logging.getLogger(__name__)

WRONG_METHOD_TEXT = "This endpoint only accepts POST or WebSocket requests."
# The reference answers batches with this header so browser pages elsewhere can read them.
BATCH_HEADERS = {"Access-Control-Allow-Origin": "*"}
_READ_CHUNK = 256 * 1024
# How long a closing connection may take to flush what is already queued.
_FLUSH_TIMEOUT = 5.0

MainFactory = Callable[[], Any]


async def serve_rpc(request: web.Request, main_factory: MainFactory, limits: RpcLimits) -> web.StreamResponse:
    """Answer one request on an RPC endpoint (batch, WebSocket, or the wrong-method 400)."""
    if request.method == "POST":
        return await handle_batch(request, main_factory(), limits)
    if request.method == "GET" and web.WebSocketResponse().can_prepare(request).ok:
        return await handle_websocket(request, main_factory(), limits)
    return web.Response(status=400, text=WRONG_METHOD_TEXT)


# --- HTTP batch -----------------------------------------------------------------------------------


async def handle_batch(request: web.Request, main: Any, limits: RpcLimits) -> web.Response:
    try:
        lines = await _read_batch(request, limits)
    except TimeoutError:
        # A client this slow would hold the connection while aiohttp reads and discards the rest
        # of its body after the answer: answer, then close at once.
        response = _protocol_error_response(BodyTimeout("RPC batch body not received in time"), close=True)
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response
    except (web.RequestPayloadError, ConnectionError) as exc:
        # The client went away in the middle of its batch: nobody is left to answer.
        log.debug("RPC batch body aborted: %s", exc)
        return _protocol_error_response(ProtocolError("RPC batch body incomplete"), close=True)
    except ProtocolError as error:
        return _protocol_error_response(error)
    sent: list[str] = []
    session = RpcSession(main, lambda message: sent.append(dumps(message)), limits=limits, batch=True)
    try:
        for line in lines:
            session.receive(line)
    except ProtocolError as error:
        # Calls already started keep running (as in the reference); the peer gets a clear status.
        session.close(error.message)
        return _protocol_error_response(error)
    session.end_of_input()
    await session.drain()
    session.close("Batch RPC request ended.")
    return web.Response(text="\n".join(sent), content_type="text/plain", headers=BATCH_HEADERS)


async def _read_batch(request: web.Request, limits: RpcLimits) -> list[str]:
    """The body's messages. An empty body is no message; one trailing newline is tolerated."""
    max_bytes = limits.max_batch_bytes
    too_large = LimitExceeded(f"RPC batch exceeds the maximum size of {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        # Never inflated: a small compressed body could expand to many times the limit's cost
        # in work (docs/hardening.md). The web layer refuses these before the handler runs too.
        raise UnsupportedEncoding("compressed RPC batches are not accepted; send the body without Content-Encoding")
    # Read the stream ourselves so this limit, not the app-wide client_max_size, applies.
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    started, grace, rate = loop.time(), limits.max_batch_seconds, limits.min_batch_bytes_per_second
    while True:
        # The deadline moves with the bytes received (see RpcLimits.max_batch_seconds).
        deadline = None if grace is None else started + grace + size / rate
        async with asyncio.timeout_at(deadline):
            chunk = await request.content.read(_READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    try:
        body = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("RPC batch is not valid UTF-8") from None
    if body.endswith("\n"):
        body = body[:-1]
    if not body:
        return []
    lines = body.split("\n")
    if any(not line.strip() for line in lines):
        raise ProtocolError("empty line in RPC batch")
    return lines


def _protocol_error_response(error: ProtocolError, *, close: bool = False) -> web.Response:
    response = web.json_response({"error": error.message}, status=error.status)
    if close or isinstance(error, (LimitExceeded, UnsupportedEncoding)):
        # The rest of the body may still be on its way: close instead of reading it.
        response.force_close()
    return response



# --- WebSocket ------------------------------------------------------------------------------------


async def handle_websocket(request: web.Request, main: Any, limits: RpcLimits) -> web.WebSocketResponse:
    # aiohttp closes with 1009 (message too big) by itself when a frame exceeds max_msg_size.
    # compress=False: permessage-deflate is not negotiated, so a small compressed frame can never
    # inflate to max_msg_size (a frame with RSV1 set is a protocol error); see docs/hardening.md.
    ws = web.WebSocketResponse(max_msg_size=limits.max_message_bytes, heartbeat=30.0, compress=False)
    await ws.prepare(request)
    outbox: asyncio.Queue[str | None] = asyncio.Queue()
    session = RpcSession(main, lambda message: outbox.put_nowait(dumps(message)), limits=limits, batch=False)
    writer = asyncio.create_task(_write_frames(ws, outbox))
    close_code, close_reason = WSCloseCode.OK, ""
    try:
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                # The client always sends text; anything else would break its JSON parsing too.
                if frame.type is WSMsgType.BINARY:
                    raise ProtocolError("binary WebSocket frames are not supported; send text frames")
                break
            session.receive(frame.data)
    except PeerAborted as error:
        session.close(error.message)
    except ProtocolError as error:
        session.abort(error)  # queues ["abort", ...] for the peer, then stops sending
        close_code, close_reason = WSCloseCode.PROTOCOL_ERROR, error.message
    except Exception:
        # A bug of ours: the upgraded response cannot become an error page, so end the session.
        log.exception("RPC WebSocket session failed")
        session.abort(ProtocolError("Internal error"))
        close_code, close_reason = WSCloseCode.INTERNAL_ERROR, "Internal error"
    finally:
        session.close("WebSocket closed")
        outbox.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(writer, _FLUSH_TIMEOUT)
        if not ws.closed:
            await ws.close(code=close_code, message=_close_reason(close_reason))
    return ws


async def _write_frames(ws: web.WebSocketResponse, outbox: asyncio.Queue[str | None]) -> None:
    """The single writer: frames leave in the order the session produced them."""
    while (text := await outbox.get()) is not None:
        if ws.closed:
            continue  # drain the queue; the peer is gone
        try:
            await ws.send_str(text)
        except ConnectionError:
            log.debug("RPC WebSocket peer went away while we were sending")


def _close_reason(reason: str) -> bytes:
    # A close frame's reason is limited to 123 bytes; cut on a character boundary.
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
