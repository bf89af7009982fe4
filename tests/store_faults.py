"""Object stores that misbehave on cue, for tests: wrappers around a real store (filesystem or S3
on moto) that hold a write after it landed, or stop answering."""

from __future__ import annotations

import asyncio

from cloudsession.store.base import ListPage, ObjectStore, StoredObject


class WrappedStore:
    """Every call passed to ``inner``; subclasses override the ones they disturb."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    async def get(self, key: str) -> StoredObject | None:
        return await self.inner.get(key)

    async def head(self, key: str) -> str | None:
        return await self.inner.head(key)

    async def put(self, key: str, body: bytes) -> str:
        return await self.inner.put(key, body)

    async def put_if_absent(self, key: str, body: bytes) -> str:
        return await self.inner.put_if_absent(key, body)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await self.inner.put_if_match(key, body, etag)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def delete_if_match(self, key: str, etag: str) -> None:
        await self.inner.delete_if_match(key, etag)

    async def delete_many(self, keys: list[str]) -> None:
        await self.inner.delete_many(keys)

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        return await self.inner.list_page(prefix, start_after=start_after, limit=limit)

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return await self.inner.remove_stale_temp(older_than_seconds=older_than_seconds, dry_run=dry_run)

    async def close(self) -> None:
        await self.inner.close()


class HeldWriteStore(WrappedStore):
    """Holds the next journal write after it reached the store and before its answer returns,
    as a slow network does: ``landed`` is set once the entry is stored, and the write answers
    only when ``release`` is set. Arm it with ``hold_next()``."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.armed = False
        self.landed = asyncio.Event()
        self.release = asyncio.Event()

    def hold_next(self) -> None:
        self.armed = True
        self.landed.clear()
        self.release.clear()

    async def put_if_absent(self, key: str, body: bytes) -> str:
        etag = await self.inner.put_if_absent(key, body)
        if self.armed and key.startswith("journal/"):
            self.armed = False
            self.landed.set()
            await self.release.wait()
        return etag


class SilentStore(WrappedStore):
    """Accepts every call and never answers while ``silent`` (a black-holed store)."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.silent = False

    async def _maybe_hang(self) -> None:
        if self.silent:
            await asyncio.Event().wait()

    async def get(self, key: str) -> StoredObject | None:
        await self._maybe_hang()
        return await super().get(key)

    async def head(self, key: str) -> str | None:
        await self._maybe_hang()
        return await super().head(key)

    async def put(self, key: str, body: bytes) -> str:
        await self._maybe_hang()
        return await super().put(key, body)

    async def put_if_absent(self, key: str, body: bytes) -> str:
        await self._maybe_hang()
        return await super().put_if_absent(key, body)

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        await self._maybe_hang()
        return await super().list_page(prefix, start_after=start_after, limit=limit)
