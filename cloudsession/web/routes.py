"""The one routing table. Every route is named; doors own their handlers, not their paths.

JSON API under ``/api/``, the Cap'n Web endpoint at ``/rpc/share``, HTML at human URLs and
operational endpoints (``/healthz``, ``/readyz``) apart. Anything unmatched under ``/api/`` is a
JSON 404 (with CORS); anything else is the reference's plain-text 404, rendered by the error
middleware in ``middleware.py``.
"""

from __future__ import annotations

from aiohttp import web

from cloudsession.web import api, live, observability, openapi, pages, probes, rpc

SHARE = r"/api/{family:shares?}/{id}"


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/sessions")


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", root, name="root")
    r.add_get("/healthz", probes.healthz, name="healthz")
    r.add_get("/readyz", probes.readyz, name="readyz")
    r.add_get("/metrics", observability.metrics_endpoint, name="metrics")  # docs/operations.md

    # REST share API (web/api.py); /api/shares/... are exact aliases (the client's console-mode
    # paths). The reference's routes first, then the durable protocol's (docs/protocol.md).
    r.add_post(r"/api/{family:shares?}", api.create_share, name="api.create")
    r.add_post(SHARE + "/sync", api.sync_share, name="api.sync")
    r.add_get(SHARE + "/data", api.get_share_data, name="api.data")
    r.add_get(SHARE + "/metadata", api.get_share_metadata, name="api.metadata")
    r.add_get(SHARE, api.get_share, name="api.get")
    r.add_delete(SHARE, api.delete_share, name="api.delete")
    r.add_post(SHARE + "/ops", api.append_ops, name="durable.ops")
    r.add_post(SHARE + "/redeem", api.redeem, name="durable.redeem")
    r.add_post(SHARE + "/rotate", api.rotate, name="durable.rotate")
    r.add_post(SHARE + "/read-token", api.read_token, name="durable.read_token")
    r.add_post(SHARE + "/privacy", api.privacy, name="durable.privacy")
    r.add_post(SHARE + "/expiry", api.expiry, name="durable.expiry")
    r.add_post(SHARE + "/finalize", api.finalize, name="lifecycle.finalize")
    r.add_post(SHARE + "/unfinalize", api.unfinalize, name="lifecycle.unfinalize")
    r.add_post(SHARE + "/audit", api.audit_trail, name="lifecycle.audit")
    r.add_get(SHARE + "/audit", api.audit_trail, name="lifecycle.audit_admin")
    r.add_get("/api/sessions", api.list_sessions, name="api.sessions")
    r.add_get(openapi.DOC_PATH, openapi.document_route(), name="api.doc")  # web/openapi.py
    r.add_route("OPTIONS", "/api/{tail:.*}", api.api_options, name="api.options")
    r.add_route("*", "/api/{tail:.*}", api.api_not_found, name="api.not_found")

    # HTML pages (web/pages.py) and live updates (web/live.py); see docs/views.md.
    r.add_get("/sessions", pages.sessions_page, name="views.sessions")
    r.add_get("/sessions/login", pages.login_link, name="views.login_link")
    r.add_post("/sessions/login", pages.login, name="views.login")
    r.add_post("/sessions/logout", pages.logout, name="views.logout")
    r.add_get("/share/{id}", pages.share_page, name="views.share")
    r.add_get("/share/{id}/fragments", pages.share_fragments, name="views.fragments")
    r.add_get("/share/{id}/search", pages.share_search, name="views.search")
    r.add_get("/share/{id}/nav", pages.share_nav, name="views.nav")
    r.add_get("/share/{id}/card.png", pages.share_card, name="views.card")
    r.add_get("/share/{id}/locate", pages.share_locate, name="views.locate")
    r.add_get("/share/{id}/export.json", pages.share_export_json, name="views.export_json")
    r.add_get("/share/{id}/export.html", pages.share_export_html, name="views.export_html")
    r.add_get("/ws/{id}", live.share_socket, name="live.socket")
    r.add_get("/static/{name}", pages.static_file, name="static")

    # Cap'n Web RPC (docs/rpc.md): POST is an HTTP batch, GET with Upgrade a WebSocket session,
    # any other method the reference's 400; auth is checked first, inside the handler.
    r.add_route("*", "/rpc/share", rpc.handle, name="rpc.share")
