"""The OpenAPI 3.1 document of the REST API, served at ``GET /api/doc``.

Request bodies come from the pydantic models the handlers validate against
(``shares/inputs.py``), so the document cannot describe a body the server does not accept; the
sync item schema is written by hand to match ``shares/items.py``. ``tests/test_openapi.py``
validates the document and checks that every ``/api/`` route of the router is in it, and
``tests/test_schemathesis.py`` fuzzes a real server against it.

``/api/shares/...`` are exact aliases of every ``/api/share/...`` route; the document names the
``/api/share/...`` form only and says so in its description.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from cloudsession.jsonio import json_bytes
from cloudsession.protocol import ADMIN_HEADER, IDEMPOTENCY_HEADER, LABELS_HEADER, READ_TOKEN_HEADER, TTL_HEADER
from cloudsession.shares.inputs import _BATCH_ID_RE, AppendOpsBody, CreateShareBody, ExpiryBody, PrivacyBody, SecretBody, SyncBody
from cloudsession.shares.items import MAX_ID_LENGTH
from cloudsession.shares.lifecycle import LABEL_KEY_RE, MAX_LABEL_VALUE, MAX_LABELS, MAX_TTL_SECONDS

DOC_PATH = "/api/doc"
_REF = "#/components/schemas/{model}"
_UUID7 = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"

_DESCRIPTIONS = {
    200: "Success",
    304: "Not modified: the If-None-Match header names this version's ETag (no body)",
    400: "Invalid request: malformed JSON, a body that fails validation, or a bad header",
    401: "Missing or wrong admin key",
    403: "Invalid secret (or a capability epoch that is no longer current)",
    404: "Unknown share (also a private share read without its read token)",
    408: "The request body did not arrive in time",
    409: "The share is final (frozen), or this Idempotency-Key was already used for a different request",
    410: "The share has expired",
    413: "Request body or item count beyond the configured limits",
    415: "Unsupported Content-Encoding on the request body",
    429: "Too many requests from this address",
    503: "Storage unavailable; retry after the Retry-After header's seconds",
}
# Every request that reaches the store can meet a full store or a rate limit.
_ALWAYS = (429, 503)
_READ = (200, 400, 404, 410, *_ALWAYS)
_BODY = (400, 408, 413, 415)
_OWNER = (200, *_BODY, 403, 404, 409, 410, *_ALWAYS)


def _model_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON Schema, its nested models hoisted into ``components``; a $ref to it."""
    schema = model.model_json_schema(ref_template=_REF)
    for name, nested in schema.pop("$defs", {}).items():
        components[name] = nested
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _entity(kind: str, *required: str) -> dict[str, Any]:
    ident = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    return {
        "type": "object",
        "required": ["type", "data"],
        "properties": {
            "type": {"const": kind},
            "data": {
                "type": "object",
                "required": list(required),
                "properties": {name: ident for name in required},
                "additionalProperties": True,
                "description": f"The whole {kind} object as opencode sends it; kept verbatim.",
            },
        },
    }


def _sync_item_schema() -> dict[str, Any]:
    """One sync item, as ``shares/items.py`` validates it."""
    model = {
        "type": "object",
        "required": ["id"],
        "properties": {"id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}, "providerID": {"type": "string"}},
    }
    return {
        "description": "session replaced; message and part upserted by id; session_diff replaced; model accumulated per (providerID, id).",
        "oneOf": [
            _entity("session", "id"),
            _entity("message", "id"),
            _entity("part", "id", "messageID"),
            {
                "type": "object",
                "required": ["type", "data"],
                "properties": {"type": {"const": "session_diff"}, "data": {"type": "array", "items": {"type": "object"}}},
            },
            {
                "type": "object",
                "required": ["type", "data"],
                "properties": {"type": {"const": "model"}, "data": {"type": "array", "items": model}},
            },
        ],
    }


def _object(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **optional}}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_OPT_INT = {"type": ["integer", "null"]}


def _response_schemas() -> dict[str, Any]:
    ack = _object({"op_id": _STR, "cursor": _INT})
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "oneOf": [
                        {"type": "string"},
                        _object({"name": _STR, "message": _STR}, issues={"type": "array"}),
                    ]
                },
                "success": {"const": False},
            },
        },
        "Created": _object({"id": _STR, "secret": _STR, "url": _STR}, readToken=_STR, expiresAt=_INT),
        "Synced": _object({"success": {"const": True}, "syncCount": _INT}),
        "Deleted": _object({"success": {"const": True}}),
        "ShareData": {"type": "array", "items": _object({"type": _STR, "data": {}})},
        "ShareObject": {"type": "object", "description": "The reference's share object; never the secret or the real session ID."},
        "Metadata": {"type": "object", "description": "The share's index entry."},
        "Sessions": _object(
            {"sessions": {"type": "array", "items": {"type": "object"}}, "count": _INT},
            next=_STR,
            skipped=_INT,
            building=_BOOL,
        ),
        "OpsAnswer": _object(
            {
                "cursor": _INT,
                "applied": {"type": "array", "items": ack},
                "duplicates": {"type": "array", "items": ack},
                "rejected": {"type": "array", "items": _object({"op_id": _STR, "reason": _STR})},
            }
        ),
        "Redeemed": _object(
            {"id": _STR, "url": _STR, "cursor": _INT, "capabilityEpoch": _INT, "private": _BOOL, "expiresAt": _OPT_INT, "metadata": {"type": "object"}}
        ),
        "Rotated": _object({"id": _STR, "secret": _STR, "url": _STR, "capabilityEpoch": _INT, "readToken": _STR}),
        "ReadToken": _object({"readToken": _STR, "capabilityEpoch": _INT}),
        "Final": _object({"id": _STR, "final": _BOOL, "finalizedAt": _OPT_INT}),
        "AuditTrail": _object({"id": _STR, "events": {"type": "array", "items": {"type": "object"}}}),
        "Privacy": _object({"private": _BOOL, "readToken": _STR, "capabilityEpoch": _INT}),
        "Expiry": _object({"expiresAt": _OPT_INT}),
    }


def _responses(statuses: tuple[int, ...], ok: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in sorted(set(statuses)):
        schema = ok if status == 200 else "Error"
        entry: dict[str, Any] = {"description": _DESCRIPTIONS[status]}
        if status != 304:
            entry["content"] = {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
        out[str(status)] = entry
    return out


_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The share id (at most 64 of A-Z a-z 0-9 _ -; anything else is an unknown share)",
    "schema": {"type": "string"},
}
_IDEMPOTENCY = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "A retried request with the same key returns the first answer without applying it twice",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
}
_CREATE_HEADERS = [
    {
        "name": LABELS_HEADER,
        "in": "header",
        "required": False,
        "description": "Labels of a new share as k=v,k2=v2 (docs/lifecycle.md)",
        "schema": {"type": "string"},
    },
    {"name": TTL_HEADER, "in": "header", "required": False, "description": "Retention of a new share (docs/lifecycle.md)", "schema": {"type": "string"}},
]
_READ_TOKEN = [
    {
        "name": READ_TOKEN_HEADER,
        "in": "header",
        "required": False,
        "description": "A private share's read token",
        "schema": {"type": "string"},
    },
    {"name": "token", "in": "query", "required": False, "description": "The read token, as a browser link carries it", "schema": {"type": "string"}},
]
# The share object and the flat array carry a version ETag (docs/reads.md).
_VERSIONED = [
    {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "ETags the client holds: 304 without a body when one names the share's current version",
        "schema": {"type": "string"},
    },
]


_LIST_PARAMS = [
    {"name": "limit", "in": "query", "required": False, "description": "Page size, 1-1000 (default 1000)", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "cursor", "in": "query", "required": False, "description": "The previous page's `next`", "schema": {"type": "string", "maxLength": 200}},
    {"name": "q", "in": "query", "required": False, "description": "Search in titles, directories, ids and labels", "schema": {"type": "string"}},
    {"name": "label", "in": "query", "required": False, "description": "k=v: only shares carrying this label (repeatable)", "schema": {"type": "string"}},
]


def _operation(
    op_id: str, summary: str, statuses: tuple[int, ...], ok: str, *, body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": _responses(statuses, ok)}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict every call; the route serves a cached copy)."""
    components: dict[str, Any] = {"SyncItem": _sync_item_schema(), **_response_schemas()}
    create = _model_schema(CreateShareBody, components)
    sync = _model_schema(SyncBody, components)
    secret = _model_schema(SecretBody, components)
    ops = _model_schema(AppendOpsBody, components)
    privacy = _model_schema(PrivacyBody, components)
    expiry = _model_schema(ExpiryBody, components)
    # ``data: list[Any]`` and ``item: Any`` are checked by shares/items.py, not pydantic.
    components["SyncBody"]["properties"]["data"]["items"] = {"$ref": _REF.format(model="SyncItem")}
    envelope = components["OpEnvelope"]["properties"]
    envelope["item"] = {"$ref": _REF.format(model="SyncItem")}
    # The field validators' rules (inputs.py), which pydantic cannot put in the schema itself.
    envelope["op_id"]["pattern"] = _UUID7
    envelope["op_id"]["description"] = "A UUIDv7 in canonical form (any case)"
    envelope["batch_id"]["pattern"] = _BATCH_ID_RE.pattern
    components["SyncBody"]["properties"]["data"]["description"] = "At most MAX_ITEMS_PER_SYNC items (413 beyond)"
    components["CreateShareBody"]["properties"]["labels"] = {
        "description": "Labels of a new share (shares/lifecycle.py parse_labels)",
        "anyOf": [
            {
                "type": "object",
                "maxProperties": MAX_LABELS,
                "propertyNames": {"pattern": LABEL_KEY_RE.pattern},
                "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE, "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
            },
            {"type": "null"},
        ],
    }
    for name in ("CreateShareBody", "ExpiryBody", "ShareOptionsBody"):
        if name in components:  # owner.resolve_expiry's rules
            ttl = components[name]["properties"]["ttl"]
            ttl["anyOf"][0].update(minimum=1, maximum=MAX_TTL_SECONDS)
            ttl["description"] = "Seconds until the share expires"
            components[name]["properties"]["expiresAt"]["description"] = "Epoch milliseconds, in the future and at most 10 years ahead; not with ttl"

    share = "/api/share/{id}"
    id_only = [_ID_PARAM]
    paths: dict[str, Any] = {
        "/api/share": {
            "post": _operation(
                "createShare",
                "Create a share, or return the existing one for this sessionID",
                (200, *_BODY, 409, *_ALWAYS),
                "Created",
                body=create,
                params=[_IDEMPOTENCY, *_CREATE_HEADERS],
            )
        },
        share + "/sync": {"post": _operation("syncShare", "Merge sync items into a share", _OWNER, "Synced", body=sync, params=[_ID_PARAM, _IDEMPOTENCY])},
        share + "/data": {"get": _operation("getShareData", "The flat array opencode import reads", (*_READ, 304), "ShareData", params=id_only + _READ_TOKEN + _VERSIONED)},
        share + "/metadata": {"get": _operation("getShareMetadata", "The share's index entry", _READ, "Metadata", params=id_only + _READ_TOKEN)},
        share: {
            "get": _operation("getShare", "The share object (no secret, no real session ID)", (*_READ, 304), "ShareObject", params=id_only + _READ_TOKEN + _VERSIONED),
            "delete": _operation("deleteShare", "Delete a share", _OWNER, "Deleted", body=secret, params=[_ID_PARAM, _IDEMPOTENCY]),
        },
        share + "/ops": {"post": _operation("appendOps", "Append operation envelopes, applied exactly once", _OWNER, "OpsAnswer", body=ops, params=id_only)},
        share + "/redeem": {"post": _operation("redeem", "Where the server is, for a reconnecting client", _OWNER, "Redeemed", body=secret, params=id_only)},
        share + "/rotate": {"post": _operation("rotate", "Revoke the secret and return a new one", _OWNER, "Rotated", body=secret, params=id_only)},
        share + "/read-token": {"post": _operation("readToken", "A private share's read token", _OWNER, "ReadToken", body=secret, params=id_only)},
        share + "/privacy": {"post": _operation("privacy", "Make a share private or public", _OWNER, "Privacy", body=privacy, params=id_only)},
        share + "/expiry": {"post": _operation("expiry", "Set or clear a share's expiry", _OWNER, "Expiry", body=expiry, params=id_only)},
        share + "/finalize": {"post": _operation("finalize", "Freeze the share: later writes answer 409", _OWNER, "Final", body=secret, params=id_only)},
        share + "/unfinalize": {
            "post": {
                **_operation("unfinalize", "Unfreeze the share: its secret in the body, or the admin key", (*_OWNER, 401), "Final", body=secret, params=id_only),
                "security": [{}, {"adminKey": []}],
            }
        },
        share + "/audit": {
            "post": _operation("auditTrail", "The share's audit trail, for its owner", _OWNER, "AuditTrail", body=secret, params=id_only),
            "get": {
                **_operation("adminAuditTrail", "The share's audit trail, for the admin", (200, 401, 404, *_ALWAYS), "AuditTrail", params=id_only),
                "security": [{"adminKey": []}],
            },
        },
        "/api/sessions": {
            "get": {
                **_operation("listSessions", "Admin list of the shares, newest first, a page at a time", (200, 400, 401, *_ALWAYS), "Sessions", params=_LIST_PARAMS),
                "security": [{"adminKey": []}],
            }
        },
        DOC_PATH: {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cloudsession REST API",
            "version": "1",
            "description": (
                "The share API opencode talks to (docs/protocol.md for the durable routes). Every /api/share/... "
                "route is also served at /api/shares/... (the client's console-mode paths). Responses carry "
                "Access-Control-Allow-Origin: *; errors are JSON."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"adminKey": {"type": "apiKey", "in": "header", "name": ADMIN_HEADER, "description": "SESSIONS_RPC_SHARED_KEY"}},
        },
    }


def document_route() -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``GET /api/doc`` handler; the document is built once, on its first request."""
    cache: list[bytes] = []

    async def openapi_document(request: web.Request) -> web.Response:
        if not cache:
            cache.append(json_bytes(build_document()))
        return web.Response(body=cache[0], content_type="application/json", headers={"Cache-Control": "public, max-age=300"})

    return openapi_document
