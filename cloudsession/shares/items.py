"""Sync items: validation of a sync's ``data`` array, shared by every door (REST, RPC, ops).

Validation runs before anything is read or written. It is deliberately strict where the
reference was permissive: an item must be an object with a known ``type``; entities must be
objects with string ids; diff and model lists must hold objects. Everything else inside an
entity is kept verbatim, because the real client sends whole objects and ``opencode import``
needs them back unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

from cloudsession.errors import PayloadTooLarge, ValidationFailed

ITEM_TYPES = ("session", "message", "part", "session_diff", "model")
MAX_ID_LENGTH = 256
# How deep an item's data may nest. A request body may nest up to 1024 levels (the parser's
# limit) but orjson writes at most 254, and the stored journal and snapshot documents and the
# public answers put an entity a few levels down: an entity nested deeper than this would be a
# 500 on the write, or an acknowledged write that every later read fails on.
MAX_NESTING = 200
_WRITER_LIMIT = 254  # orjson.dumps raises beyond this many levels


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
    # One native serialisation of the whole array (each item's data sits two levels down in it,
    # so the padding is two levels less) stands for the per-item storability check; only when
    # it fails are the items checked one by one, which finds the same first error as ever.
    checked = _storable(raw, _WRITER_LIMIT - MAX_NESTING - 2)
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
        if not checked:
            _check_storable(data, where)
        items.append({"type": kind, "data": data})
    return items


def _storable(data: Any, padding: int) -> bool:
    padded = data
    for _ in range(padding):
        padded = [padded]
    try:
        orjson.dumps(padded)
    except (orjson.JSONEncodeError, TypeError):
        return False
    return True


def _check_storable(data: Any, where: list[Any]) -> None:
    """Refuse data nested deeper than MAX_NESTING (or otherwise unwritable) before anything is
    written. Serialising it inside enough extra levels finds out at the writer's native speed,
    where walking every node in Python would make a large first sync noticeably slower."""
    padded = data
    for _ in range(_WRITER_LIMIT - MAX_NESTING):
        padded = [padded]
    try:
        # orjson itself, strict: jsonio's writers fall back to the standard library so that data
        # the Worker stored deeper stays readable, but a client's new data is held to the limit.
        orjson.dumps(padded)
    except (orjson.JSONEncodeError, TypeError) as exc:
        reason = f"nested deeper than {MAX_NESTING} levels" if "ecursion" in str(exc) else "cannot be stored as JSON"
        raise _fail(where, reason) from None


def model_key(model: dict[str, Any]) -> tuple[str, str]:
    """Models accumulate per (providerID, id): the client sends [model] per user message."""
    provider = model.get("providerID")
    return (provider if isinstance(provider, str) else "", model["id"])


