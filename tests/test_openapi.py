"""The OpenAPI document at /api/doc: a valid OpenAPI 3.1 document that names every /api/ route of
the router, so the document cannot drift from the routing table."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from cloudsession.web.openapi import build_document

# Routes under /api/ that are not operations of the API: the CORS preflight and the JSON 404.
NOT_OPERATIONS = {"api.options", "api.not_found"}


def _canonical(formatter: str) -> str:
    """A router path in the document's form: the /api/shares alias folded into /api/share, and
    regex parameters (``{family:shares?}``) written plainly."""
    path = formatter.replace("{family}", "share")
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


async def test_the_document_is_valid_openapi_3_1(client):
    resp = await client.get("/api/doc")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = await resp.json()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"].startswith("3.1")
    assert doc == build_document()
    # Served from a cache: the same bytes every time.
    assert await (await client.get("/api/doc")).read() == await resp.read()


async def test_every_api_route_of_the_router_is_documented(client):
    doc = build_document()
    routes = set()
    for route in client.app.router.routes():
        name = route.name or ""
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if not path.startswith("/api/") or name in NOT_OPERATIONS or route.method == "HEAD":
            continue
        routes.add((_canonical(path), route.method.lower()))
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes, "no /api/ routes found in the router"
    assert routes == documented
    # Both spellings of every share route reach the same handler.
    aliased = {r.resource.get_info().get("formatter") for r in client.app.router.routes() if r.resource is not None}
    assert "/api/{family}/{id}/sync" in aliased


def test_request_bodies_come_from_the_models_and_name_the_headers():
    doc = build_document()
    schemas = doc["components"]["schemas"]
    assert schemas["CreateShareBody"]["required"] == ["sessionID"]
    assert schemas["SyncBody"]["properties"]["data"]["items"] == {"$ref": "#/components/schemas/SyncItem"}
    assert {s["properties"]["type"]["const"] for s in schemas["SyncItem"]["oneOf"]} == {"session", "message", "part", "session_diff", "model"}
    headers = {p["name"] for ops in doc["paths"].values() for op in ops.values() for p in op.get("parameters", []) if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "x-opencode-share-token", "X-Cloudsession-Labels", "X-Cloudsession-TTL", "If-None-Match"}
    assert doc["components"]["securitySchemes"]["adminKey"]["name"] == "x-opencode-share-key"
    statuses = {code for ops in doc["paths"].values() for op in ops.values() for code in op["responses"]}
    assert statuses == {"200", "304", "400", "401", "403", "404", "408", "409", "410", "413", "415", "429", "503"}
