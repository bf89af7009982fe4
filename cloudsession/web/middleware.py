"""Middlewares: owner keys redacted from every response, domain errors turned into responses at
the boundary, CORS on ``/api/``, the cheap checks every request body passes before any of it
is read (``body_guard_middleware``), and brotli or gzip negotiated for every answer worth compressing.

Errors are JSON under ``/api/`` and ``/rpc/`` (with CORS, as the reference) and the HTML error
page (``error.html``) elsewhere; anything unexpected is a bare 500 without a traceback (the
traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from cloudsession.errors import BodyTooLarge, PayloadTooLarge, RequestTimeout, ShareError, UnsupportedEncoding
from cloudsession.jsonio import json_bytes
from cloudsession.shares.public import redaction_scope
from cloudsession.web.http import compress_response, html_response
from cloudsession.web.keys import COMPRESSED, RENDERER, SETTINGS

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _wants_json(request: web.Request) -> bool:
    return _is_api(request) or request.path.startswith("/rpc/")


async def error_page(request: web.Request, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The HTML error page a browser gets (``/share/...``, ``/sessions``, anything not an API).
    ``headers`` (an error's own, such as ``Retry-After`` on a 503) go out with it."""
    title = HTTPStatus(status).phrase
    retry_after = (headers or {}).get("Retry-After", "")
    text = await request.app[RENDERER].run(
        lambda pages: pages.template("error.html").render(status=status, title=title, message=message, retry_after=retry_after)
    )
    return html_response(text, status=status, headers=headers)


async def _error_response(request: web.Request, error: ShareError) -> web.Response:
    if _wants_json(request):
        response = web.Response(body=json_bytes(error.body()), status=error.status, content_type="application/json", headers=error.headers())
    else:
        # The error's own headers (Retry-After on a 503 or a 429) go out with the page, which
        # also says when to retry.
        response = await error_page(request, error.status, error.message, error.headers() or None)
    if error.close_connection:
        # The body was not (all) read: no keep-alive; the rest is discarded (aiohttp lingers for
        # at most 10 s so that a client still sending sees this answer), then the connection closes.
        response.force_close()
    if isinstance(error, RequestTimeout):
        # A client this slow would hold the connection for aiohttp's lingering time while the
        # rest of its body is read and discarded: answer, then close at once.
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
    return response


@web.middleware
async def redaction_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request runs in a redaction scope: each share it reads registers its owner's real
    session ID there, and the response body leaves with those IDs replaced by the public ones
    (``shares/public.py``). Live frames are redacted by the hub with the same scope's redactor
    (``web/live.py``); streamed files (static assets) hold no share data."""
    with redaction_scope() as redactor:
        response = await handler(request)
        if redactor and isinstance(response, web.Response) and isinstance(response.body, bytes | bytearray):
            body = bytes(response.body)
            redacted = redactor.serialised_bytes(body)
            if redacted is not body:
                response.body = redacted
        return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ShareError as error:
        return await _error_response(request, error)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].limits.max_body_bytes
        return await _error_response(request, PayloadTooLarge(f"Request body exceeds {limit} bytes"))
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):  # the reference answers 404 to both
        if _is_api(request):
            return web.Response(body=b'{"error":"Not Found"}', status=404, content_type="application/json")
        return web.Response(text="404 Not Found", status=404, content_type="text/plain", charset="UTF-8")
    except web.HTTPException:
        raise
    except ConnectionError as exc:
        # The client went away while we answered: nothing to answer, nothing to trace.
        log.info("%s %s: client disconnected (%s)", request.method, request.path, type(exc).__name__)
        response = web.Response(text="Client disconnected", status=400, content_type="text/plain", charset="UTF-8")
        response.force_close()
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.Response(text="Internal Server Error", status=500, content_type="text/plain", charset="UTF-8")


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Access-Control-Allow-Origin: *`` on every /api/ response, errors included (COMPAT)."""
    if not _is_api(request):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["Access-Control-Allow-Origin"] = "*"
        raise
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@web.middleware
async def compress_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost layer: brotli or gzip for what is worth it, as the client prefers (error
    pages too); hot responses (with an ETag) are compressed once per version."""
    response = await handler(request)
    await compress_response(request, response, request.app.get(COMPRESSED))
    return response


@web.middleware
async def body_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Checks that cost nothing, before any handler reads a byte of the body.

    - a body with a ``Content-Encoding`` is refused with 415: compressed bodies are never
      inflated (the server runs with aiohttp's ``auto_decompress`` off, see ``app.py``), since
      60 KB of gzip can stand for 60 MB of work and memory (docs/hardening.md);
    - a ``Content-Length`` above ``max_body_bytes`` is refused with 413 before the body is read
      (``/rpc/share`` does the same itself, after checking its key).

    Both answers end the connection: what may still be on its way is read and discarded for at
    most aiohttp's lingering time (10 s, so that a client still sending sees the answer rather
    than a reset), never kept, never inflated.
    """
    if request.body_exists:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedEncoding()
        limit = request.app[SETTINGS].limits.max_body_bytes
        # /rpc/ checks the length itself, after its auth, with its own wording (rpc/transport.py).
        too_long = request.content_length is not None and request.content_length > limit
        if too_long and not request.path.startswith("/rpc/"):
            raise BodyTooLarge(f"Request body exceeds {limit} bytes")
    return await handler(request)
