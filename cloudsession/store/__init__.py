"""Object stores: the interface (``base``), the embedded filesystem default (``fs``) and S3 (``s3``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from cloudsession.store.base import ListPage, ObjectStore, PreconditionFailed, StoredObject, StoreError, iter_keys
from cloudsession.store.fs import FilesystemStore

if TYPE_CHECKING:
    from cloudsession.config import Settings

__all__ = ["ListPage", "ObjectStore", "PreconditionFailed", "StoredObject", "StoreError", "iter_keys", "FilesystemStore", "open_store"]


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[ObjectStore]:
    """The configured store, opened for the lifetime of the context (one client per process)."""
    cfg = settings.store
    if cfg.backend == "fs":
        store: ObjectStore = FilesystemStore(settings.store_path, prefix=cfg.prefix)
    else:
        from cloudsession.store.s3 import S3Store

        store = await S3Store.open(
            bucket=cfg.bucket or "", prefix=cfg.prefix, endpoint_url=cfg.endpoint, region=cfg.region, timeout=settings.store_timeout_seconds
        )
    try:
        yield store
    finally:
        await store.close()
