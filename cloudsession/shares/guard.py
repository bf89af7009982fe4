"""The one door to the store: a deadline on every call, and every failure a 503.

:class:`ShareService` wraps the store it is given in a :class:`GuardedStore`, so every store
access of the share domain (loads, commits, the index, listings through ``iter_keys``, the sweep,
maintenance, idempotency records) goes through here without having to remember to: no call can
wait longer than ``store_timeout_seconds``, and a backend failure, a timeout or an OS error never
leaves as anything but :class:`~cloudsession.errors.StoreUnavailable` (503 with ``Retry-After``).
``PreconditionFailed`` passes through untouched: it is an answer, not a failure.

A timed-out write may still land (S3 may have applied it; the filesystem store's worker thread
cannot be interrupted). The share's journal makes that harmless: the entry is folded by the next
read like any other, and a client retrying with op ids or an ``Idempotency-Key`` is answered from
the ledger instead of being applied twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from cloudsession.errors import StoreUnavailable
from cloudsession.store.base import ListPage, ObjectStore, PreconditionFailed, StoredObject, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


class GuardedStore:
    """``ObjectStore`` around another: each call under ``timeout`` seconds, failures mapped to
    ``StoreUnavailable``."""

    def __init__(self, inner: ObjectStore, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"GuardedStore({self.inner!r}, timeout={self.timeout})"

    async def _call(self, action: str, key: str, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except PreconditionFailed:
            raise
        except TimeoutError as exc:
            log.error("store %s of %r: no answer within %gs", action, key, self.timeout)
            raise StoreUnavailable() from exc
        except (StoreError, OSError) as exc:
            # StoreError messages name the operation and key, never credentials (store/s3.py).
            log.error("store %s of %r failed: %s", action, key, exc)
            raise StoreUnavailable() from exc

    async def get(self, key: str) -> StoredObject | None:
        return await self._call("get", key, self.inner.get(key))

    async def head(self, key: str) -> str | None:
        return await self._call("head", key, self.inner.head(key))

    async def put(self, key: str, body: bytes) -> str:
        return await self._call("put", key, self.inner.put(key, body))

    async def put_if_absent(self, key: str, body: bytes) -> str:
        return await self._call("put_if_absent", key, self.inner.put_if_absent(key, body))

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await self._call("put_if_match", key, self.inner.put_if_match(key, body, etag))

    async def delete(self, key: str) -> None:
        await self._call("delete", key, self.inner.delete(key))

    async def delete_if_match(self, key: str, etag: str) -> None:
        await self._call("delete_if_match", key, self.inner.delete_if_match(key, etag))

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        return await self._call("list", prefix, self.inner.list_page(prefix, start_after=start_after, limit=limit))

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return await self._call("temp cleanup", "", self.inner.remove_stale_temp(older_than_seconds=older_than_seconds, dry_run=dry_run))

    async def close(self) -> None:
        await self.inner.close()
