"""The one routing table. Every route is named; doors own their handlers, not their paths.

JSON API under ``/api/``, the Cap'n Web endpoint at ``/rpc/share``, HTML at human URLs and
operational endpoints (``/healthz``, ``/readyz``) apart. Anything unmatched under ``/api/`` is a
JSON 404 (with CORS); anything else is the reference's plain-text 404, rendered by the error
middleware in ``app.py``.
"""

from __future__ import annotations

from aiohttp import web

from cloudsession import api, durable_api, live, ops, views
from cloudsession.pages import STATIC_DIR
from cloudsession.rpc import share_rpc

SHARE = r"/api/{family:shares?}/{id}"


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/sessions")


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", root, name="root")
    r.add_get("/healthz", ops.healthz, name="healthz")
    r.add_get("/readyz", ops.readyz, name="readyz")

    # REST share API; /api/shares/... are exact aliases (the client's console-mode paths).
    # create, sync and delete go through durable_api for Idempotency-Key and create options.
    r.add_post(r"/api/{family:shares?}", durable_api.create_share, name="api.create")
    r.add_post(SHARE + "/sync", durable_api.sync_share, name="api.sync")
    r.add_get(SHARE + "/data", api.get_share_data, name="api.data")
    r.add_get(SHARE + "/metadata", api.get_share_metadata, name="api.metadata")
    r.add_get(SHARE, api.get_share, name="api.get")
    r.add_delete(SHARE, durable_api.delete_share, name="api.delete")
    durable_api.add_routes(r, SHARE)  # the durable sync protocol; see docs/protocol.md
    r.add_get("/api/sessions", api.list_sessions, name="api.sessions")
    r.add_route("OPTIONS", "/api/{tail:.*}", api.api_options, name="api.options")
    r.add_route("*", "/api/{tail:.*}", api.api_not_found, name="api.not_found")

    # HTML views (views.py) and live updates (live.py); see docs/views.md.
    r.add_get("/sessions", views.sessions_page, name="views.sessions")
    r.add_post("/sessions/login", views.login, name="views.login")
    r.add_post("/sessions/logout", views.logout, name="views.logout")
    r.add_get("/share/{id}", views.share_page, name="views.share")
    r.add_get("/share/{id}/fragments", views.share_fragments, name="views.fragments")
    r.add_get("/ws/{id}", live.share_socket, name="live.socket")
    r.add_static("/static", STATIC_DIR, name="static")

    # Cap'n Web RPC (docs/rpc.md): POST is an HTTP batch, GET with Upgrade a WebSocket session,
    # any other method the reference's 400; auth is checked first, inside the handler.
    r.add_route("*", "/rpc/share", share_rpc.handle, name="rpc.share")
