"""Request models, sync-item validation and the public view of a share.

Validation runs before anything is read or written, and is shared by every door (REST, RPC,
the ops protocol). It is deliberately strict where the reference was permissive: an item must be
an object with a known ``type``; entities must be objects with string ids; diff and model lists
must hold objects. Everything else inside an entity is kept verbatim, because the real client
sends whole objects and ``opencode import`` needs them back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

from cloudsession.errors import MalformedJSON, PayloadTooLarge, ValidationFailed

ITEM_TYPES = ("session", "message", "part", "session_diff", "model")
MAX_ID_LENGTH = 256


class _Body(BaseModel):
    # Unknown keys are ignored, as the reference's zod schemas strip them.
    model_config = ConfigDict(extra="ignore")


class ShareOptionsBody(_Body):
    """Options of the durable protocol (durable.py), applied only when the share is new: a
    private share, and an expiry as ``ttl`` seconds or ``expiresAt`` epoch milliseconds."""

    private: StrictBool = False
    ttl: StrictInt | None = None
    expiresAt: StrictInt | None = None


class CreateShareBody(ShareOptionsBody):
    sessionID: StrictStr


class SyncBody(_Body):
    secret: StrictStr
    data: list[Any]


class SecretBody(_Body):
    secret: StrictStr


def parse_body(model: type[_Body], raw: Any) -> Any:
    """Validate a JSON body against ``model``; a ValidationFailed that names the bad fields."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        issues = [
            {"path": list(err["loc"]), "message": err["msg"], "code": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{'.'.join(map(str, i['path'])) or 'body'}: {i['message']}" for i in issues)
        raise ValidationFailed(f"Invalid request body: {summary}", issues) from None


def _fail(path: list[Any], message: str) -> ValidationFailed:
    where = ".".join(str(p) for p in path)
    return ValidationFailed(f"Invalid sync item at {where}: {message}", [{"path": path, "message": message}])


def _require_id(obj: Any, path: list[Any], key: str = "id") -> None:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(path + [key], f"'{key}' must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise _fail(path + [key], f"'{key}' is longer than {MAX_ID_LENGTH} characters")


def parse_sync_items(raw: Any, *, max_items: int, path: tuple[Any, ...] = ("data",)) -> list[dict[str, Any]]:
    """Validate a sync ``data`` array and return it with unknown item keys stripped.

    Raises ValidationFailed (400) for anything malformed and PayloadTooLarge (413) for too many
    items. The returned dicts are new ``{"type", "data"}`` objects; entity objects are shared with
    the input, not copied.
    """
    base = list(path)
    if not isinstance(raw, list):
        raise _fail(base, "must be an array of {type, data} items")
    if len(raw) > max_items:
        raise PayloadTooLarge(f"Too many items in one sync: {len(raw)} (limit {max_items})")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = base + [index]
        if not isinstance(item, dict):
            raise _fail(where, "must be an object")
        kind = item.get("type")
        if kind not in ITEM_TYPES:
            raise _fail(where + ["type"], f"unknown item type {kind!r}; expected one of {', '.join(ITEM_TYPES)}")
        if "data" not in item:
            raise _fail(where, "missing 'data'")
        data = item["data"]
        where = where + ["data"]
        if kind in ("session", "message", "part"):
            if not isinstance(data, dict):
                raise _fail(where, f"a {kind} must be an object")
            _require_id(data, where)
            if kind == "part":
                _require_id(data, where, "messageID")
        else:
            if not isinstance(data, list):
                raise _fail(where, f"{kind} data must be an array")
            for n, element in enumerate(data):
                if not isinstance(element, dict):
                    raise _fail(where + [n], "must be an object")
                if kind == "model":
                    _require_id(element, where + [n])
        items.append({"type": kind, "data": data})
    return items


def model_key(model: dict[str, Any]) -> tuple[str, str]:
    """Models accumulate per (providerID, id): the client sends [model] per user message."""
    provider = model.get("providerID")
    return (provider if isinstance(provider, str) else "", model["id"])


@dataclass(slots=True)
class PublicShare:
    """A share as anyone with the link may see it: public ids, no secret, no real session ID.

    ``messages`` and ``parts`` are in stored (first-seen) order. The entity dicts are shared with
    the service's cache and must be treated as read-only.
    """

    id: str
    session: dict[str, Any]
    messages: list[dict[str, Any]]
    parts: list[dict[str, Any]]
    diffs: list[dict[str, Any]]
    models: list[dict[str, Any]]
    created_at: int
    last_updated: int
    sync_count: int
    private: bool = False
    expires_at: int | None = None
    # (real, public) pairs replaced in serialised output as a last line of defence.
    _redactions: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def data_items(self) -> list[dict[str, Any]]:
        """The flat array ``opencode import`` reads: session, messages and parts in id order,
        then the diff list and the model list."""
        items: list[dict[str, Any]] = [{"type": "session", "data": self.session}]
        items += [{"type": "message", "data": m} for m in sorted(self.messages, key=lambda m: m["id"])]
        items += [{"type": "part", "data": p} for p in sorted(self.parts, key=lambda p: p["id"])]
        items.append({"type": "session_diff", "data": self.diffs})
        items.append({"type": "model", "data": self.models})
        return items

    def agent_session(self) -> dict[str, Any]:
        """The reference's ``AgentSession`` object shape, without the secret."""
        return {
            "session": self.session,
            "messages": self.messages,
            "parts": self.parts,
            "diffs": self.diffs,
            "models": self.models,
            "metadata": {"createdAt": self.created_at, "lastUpdated": self.last_updated, "syncCount": self.sync_count},
        }

    def redact(self, text: str) -> str:
        """Replace any remaining occurrence of the real session ID in serialised output."""
        for real, public in self._redactions:
            text = text.replace(real, public)
        return text


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON for responses and storage (orjson: about 10x faster than json on
    multi-megabyte shares, and strict: no NaN, no lone surrogates)."""
    return orjson.dumps(value)


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON strictly; raises MalformedJSON. Rejects NaN/Infinity, lone surrogates and
    nesting deeper than 1024, so nothing stored can fail to serialise later."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJSON() from None
