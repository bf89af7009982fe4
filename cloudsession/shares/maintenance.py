"""Store maintenance for operators: rebuild the index, check and repair shares, migrate a bucket
written by the reference Worker, delete a share whatever state it is in.

The CLI (``cli/tools.py``) is a thin shell over these coroutines. They read and fold shares
through :class:`~cloudsession.shares.service.ShareService` and ``state.ShareState`` (the same code that serves
requests), write with conditional puts where a concurrent server could be writing too, and never
let one bad share stop a run: every per-share failure becomes a line in the :class:`Report`.

What counts as a damaged snapshot (``share/<id>``), from worst to mildest:

``empty`` / ``invalid-json`` / ``not-an-object``
    Nothing to rebuild from. Reported; deleted only on request (``--delete-unrepairable``).
``no-session-id``
    Neither ``metadata.sessionID``, ``session.id`` nor the index entry names the session, so the
    owner's secret cannot be derived and import would fail. Unrepairable, like the above.
``malformed``
    Readable, but missing or mistyped parts: no ``session`` or ``metadata`` object, session keys
    that ``opencode import`` requires (``id``, ``slug``, ``title``, ``version``, ``time``), arrays
    that are not arrays or hold entries without ids. Repaired by filling defaults the way the
    reference's create does and dropping the unusable entries; every present value is kept.

The reference Worker's ``fix-malformed`` script crashes when ``metadata`` is missing and its
``backfill-index`` aborts on the first unparsable blob; here both are just findings.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cloudsession.errors import SessionNotFound, ShareError, ShareNotFound
from cloudsession.jsonio import json_bytes
from cloudsession.shares.service import ShareService
from cloudsession.shares.state import ShareState
from cloudsession.shares.storage import (
    INDEX_PREFIX,
    JOURNAL_PREFIX,
    SNAPSHOT_PREFIX,
    index_key,
    journal_key,
    journal_prefix,
    snapshot_key,
)
from cloudsession.store.base import STALE_TEMP_SECONDS, ObjectStore, PreconditionFailed, iter_keys, read_json_object

CONCURRENCY = 16
# Keys are listed a page at a time and worked on in batches of this size, so memory stays flat
# however many shares a bucket holds.
BATCH = 1000

Tick = Callable[[int], None]

# Session keys ``opencode import`` requires, with the defaults the reference's create writes.
_SESSION_DEFAULTS: tuple[tuple[str, Callable[[str], Any]], ...] = (
    ("id", lambda sid: sid),
    ("slug", lambda sid: sid),
    ("projectID", lambda sid: ""),
    ("directory", lambda sid: ""),
    ("title", lambda sid: ""),
    ("version", lambda sid: "1"),
)


@dataclass(slots=True)
class Finding:
    share_id: str
    kind: str
    detail: str
    # "repaired", "would repair", "deleted", "would delete", or "" (reported only).
    action: str = ""

    def line(self) -> str:
        suffix = f" [{self.action}]" if self.action else ""
        return f"{self.share_id}: {self.kind}: {self.detail}{suffix}"


@dataclass(slots=True)
class Report:
    """Counters for the summary and the findings worth a line each."""

    counts: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)
        self.counts[finding.kind] += 1

    @property
    def unresolved(self) -> list[Finding]:
        return [f for f in self.findings if f.action in ("", "would repair", "would delete")]


# -- listing ------------------------------------------------------------------------------------


async def ids_under(store: ObjectStore, prefix: str) -> list[str]:
    """Share ids of the ``<prefix><id>`` keys (every page); deeper keys count once by their id."""
    seen: dict[str, None] = {}
    async for key in iter_keys(store, prefix):
        seen.setdefault(key[len(prefix):].split("/", 1)[0], None)
    return list(seen)


async def for_each(ids: list[str], work: Callable[[str], Awaitable[None]], tick: Tick) -> None:
    """Run ``work`` on every id, ``CONCURRENCY`` at a time, in batches of ``BATCH``."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(share_id: str) -> None:
        async with semaphore:
            await work(share_id)
        tick(1)

    for start in range(0, len(ids), BATCH):
        await asyncio.gather(*(one(i) for i in ids[start:start + BATCH]))


# -- snapshot checks ----------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(slots=True)
class Diagnosis:
    kind: str  # "ok", "malformed", or an unrepairable kind
    issues: list[str]
    fixed: dict[str, Any] | None = None


def diagnose(body: bytes, share_id: str, index: dict[str, Any] | None = None, *, now: int | None = None) -> Diagnosis:
    """Classify a ``share/<id>`` blob and, when it can be, build the repaired document.

    ``index`` (the share's index entry, if readable) may supply a session ID and times that the
    blob lost. Present values are never changed; only missing or mistyped ones are filled in.
    """
    if not body.strip():
        return Diagnosis("empty", ["the blob is empty"])
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Diagnosis("invalid-json", [f"not valid JSON ({exc})"])
    if not isinstance(doc, dict):
        return Diagnosis("not-an-object", [f"the blob is a JSON {type(doc).__name__}, not an object"])
    index = index or {}
    issues: list[str] = []
    raw_metadata = doc.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    if not isinstance(raw_metadata, dict):
        issues.append("metadata is missing" if raw_metadata is None else "metadata is not an object")
    raw_session = doc.get("session")
    session: dict[str, Any] = raw_session if isinstance(raw_session, dict) else {}
    if not isinstance(raw_session, dict):
        issues.append("session is missing" if raw_session is None else "session is not an object")
    session_id = _text(metadata.get("sessionID")) or _text(session.get("id")) or _text(index.get("sessionID"))
    if session_id is None:
        return Diagnosis("no-session-id", issues + ["no session ID in metadata, session or index"])
    stamp = int(time.time() * 1000) if now is None else now
    raw_times = session.get("time")
    times: dict[str, Any] = raw_times if isinstance(raw_times, dict) else {}
    created = _int(metadata.get("createdAt")) or _int(times.get("created")) or _int(index.get("createdAt")) or stamp
    updated = _int(metadata.get("lastUpdated")) or _int(times.get("updated")) or _int(index.get("lastUpdated")) or created

    fixed_session = dict(session)
    for key, default in _SESSION_DEFAULTS:
        if not isinstance(fixed_session.get(key), str) or (key in ("id", "slug") and not fixed_session[key]):
            issues.append(f"session.{key} is missing or not a string")
            fixed_session[key] = default(session_id)
    fixed_times = dict(times)
    for key, value in (("created", created), ("updated", updated)):
        if _int(fixed_times.get(key)) is None:
            issues.append(f"session.time.{key} is missing or not a number")
            fixed_times[key] = value
    fixed_session["time"] = fixed_times

    arrays: dict[str, list[Any]] = {}
    for key, need in (("messages", ("id",)), ("parts", ("id", "messageID")), ("diffs", ()), ("models", ("id",))):
        raw_list = doc.get(key)
        entries: list[Any] = raw_list if isinstance(raw_list, list) else []
        if not isinstance(raw_list, list):
            issues.append(f"{key} is not an array" if raw_list is not None or key in doc else f"{key} is missing")
        good = [v for v in entries if isinstance(v, dict) and all(_text(v.get(k)) for k in need)]
        if len(good) != len(entries):
            issues.append(f"{len(entries) - len(good)} {key} entries are not objects with {' and '.join(need) or 'fields'}")
        arrays[key] = good

    fixed_meta = dict(metadata)
    for key, value in (("createdAt", created), ("lastUpdated", updated), ("syncCount", 0)):
        if _int(fixed_meta.get(key)) is None:
            issues.append(f"metadata.{key} is missing or not a number")
            fixed_meta[key] = value
    if _text(fixed_meta.get("sessionID")) is None:
        issues.append("metadata.sessionID is missing")
        fixed_meta["sessionID"] = session_id
    if not issues:
        return Diagnosis("ok", [])
    fixed = {"session": fixed_session, **arrays, "metadata": fixed_meta}
    fixed.update({k: v for k, v in doc.items() if k not in fixed})
    return Diagnosis("malformed", issues, fixed)


def _summary(issues: list[str]) -> str:
    shown = "; ".join(issues[:4])
    return shown + (f"; and {len(issues) - 4} more" if len(issues) > 4 else "")


async def _read_index(store: ObjectStore, share_id: str) -> dict[str, Any] | None:
    return await read_json_object(store, index_key(share_id))


async def diagnose_stored(store: ObjectStore, share_id: str, body: bytes) -> Diagnosis:
    """``diagnose``, consulting the index entry only for a damaged blob (one GET saved per
    healthy share, which counts on a bucket of many thousands)."""
    diagnosis = diagnose(body, share_id)
    if diagnosis.kind in ("no-session-id", "malformed"):
        diagnosis = diagnose(body, share_id, await _read_index(store, share_id))
    return diagnosis


# -- backfill-index -----------------------------------------------------------------------------


async def sync_index(service: ShareService, share_id: str, *, dry_run: bool) -> str:
    """Bring ``index/<id>`` in line with the folded share: "ok", "missing" or "stale"."""
    state = await service.load(share_id)
    expected = state.index_doc()
    current = await service.store_call(service.store.get(index_key(share_id)))
    if current is not None:
        try:
            if orjson.loads(current.body) == expected:
                return "ok"
        except orjson.JSONDecodeError:
            pass
    if not dry_run:
        await service.store_call(service.store.put(index_key(share_id), json_bytes(expected)))
    return "missing" if current is None else "stale"


async def backfill_index(service: ShareService, *, dry_run: bool = False, start: Callable[[int], Tick]) -> Report:
    """Write every missing or stale index entry (``start(total)`` returns the progress tick)."""
    report = Report()
    ids = await ids_under(service.store, SNAPSHOT_PREFIX)
    tick = start(len(ids))

    async def work(share_id: str) -> None:
        try:
            outcome = await sync_index(service, share_id, dry_run=dry_run)
        except SessionNotFound:
            report.add(Finding(share_id, "unreadable", "the snapshot cannot be read; run `cloudsession admin fsck`"))
            return
        except Exception as exc:  # one share must never stop the run
            report.add(Finding(share_id, "failed", _describe(exc)))
            return
        report.counts[outcome] += 1
        if outcome != "ok":
            verb = "would write" if dry_run else "written"
            report.findings.append(Finding(share_id, f"index {outcome}", verb))

    await for_each(ids, work, tick)
    return report


class CannotMigrate(Exception):
    """A source share that cannot be copied; the message says why and what to do."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ShareError):
        return exc.message
    if isinstance(exc, CannotMigrate):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# -- fsck ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class FsckOptions:
    repair: bool = False
    delete_unrepairable: bool = False
    dry_run: bool = False

    def act(self, done: str, planned: str) -> str:
        return planned if self.dry_run else done


async def fsck(service: ShareService, options: FsckOptions, *, start: Callable[[int], Tick]) -> Report:
    """Check every share, index entry and journal; repair, delete or report (module docstring)."""
    store = service.store
    report = Report()
    share_ids = await ids_under(store, SNAPSHOT_PREFIX)
    index_ids = await ids_under(store, INDEX_PREFIX)
    journal_ids = await ids_under(store, JOURNAL_PREFIX)
    shares = set(share_ids)
    orphans = sorted((set(index_ids) | set(journal_ids)) - shares)
    tick = start(len(share_ids) + len(orphans))

    async def check(share_id: str) -> None:
        try:
            await _check_share(service, share_id, options, report)
        except Exception as exc:  # one share must never stop the run
            report.add(Finding(share_id, "check-failed", _describe(exc)))

    async def orphan(share_id: str) -> None:
        try:
            await _check_orphan(service, share_id, options, report)
        except Exception as exc:
            report.add(Finding(share_id, "check-failed", _describe(exc)))

    await for_each(share_ids, check, tick)
    await for_each(orphans, orphan, tick)
    await _check_temp(service, options, report)
    report.counts["shares"] = len(share_ids)
    return report


async def _check_temp(service: ShareService, options: FsckOptions, report: Report) -> None:
    """Temporary files of writes a crash interrupted (filesystem store): never read, never
    removed by anything else once the store is open."""
    remove = options.repair and not options.dry_run
    count = await service.store.remove_stale_temp(older_than_seconds=STALE_TEMP_SECONDS, dry_run=not remove)
    if count:
        action = options.act("deleted", "would delete") if options.repair else ""
        report.add(Finding("(store)", "stale-temp", f"{count} temporary files left by interrupted writes", action))


async def _check_share(service: ShareService, share_id: str, options: FsckOptions, report: Report) -> None:
    store = service.store
    obj = await service.store_call(store.get(snapshot_key(share_id)))
    if obj is None:
        return  # deleted while we were listing
    diagnosis = await diagnose_stored(store, share_id, obj.body)
    if diagnosis.kind not in ("ok", "malformed"):
        action = ""
        if options.delete_unrepairable:
            action = options.act("deleted", "would delete")
            if not options.dry_run:
                await _delete_raw(service, share_id)
        report.add(Finding(share_id, diagnosis.kind, _summary(diagnosis.issues), action))
        return
    if diagnosis.kind == "malformed":
        action = ""
        if options.repair and diagnosis.fixed is not None:
            action = options.act("repaired", "would repair")
            if not options.dry_run:
                try:
                    await service.store_call(store.put_if_match(snapshot_key(share_id), json_bytes(diagnosis.fixed), obj.etag))
                except PreconditionFailed:
                    action = ""
                    diagnosis.issues.append("changed while being repaired; run fsck again")
        report.add(Finding(share_id, "malformed", _summary(diagnosis.issues), action))
        if action != "repaired":
            return  # the index and journal checks need a readable share
    state = await service.load(share_id)
    await _check_index(service, state, options, report)
    await _check_journal(service, state, options, report)


async def _check_index(service: ShareService, state: ShareState, options: FsckOptions, report: Report) -> None:
    expected = state.index_doc()
    current = await _read_index(service.store, state.share_id)
    if current == expected:
        return
    kind = "index-missing" if current is None else "index-stale"
    action = ""
    if options.repair:
        action = options.act("repaired", "would repair")
        if not options.dry_run:
            await sync_index(service, state.share_id, dry_run=False)
    detail = "no readable index entry" if current is None else "the index entry does not match the share"
    report.add(Finding(state.share_id, kind, detail, action))


async def _check_journal(service: ShareService, state: ShareState, options: FsckOptions, report: Report) -> None:
    """Journal entries under a dead incarnation (left by a writer that raced a delete), and a
    damaged entry in the live tail."""
    share_id = state.share_id
    current = journal_prefix(share_id, state.meta.incarnation)
    dead = [key async for key in iter_keys(service.store, journal_prefix(share_id)) if not key.startswith(current)]
    if dead:
        action = ""
        if options.repair:
            action = options.act("deleted", "would delete")
            if not options.dry_run:
                await service.delete_keys(dead)
        report.add(Finding(share_id, "orphan-journal", f"{len(dead)} journal entries of an earlier incarnation", action))
    await _check_tail(service, state, options, report)


async def _check_tail(service: ShareService, state: ShareState, options: FsckOptions, report: Report) -> None:
    """Reads fold the journal up to the first entry they cannot read (disk damage, a partial
    copy) and stop there, and every new write collides with it. Repair puts an empty entry in
    its place: its own content is lost either way, the entries after it are served again."""
    seq = state.meta.seq + 1
    key = journal_key(state.share_id, state.meta.incarnation, seq)
    obj = await service.store_call(service.store.get(key))
    if obj is None:
        return
    try:
        entry = orjson.loads(obj.body)
    except orjson.JSONDecodeError:
        entry = None
    if isinstance(entry, dict) and entry.get("seq") == seq:
        return  # a write that landed after the share was loaded
    action = ""
    if options.repair:
        action = options.act("repaired", "would repair")
        if not options.dry_run:
            # Counted as the one sync it almost always was, so syncCount and the ack cursor
            # that clients already saw keep their values.
            placeholder = {"v": 1, "seq": seq, "at": state.meta.last_updated, "w": "fsck", "items": [], "syncs": 1}
            try:
                await service.store_call(service.store.put_if_match(key, json_bytes(placeholder), obj.etag))
            except PreconditionFailed:
                action = ""
    report.add(Finding(state.share_id, "damaged-journal", f"journal entry {seq} is unreadable; reads stop before it and writes fail", action))


async def _check_orphan(service: ShareService, share_id: str, options: FsckOptions, report: Report) -> None:
    """Index or journal keys whose snapshot is gone (an interrupted delete)."""
    if await service.store_call(service.store.head(snapshot_key(share_id))) is not None:
        return  # created since the listing
    action = ""
    if options.repair:
        action = options.act("deleted", "would delete")
        if not options.dry_run:
            await service.purge(share_id)
    report.add(Finding(share_id, "orphan", "index or journal entries without a snapshot", action))


async def _has_journal(service: ShareService, share_id: str) -> bool:
    """Whether any journal entry of the share exists, of any incarnation (one LIST of one key)."""
    return bool((await service.store_call(service.store.list_page(journal_prefix(share_id), limit=1))).keys)


async def _delete_raw(service: ShareService, share_id: str) -> None:
    """Remove a share's keys without reading it (it may be unreadable)."""
    await service.store_call(service.store.delete(snapshot_key(share_id)))
    await service.purge(share_id)


# -- delete -------------------------------------------------------------------------------------


async def delete_share(service: ShareService, share_id: str, *, dry_run: bool = False) -> str:
    """The operator's kill switch: remove a share and everything under its id, without its
    secret, even when it cannot be read. Returns "deleted", "would delete", "leftovers removed"
    or "not found"."""
    store = service.store
    exists = await service.store_call(store.head(snapshot_key(share_id))) is not None
    leftovers = await service.store_call(store.head(index_key(share_id))) is not None or await _has_journal(service, share_id)
    if not exists and not leftovers:
        return "not found"
    if dry_run:
        return "would delete"
    if not exists:
        await service.purge(share_id)
        return "leftovers removed"
    try:
        await service.delete(share_id, None, admin=True)
    except (ShareNotFound, SessionNotFound):
        await _delete_raw(service, share_id)  # unreadable snapshot: delete by key
    return "deleted"


# -- migrate ------------------------------------------------------------------------------------


async def migrate(source: ShareService, target: ShareService, *, dry_run: bool = False, start: Callable[[int], Tick]) -> Report:
    """Copy every share of ``source`` (a reference Worker bucket, or another cloudsession store)
    into ``target`` in cloudsession's layout. Idempotent and resumable: a share already copied
    is left alone unless the source moved on and the target was not written since."""
    report = Report()
    ids = await ids_under(source.store, SNAPSHOT_PREFIX)
    tick = start(len(ids))

    async def work(share_id: str) -> None:
        try:
            outcome = await _migrate_one(source, target, share_id, dry_run=dry_run)
        except Exception as exc:  # one share must never stop the run
            report.add(Finding(share_id, "failed", _describe(exc)))
            return
        report.counts[outcome] += 1

    await for_each(ids, work, tick)
    return report


async def _source_state(source: ShareService, share_id: str) -> tuple[ShareState, bool]:
    """The share as the source holds it, folded; repaired in memory if malformed. A reference
    blob has no journal, so it is read with one GET; a cloudsession snapshot goes through the
    service so that its journal tail is folded in."""
    obj = await source.store_call(source.store.get(snapshot_key(share_id)))
    if obj is None:
        raise ShareNotFound("deleted from the source during the run")
    diagnosis = await diagnose_stored(source.store, share_id, obj.body)
    if diagnosis.fixed is None and diagnosis.kind != "ok":
        raise CannotMigrate(f"{diagnosis.kind}: {_summary(diagnosis.issues)}")
    doc = diagnosis.fixed if diagnosis.fixed is not None else orjson.loads(obj.body)
    ours = isinstance(doc["metadata"].get("cloudsession"), dict)
    if ours and diagnosis.kind == "ok":
        return await source.load(share_id), False
    if ours and await _has_journal(source, share_id):
        raise CannotMigrate("malformed snapshot with journal entries: repair the source first (admin fsck --repair)")
    return ShareState.from_snapshot(share_id, doc, obj.etag, len(obj.body)), diagnosis.kind != "ok"


async def _migrate_one(source: ShareService, target: ShareService, share_id: str, *, dry_run: bool) -> str:
    state, repaired = await _source_state(source, share_id)
    # compactedAt = lastUpdated keeps the bytes a function of the share, so a re-run can tell
    # "already copied" by comparing them.
    body = state.snapshot_bytes_now(state.meta.last_updated)
    key = snapshot_key(share_id)
    existing = await target.store_call(target.store.get(key))
    if existing is None:
        outcome = "copied"
        if not dry_run:
            try:
                await target.store_call(target.store.put_if_absent(key, body))
            except PreconditionFailed:
                return "kept"  # created on the target meanwhile: the live copy wins
    elif existing.body == body:
        outcome = "unchanged"
    else:
        try:
            current = await target.load(share_id)
        except SessionNotFound:
            raise CannotMigrate("the target's copy cannot be read; run `cloudsession admin fsck` on the target") from None
        # A copy the target has written to since (a sync moves seq on) or a share re-created
        # there (new incarnation) is newer than anything the source can offer.
        if current.meta.seq > state.meta.seq or current.meta.incarnation != state.meta.incarnation:
            return "kept"
        outcome = "updated"
        if not dry_run:
            try:
                await target.store_call(target.store.put_if_match(key, body, existing.etag))
            except PreconditionFailed:
                return "kept"
    if dry_run:
        pass
    elif outcome == "unchanged":
        await sync_index(target, share_id, dry_run=False)  # the target may have synced since
    elif await _read_index(target.store, share_id) != state.index_doc():
        await target.store_call(target.store.put(index_key(share_id), json_bytes(state.index_doc())))
    return f"{outcome} (repaired)" if repaired else outcome
