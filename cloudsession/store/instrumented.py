"""An ``ObjectStore`` that records every call's operation, outcome and latency into ``Metrics``.

Wraps the configured backend at the store boundary, so the share service and the tools see the
same interface and nothing above the store knows it is measured. Outcomes: ``ok``, ``absent``
(a get or head of a missing key), ``precondition_failed`` (a lost conditional write: normal
under concurrency) and ``error`` (a backend failure: the service answers 503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from cloudsession.metrics import Metrics
from cloudsession.store.base import ListPage, ObjectStore, PreconditionFailed, StoredObject

T = TypeVar("T")


class InstrumentedStore:
    def __init__(self, inner: ObjectStore, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        outcome = "error"
        try:
            result = await call
            outcome = "absent" if result is None and op in ("get", "head") else "ok"
            return result
        except PreconditionFailed:
            outcome = "precondition_failed"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.metrics.store_call(op, outcome, time.perf_counter() - start)

    async def get(self, key: str) -> StoredObject | None:
        return await self._timed("get", self.inner.get(key))

    async def head(self, key: str) -> str | None:
        return await self._timed("head", self.inner.head(key))

    async def put(self, key: str, body: bytes) -> str:
        return await self._timed("put", self.inner.put(key, body))

    async def put_if_absent(self, key: str, body: bytes) -> str:
        return await self._timed("put_if_absent", self.inner.put_if_absent(key, body))

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await self._timed("put_if_match", self.inner.put_if_match(key, body, etag))

    async def delete(self, key: str) -> None:
        await self._timed("delete", self.inner.delete(key))

    async def delete_if_match(self, key: str, etag: str) -> None:
        await self._timed("delete_if_match", self.inner.delete_if_match(key, etag))

    async def delete_many(self, keys: list[str]) -> None:
        await self._timed("delete_many", self.inner.delete_many(keys))

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        return await self._timed("list", self.inner.list_page(prefix, start_after=start_after, limit=limit))

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return await self._timed("temp_cleanup", self.inner.remove_stale_temp(older_than_seconds=older_than_seconds, dry_run=dry_run))

    async def close(self) -> None:
        await self.inner.close()
