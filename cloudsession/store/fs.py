"""The embedded default store: objects as files on the local disk.

Each key is a file under ``<root>/objects/`` (``/`` in a key is a directory; files carry an
``.obj`` suffix so that ``a`` and ``a/b`` can coexist, as they can on S3). Each segment's UTF-8
bytes outside ``[A-Za-z0-9_.-]`` are percent-escaped (``share/ünï`` is the file
``share/%C3%BCn%C3%AF.obj``), so keys such as the reference Worker's ids with spaces or Unicode
are stored under portable names; plain keys keep their names. Writes go to a
temporary file, fsync'd, that is then renamed into place, so a reader never sees half an object.
Create-if-absent (every journal entry) gives the temporary file its final name with a hard link,
which the kernel refuses atomically when the name exists: no lock, one system call. The other
conditional operations (and create-if-absent on a file system without hard links) hold an
exclusive ``flock`` on ``<root>/store.lock`` while they check and rename, which makes them
atomic across coroutines, threads and processes sharing the directory; the lock is held only
for the check and the rename, never while a body is written. A link cannot race them: it only
ever creates a name that did not exist.

Every write appends a random 16-byte token to the file, and the token is the ETag: a HEAD reads
just those bytes, and a rewrite, even with identical content, always gets a new ETag. (Inode and
mtime are not enough: ext4 reuses inode numbers at once, and coarse timestamps could then make a
stale ETag match again.)

Writes and deletes go to one writer thread per store, which takes every write waiting when it
wakes as one batch (group commit): it writes the batch's temporary files, fsyncs each of them,
then gives each its final name and answers each write on its own. A write is answered only once
its file is fsync'd and in place, as when each write had a thread hop of its own; what a batch
saves is the hops and wakeups (one of each per batch, not per write), and the file system gets
the batch's fsyncs back to back. A write that fails (its file, its condition) fails alone: the
others of its batch are answered as if it were not there. Reads and listings run in the default
thread pool, never behind a batch. ``close()`` answers every write submitted before it.

A process killed mid-write leaves its temporary file in ``<root>/tmp/``. ``remove_stale_temp``
removes those older than ``base.STALE_TEMP_SECONDS``; the server calls it at startup and
``cloudsession admin fsck --repair`` does too. Only old ones: several processes may share the
directory, and a younger file may be another process's write in progress (no write takes that
long: every store call has a deadline of seconds).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from cloudsession.store.base import ListPage, PreconditionFailed, StoredObject, StoreError, check_delete_batch, full_key

_SUFFIX = ".obj"
_TOKEN_BYTES = 16
_TEMP_PREFIX = "w-"
_TEMP_SUFFIX = ".tmp"
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_PLAIN_RE = re.compile(r"[A-Za-z0-9_.\-]*")  # the characters of _PLAIN, at the regex engine's speed
_ESCAPED_NAME_RE = re.compile(r"(?:[A-Za-z0-9_.\-]|%[0-9A-F]{2})+\Z")
# The writer thread ends after this long without work (and starts again with the next write), so
# a store nobody writes to holds no thread.
_WRITER_IDLE_SECONDS = 2.0
# At most this many writes in one batch (a batch is answered only when all of it is in place).
_WRITER_BATCH = 128


def _escape(segment: str) -> str:
    """A key segment as a file name: bytes outside ``[A-Za-z0-9_.-]`` as ``%XX``."""
    if _PLAIN_RE.fullmatch(segment):
        return segment
    return "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in segment.encode("utf-8"))


def _unescape(name: str) -> str | None:
    """The key segment a file name holds; None for a name this store never writes."""
    if "%" not in name:
        return name
    if not _ESCAPED_NAME_RE.match(name):
        return None
    try:
        segment = unquote_to_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return segment if _escape(segment) == name else None


def _tail_token(path: str) -> str | None:
    """The ETag of the object at ``path`` (its trailing token), or None when it is absent."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-_TOKEN_BYTES, os.SEEK_END)
            return fh.read(_TOKEN_BYTES).hex()
    except FileNotFoundError:
        return None
    except OSError as exc:  # shorter than a token: not written by this store
        raise StoreError(f"corrupt object file {os.path.basename(path)}: {exc}") from exc


def _write_all(fd: int, body: bytes, token: bytes) -> None:
    view = memoryview(body + token) if len(body) < 65536 else None
    if view is None:  # a large body is not copied to append the token
        _write_view(fd, memoryview(body))
        _write_view(fd, memoryview(token))
    else:
        _write_view(fd, view)


def _write_view(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


# syncfs(2): every dirty inode of one file system written out in one call (Linux; None elsewhere,
# where directories are fsync'd one by one). ctypes releases the GIL while it runs.
_syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def _syncfs_call(fd: int) -> None:
    assert _syncfs is not None
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _sync_directory(path: str, sync: Callable[[int], None]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sync(fd)
    finally:
        os.close(fd)


class _Job:
    """One write (``body`` set: a put) or delete waiting for the writer thread, and where its
    answer goes."""

    __slots__ = ("loop", "future", "key", "path", "body", "condition", "etag", "fd", "tmp", "new_etag", "result", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, key: str, path: str, body: bytes | None, condition: str | None,
                 etag: str | None) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] | None = loop.create_future() if loop is not None else None
        self.key = key
        self.path = path
        self.body = body
        self.condition = condition
        self.etag = etag
        self.fd = -1
        self.tmp = ""
        self.new_etag = ""
        self.result: Any = None
        self.error: BaseException | None = None


def _settle(jobs: list[_Job]) -> None:
    """On the event loop: answer a batch's jobs (those whose caller gave up are skipped)."""
    for job in jobs:
        future = job.future
        if future is None or future.done():
            continue
        if job.error is not None:
            future.set_exception(job.error)
        else:
            future.set_result(job.result)


class _Writer:
    """The store's writer thread: takes every job waiting when it wakes as one batch (up to
    ``_WRITER_BATCH``), writes the batch's temporary files, fsyncs them, then puts each in place
    (or deletes) in the order submitted, and answers the batch with one call per event loop.
    It ends after ``_WRITER_IDLE_SECONDS`` without work and is started again by the next job."""

    def __init__(self, store: FilesystemStore) -> None:
        self._store = store
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[_Job] = deque()
        self._running = False
        # Batches written and jobs done (for tests): a batch of several is group commit at work.
        self.batches = 0
        self.jobs = 0

    def submit(self, job: _Job) -> None:
        with self._cond:
            self._jobs.append(job)
            if not self._running:
                self._start()
            else:
                self._cond.notify()

    def _start(self) -> None:
        """Start the writer thread (``_cond`` held). Marked running only once started: a thread
        that cannot start leaves the next write to try again (and this one's caller to its
        deadline), never a store that believes a writer exists."""
        threading.Thread(target=self._run, name="cloudsession-store-writer", daemon=True).start()
        self._running = True

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._jobs:
                        self._cond.wait(_WRITER_IDLE_SECONDS)
                        if not self._jobs:
                            self._running = False
                            return
                    take = min(len(self._jobs), _WRITER_BATCH)
                    batch = [self._jobs.popleft() for _ in range(take)]
                try:
                    self._write(batch)
                except BaseException as exc:  # never leave a batch unanswered (each job catches its own)
                    for job in batch:
                        if job.error is None and job.result is None:  # not one already in place
                            job.error = exc
                self.batches += 1
                self.jobs += len(batch)
                self._answer(batch)
        finally:
            with self._cond:
                if self._running:  # ended by an error of its own, not by idling
                    self._running = False
                    if self._jobs:  # jobs still waiting get a new writer
                        self._start()

    def _write(self, batch: list[_Job]) -> None:
        store = self._store
        # 1. Every body to its temporary file (the page cache: no waiting for the disk yet).
        for job in batch:
            if job.body is not None:
                try:
                    job.fd, job.tmp, job.new_etag = store._open_temp(job.body)
                except BaseException as exc:
                    job.error = exc
        # 2. fsync each: the batch's files reach the disk together. Nothing is answered before this.
        for job in batch:
            if job.fd >= 0:
                fd, job.fd = job.fd, -1
                try:
                    store._sync_temp(fd, job.tmp)
                except BaseException as exc:
                    job.error = exc
        # 3. In place (or deleted), in the order the jobs came, each under its own condition.
        for job in batch:
            if job.error is not None:
                continue
            try:
                if job.body is not None:
                    job.result = store._place(job.key, job.path, job.tmp, job.new_etag, job.condition, job.etag)
                elif job.condition != "noop":
                    store._delete(job.key, job.etag, job.path)
            except BaseException as exc:
                job.error = exc
        # 4. The names themselves reach the disk: each directory that gained or lost an entry
        # (and, for a directory made just now, its parents) is fsync'd once for the batch, before
        # anything is answered. Without it a power loss could drop the name of an answered write.
        store._sync_dirs([job for job in batch if job.error is None and job.condition != "noop"])

    @staticmethod
    def _answer(batch: list[_Job]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in batch:
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, jobs)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting for these answers any more


class FilesystemStore:
    """``ObjectStore`` on a directory. Writes and deletes go to the store's writer thread, a
    batch at a time (module docstring); reads and listings run in the default thread pool."""

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        self.root = Path(root)
        self.prefix = prefix
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._tmp_dir = f"{self._tmp}{os.sep}"
        self._root_dir = str(self._objects)  # where every key lives; synced as a whole by syncfs
        self._objects_dir = f"{self._root_dir}{os.sep}"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.root / "store.lock"
        self._lock_path.touch(exist_ok=True)
        self._writer = _Writer(self)
        # Directories made since the writer last synced (written by the writer thread only).
        self._new_dirs: list[str] = []

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    # -- key mapping -------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        # A string, not a Path: this runs for every object access, and pathlib's parsing costs
        # more than the rest of the mapping.
        return f"{self._objects_dir}{'/'.join([_escape(seg) for seg in full_key(self.prefix, key).split('/')])}{_SUFFIX}"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _open_temp(self, body: bytes) -> tuple[int, str, str]:
        """Write body + a fresh token to a new temporary file, not yet fsync'd; returns (open
        descriptor, path, etag). The token names the file too (random, so ``O_EXCL`` never
        collides in practice). It needs to be unique, not secret: ``random`` (seeded from the
        system's entropy, reseeded in a forked child), which unlike ``os.urandom`` does not
        release the GIL for a system call."""
        token = random.randbytes(_TOKEN_BYTES)
        etag = token.hex()
        tmp = f"{self._tmp_dir}{_TEMP_PREFIX}{etag}{_TEMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, body, token)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, tmp, etag

    def _sync_dirs(self, jobs: list[_Job]) -> None:
        """Make the names ``jobs`` created or removed durable (see ``_Writer._write``): fsync each
        directory they changed, or, when a batch changed several, one ``syncfs`` of the store's
        file system, which writes them all out together instead of one after another (the
        batch's files are fsync'd already, so it has little else to write on a data volume).
        A job whose directory could not be synced fails: its write may not survive a power loss."""
        dirs = {os.path.dirname(job.path) for job in jobs}
        for made in self._new_dirs:
            while len(made) > len(self._root_dir):
                made = os.path.dirname(made)
                dirs.add(made)
        self._new_dirs.clear()
        failed: dict[str, OSError] = {}
        if len(dirs) > 1 and _syncfs is not None:
            try:
                _sync_directory(self._root_dir, _syncfs_call)
            except OSError as exc:
                failed = dict.fromkeys(dirs, exc)
        else:
            for directory in dirs:
                try:
                    _sync_directory(directory, os.fsync)
                except FileNotFoundError:
                    pass  # a delete of a key whose directory never existed changed nothing
                except OSError as exc:
                    failed[directory] = exc
        if failed:
            for job in jobs:
                error = failed.get(os.path.dirname(job.path))
                if error is not None:
                    job.error = error

    @staticmethod
    def _sync_temp(fd: int, tmp: str) -> None:
        """fsync and close a file from ``_open_temp``; on failure it is removed."""
        try:
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)

    def _install(self, tmp: str, path: str) -> None:
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            self._make_parent(path)
            os.replace(tmp, path)

    def _make_parent(self, path: str) -> None:
        """Create ``path``'s directory; the writer fsyncs every directory that got a new entry."""
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        self._new_dirs.append(directory)

    def _link(self, tmp: str, path: str, key: str) -> bool:
        """Give the temporary file its final name unless the name exists (a hard link is an
        atomic create-if-absent, across processes too, with no lock). False when this file
        system has no hard links (the caller falls back to the locked check)."""
        try:
            try:
                os.link(tmp, path)
            except FileNotFoundError:
                self._make_parent(path)
                os.link(tmp, path)
        except FileExistsError:
            raise PreconditionFailed(key) from None
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                return False
            raise
        return True

    def _remove_stale_temp(self, older_than: float, *, dry_run: bool) -> int:
        """Remove temporary files older than ``older_than`` seconds; returns how many."""
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue
                if not dry_run:
                    os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue  # renamed into place or removed by another process meanwhile
        return removed

    # -- blocking implementations ---------------------------------------------------------------

    def _get(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        if len(data) < _TOKEN_BYTES:
            raise StoreError(f"corrupt object file for key {key!r}")
        return StoredObject(data[:-_TOKEN_BYTES], data[-_TOKEN_BYTES:].hex())

    def _head(self, key: str) -> str | None:
        return _tail_token(self._path(key))

    def _place(self, key: str, path: str, tmp: str, new_etag: str, condition: str | None, etag: str | None) -> str:
        """Give the fsync'd temporary file ``tmp`` the name ``path`` of ``key`` under
        ``condition`` (None, "absent" or "match" ``etag``); the temporary name is gone after."""
        installed = False
        try:
            if condition is None:
                self._install(tmp, path)
                installed = True
                return new_etag
            if condition == "absent" and self._link(tmp, path, key):
                return new_etag  # the temporary name is removed below
            with self._locked():
                current = self._head(key)
                if condition == "absent" and current is not None:
                    raise PreconditionFailed(key)
                if condition == "match" and current != etag:
                    raise PreconditionFailed(key)
                self._install(tmp, path)
                installed = True
                return new_etag
        finally:
            if not installed:
                os.unlink(tmp)

    def _delete(self, key: str, etag: str | None, path: str | None = None) -> None:
        path = path or self._path(key)
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
        """Up to ``limit`` keys after ``start_after``, walking directories in key order and
        stopping as soon as the page is full: a page costs the directories it passes through,
        not the whole subtree (a directory whose keys all sort before ``start_after`` is never
        read)."""
        full_prefix = self.prefix + prefix
        after = None if start_after is None else self.prefix + start_after
        base_rel, _, partial = full_prefix.rpartition("/")
        base = self._objects / "/".join(_escape(seg) for seg in base_rel.split("/")) if base_rel else self._objects
        found: list[str] = []
        more = False
        for key in self._walk(str(base), f"{base_rel}/" if base_rel else "", after, partial):
            if len(found) == limit:
                more = True
                break
            found.append(key[len(self.prefix):])
        return ListPage(found, found[-1] if more and found else None)

    def _walk(self, directory: str, rel: str, after: str | None, partial: str) -> Iterator[str]:
        """Keys under ``directory`` (whose keys start with ``rel``) in ascending order, after
        ``after``; at the top level only names starting with ``partial``. Within a directory a
        file ``f`` is the key ``rel + f`` and a subdirectory ``d`` holds the keys starting with
        ``rel + d + "/"``: sorting on those strings interleaves them exactly as S3 orders keys
        ("a-b" < "a.b" < "a/..." < "a0")."""
        try:
            with os.scandir(directory) as entries:
                names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        except (FileNotFoundError, NotADirectoryError):
            return
        items: list[tuple[str, str | None]] = []
        for name, is_dir in names:
            if is_dir:
                segment = _unescape(name)
                if segment is None:
                    continue  # not a directory this store made
                sort_key = f"{rel}{segment}/"
            elif name.endswith(_SUFFIX):
                segment = _unescape(name[: -len(_SUFFIX)])
                if segment is None:
                    continue
                sort_key = rel + segment
            else:
                continue
            if partial and not segment.startswith(partial):
                continue
            if after is not None and sort_key <= after and not (is_dir and after.startswith(sort_key)):
                # A file at or before the cursor, or a directory whose every key sorts before it.
                continue
            items.append((sort_key, os.path.join(directory, name) if is_dir else None))
        items.sort()
        for sort_key, subdirectory in items:
            if subdirectory is None:
                yield sort_key
            else:
                yield from self._walk(subdirectory, sort_key, after if after is not None and after.startswith(sort_key) else None, "")

    # -- async interface ------------------------------------------------------------------------

    async def get(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._get, key)

    async def head(self, key: str) -> str | None:
        return await asyncio.to_thread(self._head, key)

    def _submit(self, key: str, body: bytes | None, condition: str | None, etag: str | None) -> asyncio.Future[Any]:
        path = self._path(key)  # an invalid key is refused here, before anything is written
        job = _Job(asyncio.get_running_loop(), key, path, body, condition, etag)
        self._writer.submit(job)
        assert job.future is not None
        return job.future

    async def put(self, key: str, body: bytes) -> str:
        result: str = await self._submit(key, body, None, None)
        return result

    async def put_if_absent(self, key: str, body: bytes) -> str:
        result: str = await self._submit(key, body, "absent", None)
        return result

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        result: str = await self._submit(key, body, "match", etag)
        return result

    async def delete(self, key: str) -> None:
        await self._submit(key, None, None, None)

    async def delete_if_match(self, key: str, etag: str) -> None:
        await self._submit(key, None, "match", etag)

    async def delete_many(self, keys: list[str]) -> None:
        if check_delete_batch(keys):
            # Through the writer like every delete (in order with the writes before them), as
            # one or a few of its batches.
            await asyncio.gather(*(self._submit(key, None, None, None) for key in keys))

    async def list_page(self, prefix: str, *, start_after: str | None = None, limit: int = 1000) -> ListPage:
        return await asyncio.to_thread(self._list, prefix, start_after, limit)

    async def remove_stale_temp(self, *, older_than_seconds: float, dry_run: bool = False) -> int:
        return await asyncio.to_thread(self._remove_stale_temp, older_than_seconds, dry_run=dry_run)

    async def close(self) -> None:
        """Wait until every write submitted before this call is answered (the writer thread
        takes jobs in order: a no-op job behind them is answered after them)."""
        job = _Job(asyncio.get_running_loop(), "", "", None, "noop", None)
        self._writer.submit(job)
        assert job.future is not None
        await job.future
