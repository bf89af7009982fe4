"""Strict, fast JSON for the whole package: responses, storage and request bodies.

orjson is about 10x faster than the standard library on multi-megabyte shares, and strict: no
NaN, no lone surrogates, no nesting deeper than 1024, so nothing stored can fail to serialise later.
"""

from __future__ import annotations

from typing import Any

import orjson

from cloudsession.errors import MalformedJSON


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
