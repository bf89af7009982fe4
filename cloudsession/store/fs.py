"""The embedded default store: objects as files on the local disk.

Each key is a file under ``<root>/objects/`` (``/`` in a key is a directory; files carry an
``.obj`` suffix so that ``a`` and ``a/b`` can coexist, as they can on S3). Writes go to a
temporary file that is renamed into place, so a reader never sees half an object. Conditional
operations hold an exclusive ``flock`` on ``<root>/store.lock`` while they check and rename,
which makes them atomic across coroutines, threads and processes sharing the directory; the lock
is held only for the check and the rename, never while a body is written.

The ETag is derived from the file's inode, modification time and size: every write renames a
fresh inode into place, so a rewrite with identical content still gets a new ETag (no ABA).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cloudsession.store.base import ListPage, PreconditionFailed, StoredObject, StoreError

_SUFFIX = ".obj"
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class FilesystemStore:
    """``ObjectStore`` on a directory. Blocking file work runs in the default thread pool."""

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        self.root = Path(root)
        self.prefix = prefix
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / "store.lock"
        self._lock_path.touch(exist_ok=True)

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    # -- key mapping -------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        full = self.prefix + key
        if not _KEY_RE.match(full) or any(seg in (".", "..") for seg in full.split("/")):
            raise StoreError(f"invalid object key {key!r}")
        return self._objects / (full + _SUFFIX)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_temp(self, body: bytes) -> str:
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def _install(self, tmp: str, path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
        return _etag(os.stat(path))

    # -- blocking implementations ---------------------------------------------------------------

    def _get(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                return StoredObject(fh.read(), _etag(st))
        except FileNotFoundError:
            return None

    def _head(self, key: str) -> str | None:
        try:
            return _etag(os.stat(self._path(key)))
        except FileNotFoundError:
            return None

    def _put(self, key: str, body: bytes, condition: str | None, etag: str | None) -> str:
        path = self._path(key)
        tmp = self._write_temp(body)
        try:
            if condition is None:
                return self._install(tmp, path)
            with self._locked():
                current = self._head(key)
                if condition == "absent" and current is not None:
                    raise PreconditionFailed(key)
                if condition == "match" and current != etag:
                    raise PreconditionFailed(key)
                return self._install(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _delete(self, key: str, etag: str | None) -> None:
        path = self._path(key)
        if etag is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        with self._locked():
            if self._head(key) != etag:
                raise PreconditionFailed(key)
            os.unlink(path)

    def _list(self, prefix: str, start_after: str | None, limit: int) -> ListPage:
        full_prefix = self.prefix + prefix
        base_rel = full_prefix.rsplit("/", 1)[0] if "/" in full_prefix else ""
        base = self._objects / base_rel if base_rel else self._objects
        found: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self._objects)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in files:
                if not name.endswith(_SUFFIX):
                    continue
                full = rel_dir + name[: -len(_SUFFIX)]
                if full.startswith(full_prefix):
                    found.append(full[len(self.prefix):])
        found.sort()
        if start_after is not None:
            found = [k for k in found if k > start_after]
        page = found[:limit]
        more = len(found) > limit
        return ListPage(page, page[-1] if more and page else None)

    # -- async interface ------------------------------------------------------------------------

    async def get(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._get, key)

    async def head(self, key: str) -> str | None:
        return await asyncio.to_thread(self._head, key)

    async def put(self, key: str, body: bytes) -> str:
        return await asyncio.to_thread(self._put, key, body, None, None)

    async def put_if_absent(self, key: str, body: bytes) -> str:
        return await asyncio.to_thread(self._put, key, body, "absent", None)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        return await asyncio.to_thread(self._put, key, body, "match", etag)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key, None)

    async def delete_if_match(self, key: str, etag: str) -> None:
        await asyncio.to_thread(self._delete, key, etag)

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        return await asyncio.to_thread(self._list, prefix, start_after, limit)

    async def close(self) -> None:
        return None
