"""Middlewares: domain errors turned into responses at the boundary, CORS on ``/api/``, and
gzip negotiated for every response worth compressing.

Errors are JSON under ``/api/`` and ``/rpc/`` (with CORS, as the reference) and the HTML error
page (``error.html``) elsewhere; anything unexpected is a bare 500 without a traceback (the
traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from cloudsession.errors import PayloadTooLarge, ShareError
from cloudsession.jsonio import json_bytes
from cloudsession.web.http import compress_response, html_response
from cloudsession.web.keys import RENDERER, SETTINGS

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


def _error_headers(error: ShareError) -> dict[str, str] | None:
    # An error may carry response headers (StoreUnavailable: Retry-After); both the JSON and the
    # HTML answer pass them on.
    headers = getattr(error, "headers", None)
    return {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) and headers else None


async def _error_response(request: web.Request, error: ShareError) -> web.Response:
    headers = _error_headers(error)
    if _wants_json(request):
        return web.Response(body=json_bytes(error.body()), status=error.status, content_type="application/json", headers=headers)
    return await error_page(request, error.status, error.message, headers)


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
    """The outermost layer: gzip what is worth it when the client accepts it (error pages too)."""
    response = await handler(request)
    compress_response(request, response)
    return response
