"""The object-store interface every backend implements.

The share service needs only a handful of operations on opaque byte blobs under string keys:
read with the ETag, unconditional write, create-if-absent, compare-and-swap on the ETag, delete,
and ordered listing by prefix with pagination. Conditional writes are what make concurrent
writers (several coroutines, processes or replicas) safe; every backend must give them the same
meaning, which ``tests/test_store_conformance.py`` checks against each backend.

Keys are ``/``-separated, non-empty segments of any Unicode text except control characters
and lone surrogates, and never ``.`` or ``..`` (at most 1,024 UTF-8 bytes with the prefix, S3's
limit): every key the reference Worker could write for a share id that is a segment at all. S3
stores them as they are; the filesystem store percent-escapes what a file name cannot hold.
Backends may apply a prefix. ETags are opaque strings (without surrounding quotes).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cloudsession.errors import StoreError as StoreError  # re-exported: the store raises it
from cloudsession.jsonio import parse_stored

_BAD_KEY_CHAR_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
MAX_KEY_BYTES = 1024
# The most keys one ``delete_many`` takes: S3's DeleteObjects limit.
MAX_DELETE_BATCH = 1000
# Leftovers of an interrupted write (a killed process's temporary file) older than this are
# removed when a store opens and by ``fsck --repair``; younger ones may be a write in progress.
STALE_TEMP_SECONDS = 600.0


class PreconditionFailed(StoreError):
    """A conditional write or delete lost: the key exists (put_if_absent) or its ETag moved on
    (put_if_match / delete_if_match), or the key is absent for an ETag-conditional operation."""


def check_delete_batch(keys: list[str]) -> bool:
    """Whether a ``delete_many`` has anything to do; ``ValueError`` over ``MAX_DELETE_BATCH``."""
    if len(keys) > MAX_DELETE_BATCH:
        raise ValueError(f"delete_many takes at most {MAX_DELETE_BATCH} keys, got {len(keys)}")
    return bool(keys)


@dataclass(frozen=True, slots=True)
class StoredObject:
    body: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class ListPage:
    keys: list[str]
    # Pass as ``start_after`` to get the next page; None when this was the last page.
    next_start_after: str | None


@runtime_checkable
class ObjectStore(Protocol):
    """Async object storage. All methods raise ``StoreError`` on backend failures."""

    async def get(self, key: str) -> StoredObject | None:
        """The object, or None when the key does not exist."""

    async def head(self, key: str) -> str | None:
        """The object's ETag, or None when the key does not exist. Cheap: no body is moved."""

    async def put(self, key: str, body: bytes) -> str:
        """Write unconditionally; returns the new ETag."""

    async def put_if_absent(self, key: str, body: bytes) -> str:
        """Create the key; raise ``PreconditionFailed`` if it already exists."""

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        """Replace the key only if its current ETag is ``etag``; otherwise (or when the key is
        absent) raise ``PreconditionFailed``."""

    async def delete(self, key: str) -> None:
        """Delete the key; deleting an absent key is not an error."""

    async def delete_if_match(self, key: str, etag: str) -> None:
        """Delete only if the ETag matches; raise ``PreconditionFailed`` otherwise or if absent."""

    async def delete_many(self, keys: list[str]) -> None:
        """Delete up to ``MAX_DELETE_BATCH`` keys in one call (absent ones are not an error): S3
        takes them in one request. Not atomic: after a failure some may be gone."""

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        """Up to ``limit`` keys under ``prefix``, in ascending byte order, strictly after
        ``start_after`` when given."""

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        """Remove what interrupted writes left behind (a killed process's temporary files) that
        is older than ``older_than_seconds``; returns how many (with ``dry_run``, would be).
        Stores whose writes leave nothing behind (S3: single-request PUTs) return 0."""

    async def close(self) -> None:
        """Release connections and other resources."""


def full_key(prefix: str, key: str) -> str:
    """``prefix + key``, refused (StoreError) unless made of non-empty ``/``-separated segments,
    none of them ``.`` or ``..``, without control characters or lone surrogates: ids from URLs
    can never reach outside their key space."""
    full = prefix + key
    if (
        not key
        or _BAD_KEY_CHAR_RE.search(full)
        or any(seg in ("", ".", "..") for seg in full.split("/"))
        or len(full.encode("utf-8")) > MAX_KEY_BYTES
    ):
        raise StoreError(f"invalid object key {key!r}")
    return full


def is_valid_key(key: str) -> bool:
    """Whether a store accepts ``key`` (before its prefix)."""
    try:
        full_key("", key)
    except StoreError:
        return False
    return True


async def read_json_object(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The object at ``key`` parsed as a JSON object; None when absent, not JSON or not an object
    (derived keys such as index entries are allowed to be damaged; callers rebuild them)."""
    obj = await store.get(key)
    if obj is None:
        return None
    try:
        doc = parse_stored(obj.body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


async def iter_keys(store: ObjectStore, prefix: str, *, start_after: str | None = None, page_size: int = 1000) -> AsyncIterator[str]:
    """Every key under ``prefix`` (after ``start_after``), following pagination to the end."""
    cursor = start_after
    while True:
        page = await store.list_page(prefix, start_after=cursor, limit=page_size)
        for key in page.keys:
            yield key
        if page.next_start_after is None:
            return
        cursor = page.next_start_after
