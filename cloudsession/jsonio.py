"""JSON for the whole package: strict for what clients send, lenient for what is stored.

orjson is about 10x faster than the standard library on multi-megabyte shares and stays on the
hot path everywhere. It is strict: no NaN, no lone surrogates, no nesting deeper than 1024 when
parsing (254 when writing). Request bodies keep that strictness (``parse_json``), so nothing a
client sends today can fail to serialise later.

Stored objects are another matter: a bucket written by the reference Worker holds whatever V8's
``JSON.stringify`` wrote, and V8 strings may hold lone surrogates (text cut inside an emoji is
stored as ``"\\ud83d"``, valid JSON syntax). Such data must be read and kept without loss:

- ``parse_stored`` reads a stored object with orjson and, only when orjson refuses it, with the
  standard library (which accepts lone surrogate escapes and deeper nesting, but still no NaN);
- ``stored_bytes`` writes a stored object with orjson and, only when orjson refuses it, with the
  standard library, escaping lone surrogates back to ``\\udXXX`` as V8 does: the data stays as
  it was in storage;
- ``json_bytes`` (and ``scrub_text`` for HTML and other text) is the output edge: a lone
  surrogate cannot be encoded in UTF-8, so a response carries U+FFFD REPLACEMENT CHARACTER in
  its place (docs/migration.md). Nothing else changes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from cloudsession.errors import MalformedJSON

_SURROGATE_RE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _stdlib_bytes(value: Any) -> bytes:
    # ensure_ascii escapes lone surrogates as \udXXX, exactly as V8's JSON.stringify does.
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def scrub_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (the output edge)."""
    return _SURROGATE_RE.sub(REPLACEMENT, text)


def scrub(value: Any) -> Any:
    """A copy of ``value`` with lone surrogates in every string (and key) replaced by U+FFFD."""
    if isinstance(value, str):
        return scrub_text(value) if _SURROGATE_RE.search(value) else value
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON for responses (orjson). Stored data the Worker wrote may hold lone
    surrogates or nest deeper than orjson writes: then the standard library writes it, with
    U+FFFD in place of each lone surrogate."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        pass
    cleaned = scrub(unfragment(value))
    try:
        return orjson.dumps(cleaned)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(cleaned, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def stored_bytes(value: Any) -> bytes:
    """Compact JSON for the store: orjson, or (for data orjson refuses: lone surrogates, deep
    nesting) the standard library with lone surrogates escaped, so nothing is lost. ``value``
    may hold ``orjson.Fragment`` (JSON already serialised by this function)."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return _stdlib_bytes(unfragment(value))


class Fragments(list):  # type: ignore[type-arg]
    """A JSON array of already-serialised values: ``orjson.Fragment`` items for orjson, and
    their bytes (``raw``) for the standard library's fallback (``unfragment``)."""

    __slots__ = ("raw",)

    def __init__(self, raw: list[bytes]) -> None:
        super().__init__(orjson.Fragment(item) for item in raw)
        self.raw = raw


def unfragment(value: Any) -> Any:
    """``value`` with every ``Fragments`` array parsed back (for the standard library)."""
    if isinstance(value, Fragments):
        return [parse_stored(item) for item in value.raw]
    if isinstance(value, dict):
        return {k: unfragment(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unfragment(v) for v in value]
    return value


def parse_json(raw: bytes | str) -> Any:
    """Parse a request body strictly; raises MalformedJSON. Rejects NaN/Infinity, lone
    surrogates and nesting deeper than 1024, so nothing stored can fail to serialise later."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJSON() from None


def parse_stored(raw: bytes | str) -> Any:
    """Parse a stored object: whatever V8's ``JSON.parse`` accepts (lone surrogate escapes
    included) is read. Raises ``ValueError`` (``orjson.JSONDecodeError`` is one) when it is not
    JSON at all, or nests deeper than the standard library's recursion limit allows."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as strict:
        try:
            return json.loads(raw, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            raise strict from None
