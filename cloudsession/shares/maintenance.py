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

from cloudsession import credentials
from cloudsession.errors import SessionNotFound, ShareError, ShareNotFound
from cloudsession.jsonio import parse_stored, stored_bytes
from cloudsession.shares.listing import entry_state, write_entry
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
from cloudsession.shares.sweep import LISTING_GRACE_MS
from cloudsession.store.base import STALE_TEMP_SECONDS, ObjectStore, PreconditionFailed, StoredObject, is_valid_key, iter_keys, read_json_object

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


async def ids_under(store: ObjectStore, prefix: str, *, below: int = 0) -> list[str]:
    """Share ids of the ``<prefix><id>`` keys (every page), or of ``<prefix><id>/...`` keys with
    ``below`` more segments (journal entries: 2). The id is the whole rest of the key: the
    reference Worker's ids may themselves hold ``/`` (fsck reports those)."""
    seen: dict[str, None] = {}
    async for key in iter_keys(store, prefix):
        rest = key[len(prefix):]
        seen.setdefault(rest.rsplit("/", below)[0] if below else rest, None)
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
        # What the Worker's JSON.parse reads (lone surrogates included) is readable here too.
        doc = parse_stored(body)
    except ValueError as exc:
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
    """Bring ``index/<id>`` and its listing key in line with the folded share: "ok",
    "missing", "stale" or "unlisted" (the entry was right, its listing key missing)."""
    state = await service.load(share_id)
    expected = state.index_doc()
    outcome: str = await service.store_call(entry_state(service.store, share_id, expected))
    if outcome != "ok" and not dry_run:
        await service.store_call(write_entry(service.store, share_id, expected, force=True))
    return outcome


async def backfill_index(service: ShareService, *, dry_run: bool = False, start: Callable[[int], Tick]) -> Report:
    """Write every missing or stale index entry and listing key (``start(total)`` returns the
    progress tick)."""
    report = Report()
    await service.index_writer.flush(service.settings.store_timeout_seconds)  # this process's own first
    ids = await ids_under(service.store, SNAPSHOT_PREFIX)
    tick = start(len(ids))

    async def work(share_id: str) -> None:
        reason = credentials.unservable_reason(share_id)
        if reason is not None:
            report.add(Finding(share_id if reason == "it contains '/'" else repr(share_id), "unservable-id",
                               f"the id cannot be served ({reason}); `cloudsession admin fsck --repair` moves it"))
            return
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
    if not dry_run and not any(f.kind in ("failed",) for f in report.findings):
        # Every share's listing key exists now: the list no longer needs building.
        await service.store_call(service.listing.mark_built(report.counts.total()))
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
    """Check every share, index entry, listing key and journal; repair, delete or report
    (module docstring)."""
    store = service.store
    report = Report()
    await service.index_writer.flush(service.settings.store_timeout_seconds)  # this process's own first
    share_ids = await ids_under(store, SNAPSHOT_PREFIX)
    index_ids = await ids_under(store, INDEX_PREFIX)
    journal_ids = await ids_under(store, JOURNAL_PREFIX, below=2)
    shares = set(share_ids)
    orphans = sorted((set(index_ids) | set(journal_ids)) - shares)
    tick = start(len(share_ids) + len(orphans))

    async def orphan(share_id: str) -> None:
        try:
            await _check_orphan(service, share_id, options, report)
        except Exception as exc:
            report.add(Finding(share_id, "check-failed", _describe(exc)))

    built = not await service.store_call(service.listing.needs_backfill())
    unlisted: list[str] = []

    async def check(share_id: str) -> None:
        try:
            await _check_share(service, share_id, options, report, unlisted=None if built else unlisted)
        except Exception as exc:  # one share must never stop the run
            report.add(Finding(share_id, "check-failed", _describe(exc)))

    await for_each(share_ids, check, tick)
    await for_each(orphans, orphan, tick)
    await _check_listing(service, options, report, built=built, unlisted=len(unlisted))
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


async def _check_share(service: ShareService, share_id: str, options: FsckOptions, report: Report, *, unlisted: list[str] | None) -> None:
    store = service.store
    reason = credentials.unservable_reason(share_id)
    if reason is not None:
        await _check_unservable(service, share_id, reason, options, report)
        return
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
                    await service.store_call(store.put_if_match(snapshot_key(share_id), stored_bytes(diagnosis.fixed), obj.etag))
                except PreconditionFailed:
                    action = ""
                    diagnosis.issues.append("changed while being repaired; run fsck again")
        report.add(Finding(share_id, "malformed", _summary(diagnosis.issues), action))
        if action != "repaired":
            return  # the index and journal checks need a readable share
    state = await service.load(share_id)
    await _check_index(service, state, options, report, unlisted=unlisted)
    await _check_journal(service, state, options, report)


async def _check_index(service: ShareService, state: ShareState, options: FsckOptions, report: Report, *, unlisted: list[str] | None) -> None:
    """``unlisted``: where to count shares without a listing key when the store's list was never
    built (one finding for the store, ``_check_listing``); None: each is a finding."""
    outcome = await service.store_call(entry_state(service.store, state.share_id, state.index_doc()))
    if outcome == "ok":
        return
    if outcome == "unlisted" and unlisted is not None:
        unlisted.append(state.share_id)
        return
    action = ""
    if options.repair:
        action = options.act("repaired", "would repair")
        if not options.dry_run:
            await sync_index(service, state.share_id, dry_run=False)
    kind, detail = {
        "missing": ("index-missing", "no readable index entry"),
        "stale": ("index-stale", "the index entry does not match the share"),
        "unlisted": ("listing-missing", "the index entry has no listing key: the share is missing from the list"),
    }[outcome]
    report.add(Finding(state.share_id, kind, detail, action))


async def _check_listing(service: ShareService, options: FsckOptions, report: Report, *, built: bool, unlisted: int) -> None:
    """Listing keys that are not their share's current one (a crash in the index writer): never
    shown, but read past by every page and sweep. And a store whose listing keys were never
    built from its index entries (written before they existed): one finding for the store
    rather than one per share."""
    if not built and unlisted:
        action = ""
        if options.repair:
            action = options.act("repaired", "would repair")
            if not options.dry_run:
                await service.listing.backfill()
        report.add(Finding("(store)", "listing-unbuilt", f"{unlisted} shares are missing from the list: its keys were never built from "
                           "the index entries (a store written before they existed); the server builds them at startup, as do "
                           "--repair and backfill-index", action))
    scan = service.listing.scan(None, batch=1000, evict=False)
    scan.stale_grace_ms = LISTING_GRACE_MS
    while await scan.next() is not None:
        pass
    if not scan.stale:
        return
    action = ""
    if options.repair:
        action = options.act("deleted", "would delete")
        if not options.dry_run:
            await service.delete_keys(scan.stale)
    report.add(Finding("(store)", "listing-stale", f"{len(scan.stale)} listing keys that are not their share's current one", action))


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
        entry = parse_stored(obj.body)
    except ValueError:
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
                await service.store_call(service.store.put_if_match(key, stored_bytes(placeholder), obj.etag))
            except PreconditionFailed:
                action = ""
    report.add(Finding(state.share_id, "damaged-journal", f"journal entry {seq} is unreadable; reads stop before it and writes fail", action))


async def _check_orphan(service: ShareService, share_id: str, options: FsckOptions, report: Report) -> None:
    """Index or journal keys whose snapshot is gone (an interrupted delete)."""
    if not is_valid_key(index_key(share_id)):
        report.add(Finding(repr(share_id), "unaddressable-key", _unaddressable(index_key(share_id))))
        return
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


# -- share ids that cannot be served -----------------------------------------------------------


def _unaddressable(key: str) -> str:
    return (
        f"the key {key!r} cannot be read or written through the store interface (an empty, '.' or '..' "
        "segment, a control character or more than 1,024 bytes); remove it with the bucket's own tools"
    )


async def _new_home(service: ShareService, share_id: str, body: bytes) -> tuple[str, ShareState]:
    """Where a share whose id cannot be served goes: the id cloudsession's create gives its
    session (so opencode's re-create finds it, with the same secret), or CannotMigrate."""
    diagnosis = await diagnose_stored(service.store, share_id, body)
    if diagnosis.fixed is None and diagnosis.kind != "ok":
        raise CannotMigrate(f"{diagnosis.kind}: {_summary(diagnosis.issues)}")
    doc = diagnosis.fixed if diagnosis.fixed is not None else parse_stored(body)
    state = ShareState.from_snapshot(share_id, doc, None, len(body))
    for candidate in credentials.share_id_candidates(service.namespace, state.meta.session_id):
        try:
            existing = await service.load(candidate)
        except SessionNotFound:
            return candidate, state
        if credentials.secrets_equal(existing.meta.session_id, state.meta.session_id):
            return candidate, state
    raise CannotMigrate("every id cloudsession would give its session is taken by another session")


async def _check_unservable(service: ShareService, share_id: str, reason: str, options: FsckOptions, report: Report) -> None:
    """A Worker share under an id no URL can name (``26/11/30``): --repair moves it (snapshot
    bytes as they are, so its secret keeps working) to the id cloudsession gives its session."""
    shown, key = repr(share_id) if reason != "it contains '/'" else share_id, snapshot_key(share_id)
    if not is_valid_key(key):
        report.add(Finding(shown, "unaddressable-key", _unaddressable(key)))
        return
    obj = await service.store_call(service.store.get(key))
    if obj is None:
        return
    try:
        new_id, _ = await _new_home(service, share_id, obj.body)
    except CannotMigrate as exc:
        action = ""
        if options.delete_unrepairable:
            action = options.act("deleted", "would delete")
            if not options.dry_run:
                await _delete_raw(service, share_id)
        report.add(Finding(shown, "unservable-id", f"the id cannot be served ({reason}) and cannot be moved: {exc}", action))
        return
    action = ""
    detail = f"the id cannot be served ({reason}); --repair moves it to {new_id}"
    if options.repair:
        action = options.act("repaired", "would repair")
        if not options.dry_run:
            problem = await _move(service, share_id, obj, new_id)
            if problem:
                action, detail = "", f"{detail}; {problem}"
    report.add(Finding(shown, "unservable-id", detail, action))


async def _move(service: ShareService, share_id: str, obj: StoredObject, new_id: str) -> str | None:
    """Copy the snapshot to ``new_id`` (create-if-absent), index it, then remove the old keys.
    Returns a problem to report, or None."""
    store = service.store
    try:
        await service.store_call(store.put_if_absent(snapshot_key(new_id), obj.body))
    except PreconditionFailed:
        existing = await service.store_call(store.get(snapshot_key(new_id)))
        if existing is None or existing.body != obj.body:
            return f"{new_id} already holds this session's share; delete one of them (admin delete)"
        # an earlier repair copied it and stopped short: finish it
    await sync_index(service, new_id, dry_run=False)
    try:
        await service.store_call(store.delete_if_match(snapshot_key(share_id), obj.etag))
    except PreconditionFailed:
        return "the old key changed while being moved; run fsck again"
    await service.purge(share_id)
    return None


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
    """Copy every share of ``source`` (a reference Worker bucket, served or not, or another
    cloudsession store) into ``target`` in cloudsession's layout, and read each copy back.
    Idempotent and resumable: a share already copied is left alone unless the source moved on
    and the target was not written since."""
    report = Report()
    ids = await ids_under(source.store, SNAPSHOT_PREFIX)
    tick = start(len(ids))

    async def work(share_id: str) -> None:
        reason = credentials.unservable_reason(share_id)
        shown = share_id if reason in (None, "it contains '/'") else repr(share_id)
        try:
            if reason is not None and not is_valid_key(snapshot_key(share_id)):
                raise CannotMigrate(_unaddressable(snapshot_key(share_id)))
            outcome, moved_to = await _migrate_one(source, target, share_id, dry_run=dry_run)
        except Exception as exc:  # one share must never stop the run
            report.add(Finding(shown, "failed", _describe(exc)))
            return
        if moved_to is not None and outcome.startswith("copied"):
            outcome = outcome.replace("copied", "moved", 1)
            report.findings.append(Finding(shown, "moved", f"the id cannot be served ({reason}); copied as {moved_to}"))
        report.counts[outcome] += 1

    await for_each(ids, work, tick)
    return report


async def _source_state(source: ShareService, target: ShareService, share_id: str) -> tuple[ShareState, bool, str | None]:
    """``(state, repaired, moved to)``: the share exactly as the source serves it (the snapshot
    folded with its journal: a reference blob synced while served has entries under
    ``journal/<id>/0/``), repaired in memory if malformed. A share whose id cannot be served is
    given the id cloudsession's create gives its session on the target (as fsck --repair)."""
    obj = await source.store_call(source.store.get(snapshot_key(share_id)))
    if obj is None:
        raise ShareNotFound("deleted from the source during the run")
    if not credentials.is_served_id(share_id):
        new_id, state = await _new_home(target, share_id, obj.body)
        repaired = (await diagnose_stored(source.store, share_id, obj.body)).kind != "ok"
        state.share_id = new_id
        return state, repaired, new_id
    diagnosis = await diagnose_stored(source.store, share_id, obj.body)
    if diagnosis.fixed is None and diagnosis.kind != "ok":
        raise CannotMigrate(f"{diagnosis.kind}: {_summary(diagnosis.issues)}")
    if diagnosis.kind == "ok":
        return await source.load(share_id), False, None
    # Served, a malformed blob reads as its defensive fold plus its journal; the copy is the
    # repaired blob plus the same journal.
    state = ShareState.from_snapshot(share_id, diagnosis.fixed, obj.etag, len(obj.body))
    await source.catch_up(state)
    return state, True, None


def _copy_bytes(state: ShareState) -> bytes:
    """The target snapshot: a function of the share (compactedAt = lastUpdated), so a re-run can
    tell "already copied" by comparing bytes; ``migrated`` marks a copy the target has not
    written since (any write there either leaves journal entries or compacts the mark away)."""
    doc = state.snapshot_doc(state.meta.last_updated)
    doc["metadata"]["cloudsession"]["migrated"] = True
    return stored_bytes(doc)


def _untouched_copy(existing: StoredObject, current: ShareState, source_seq: int) -> bool:
    """Whether the target's share is a copy made by migrate that nothing has written since."""
    if current.tail_entries:
        return False
    try:
        ours = parse_stored(existing.body)["metadata"]["cloudsession"]
    except (ValueError, KeyError, TypeError):
        return False
    if not isinstance(ours, dict):
        return False
    if ours.get("migrated") is True:
        return True
    # Copies made before the mark existed: stamped compactedAt = lastUpdated, at a seq the
    # source has reached.
    return ours.get("compactedAt") == current.meta.last_updated and current.meta.seq <= source_seq


def fingerprint(service: ShareService, state: ShareState) -> dict[str, Any]:
    """What anyone reads of a share, and what its owner's credentials are: public data, the
    object, the index entry, privacy and expiry, the secret and read token (the share id aside,
    which a moved share changes)."""
    view = service.public_view(state)
    meta = state.meta
    index = state.index_doc()
    index.pop("id", None)
    return {
        "data": view.data_items(),
        "object": view.agent_session(),
        "index": service.public_index(index),
        "private": view.private,
        "expiresAt": view.expires_at,
        "sessionID": meta.session_id,
        "secret": service.secret_for(meta.session_id, meta.epoch),
        "legacySecret": meta.legacy_secret_sha256,
        "readToken": service.read_token_for(state),
        "cursor": meta.cursor,
    }


async def _verify(source: ShareService, state: ShareState, target: ShareService, share_id: str) -> None:
    """Read the copy back through the target's service and compare it with the source's view."""
    try:
        copy = await target.load(share_id)
    except SessionNotFound:
        raise CannotMigrate("the copy cannot be read back from the target") from None
    expected, got = fingerprint(source, state), fingerprint(target, copy)
    if expected != got:
        differing = ", ".join(k for k in expected if expected[k] != got.get(k))
        raise CannotMigrate(f"the copy reads back differently from the source ({differing}); the target keeps it, run migrate again or check the target with fsck")


async def _migrate_one(source: ShareService, target: ShareService, share_id: str, *, dry_run: bool) -> tuple[str, str | None]:
    state, repaired, moved_to = await _source_state(source, target, share_id)
    target_id = state.share_id
    body = _copy_bytes(state)
    key = snapshot_key(target_id)
    existing = await target.store_call(target.store.get(key))
    if existing is None:
        outcome = "copied"
        if not dry_run:
            try:
                await target.store_call(target.store.put_if_absent(key, body))
            except PreconditionFailed:
                return "kept", moved_to  # created on the target meanwhile: the live copy wins
    elif existing.body == body:
        outcome = "unchanged"
    else:
        try:
            current = await target.load(target_id)
        except SessionNotFound:
            raise CannotMigrate("the target's copy cannot be read; run `cloudsession admin fsck` on the target") from None
        if fingerprint(target, current) == fingerprint(source, state) and current.meta.seq == state.meta.seq:
            outcome = "unchanged"  # the same share in other bytes (e.g. migrating in place)
        elif not _untouched_copy(existing, current, state.meta.seq):
            # Synced on cloudsession since the copy (journal entries, or a compaction that
            # dropped the mark), or re-created there: newer than anything the source offers.
            return "kept", moved_to
        else:
            outcome = "updated"
            if not dry_run:
                try:
                    await target.store_call(target.store.put_if_match(key, body, existing.etag))
                except PreconditionFailed:
                    return "kept", moved_to
    if dry_run:
        pass
    elif outcome == "unchanged":
        current = await target.load(target_id)
        if current.tail_entries == 0:
            await _verify(source, state, target, target_id)
        await sync_index(target, target_id, dry_run=False)  # the target may have synced since
    else:
        await _verify(source, state, target, target_id)
        await sync_index(target, target_id, dry_run=False)
    return (f"{outcome} (repaired)" if repaired else outcome), moved_to
