"""Share state as a snapshot plus a journal, and the fold that merges them.

The keys and what each holds are described in ``storage.py``.

A read folds the snapshot with the entries after its ``seq``. Compaction writes a new snapshot
(If-Match on the old ETag) and deletes folded entries only once the snapshot that folded them is
older than a grace period; a writer re-checks the share before writing if its last check is older
than a (much shorter) deadline. So a slot freed by compaction is never written again: whoever
could target it has long since re-read the snapshot.

Merge rules (see compat-contract.md §10 and §12): ``session`` replaced; messages and parts
upserted by id, keeping their first position; ``session_diff`` replaces the list (the released
client always sends the whole list); models accumulate per (providerID, id), upserted in place.
``syncCount`` counts accepted syncs, so it is part of the folded state too.

Merges never move backwards (``regression``): an upsert of a session, message or part that would
roll the stored one back is ignored for that item (the rest of the sync applies, and the sync still
counts), counted in ``ShareState.regressions_ignored`` and logged at debug. An update regresses when

- a tool part's ``state.status`` ranks lower than the stored one (pending < running < completed =
  error): terminal states stick, and running never returns to pending;
- a message loses its ``time.completed``, or a part its ``time.end``, that the stored one has;
- its ``time.updated`` is older than the stored one's (equal is not older). The placeholder
  session a create writes is not a stored version: the first synced session always applies.

Out-of-order legacy syncs (two requests racing on the network) are what this prevents. The rule
is part of the fold, so every path (REST sync, ops, RPC, replays of the journal, compaction, a
fresh process) applies it, and every replica folds the same journal to the same state.

The durable sync protocol (``ops.py``, ``docs/protocol.md``) keeps its bookkeeping here too,
folded from the same entries so that every replica reaches the same answer: the ack ``cursor``
(applied operations; a legacy sync is one operation), the bounded op ledger (recent op ids ->
the cursor they were applied at, or why they were rejected) and the Idempotency-Key ledger
(recent key digests -> first response). Entries carry them as ``ops`` and ``idem``.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cloudsession.jsonio import Fragments, parse_stored, stored_bytes
from cloudsession.shares.audit import AUDIT_WINDOW
from cloudsession.shares.items import model_key
from cloudsession.shares.storage import new_incarnation

log = logging.getLogger(__name__)

# How far a tool part has got; an update to a lower rank is a regression (module docstring).
STATUS_RANK = {"pending": 0, "running": 1, "completed": 2, "error": 2}

# The ledgers are bounded so that a share's metadata stays small however long it lives; the
# oldest records are forgotten first. Documented in docs/protocol.md ("ledger window").
OP_LEDGER_WINDOW = 4096
IDEMPOTENCY_WINDOW = 256


# What one entry of an ``EntityMap`` costs besides its JSON: the bytes object's header, its key (an
# id string) and its slot in the dict (measured with sys.getsizeof on CPython 3.11, rounded up).
ENTITY_OVERHEAD_BYTES = 160
# Parsed JSON (dicts, lists, strings) costs about this many times its serialised size
# (tracemalloc on real sessions: 4.5 to 6); used for the small parts kept parsed.
PARSED_COST_FACTOR = 6


class EntityMap(MutableMapping[str, dict[str, Any]]):
    """Messages or parts by id, kept as their stored JSON bytes and parsed on access.

    Parsed JSON costs five to six times its serialised size in CPython; a share's entities are
    kept as bytes so that a cached share costs about what it weighs on disk (what the cache
    budget counts, ``nbytes``), and so that the public view and snapshots are assembled from
    the bytes without serialising the whole share again. Every read (``[id]``, ``get``,
    ``values``) parses a fresh copy: entities are replaced by the fold, never changed in place.

    ``changed`` lists the ids set since the last ``drain_changes`` (in the order they were
    first set), for the public view to redact only what changed; past ``len(self)`` entries it
    gives up and says "everything" (None), so a share nobody reads does not grow it."""

    __slots__ = ("_raw", "nbytes", "_changed", "_all_changed")

    def __init__(self) -> None:
        self._raw: dict[str, bytes] = {}
        self.nbytes = 0
        self._changed: dict[str, None] = {}
        self._all_changed = True

    def __getitem__(self, key: str) -> dict[str, Any]:
        value: dict[str, Any] = parse_stored(self._raw[key])
        return value

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        # A copy of exactly its size: orjson's output keeps its growth buffer (4 KB for a
        # 500-byte entity), which would make the cache several times what it counts.
        self.set_raw(key, memoryview(stored_bytes(value)).tobytes())

    def __delitem__(self, key: str) -> None:
        raw = self._raw.pop(key)
        self.nbytes -= len(raw) + ENTITY_OVERHEAD_BYTES
        self._all_changed = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EntityMap):
            return self._raw == other._raw or dict(self.items()) == dict(other.items())
        return dict(self.items()) == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EntityMap({len(self._raw)} entities, {self.nbytes} bytes)"

    def set_raw(self, key: str, raw: bytes) -> None:
        old = self._raw.get(key)
        if old is not None:
            self.nbytes -= len(old)
        else:
            self.nbytes += ENTITY_OVERHEAD_BYTES
        self._raw[key] = raw
        self.nbytes += len(raw)
        if not self._all_changed:
            self._changed[key] = None
            if len(self._changed) > len(self._raw) // 2 + 64:
                self._all_changed, self._changed = True, {}

    def raw(self, key: str) -> bytes | None:
        return self._raw.get(key)

    def raw_map(self) -> dict[str, bytes]:
        """The stored bytes by id (read-only: the live dict)."""
        return self._raw

    def drain_changes(self) -> list[str] | None:
        """The ids set since the last call, in first-set order; None: treat every id as changed."""
        if self._all_changed:
            self._all_changed, self._changed = False, {}
            return None
        changed, self._changed = list(self._changed), {}
        return changed

    def fragments(self) -> Fragments:
        """The entities as already-serialised JSON (a snapshot without encoding them again)."""
        return Fragments(list(self._raw.values()))


def parsed_cost(value: Any) -> int:
    """What a small parsed JSON value costs in memory, roughly (``PARSED_COST_FACTOR``)."""
    return len(stored_bytes(value)) * PARSED_COST_FACTOR + sys.getsizeof(value)


@dataclass(slots=True)
class ShareMeta:
    """Private metadata of a share. Never serialised into a public response."""

    session_id: str
    created_at: int
    last_updated: int
    sync_count: int = 0
    seq: int = 0
    incarnation: str = "0"
    epoch: int = 0
    # Reference-written blobs carry their secret in clear text; we keep only its SHA-256 so that
    # it stays valid at epoch 0 (it differs from ours only if the namespace changed).
    legacy_secret_sha256: str | None = None
    # Extension fields owned by later features (private shares, expiry...).
    extra: dict[str, Any] = field(default_factory=dict)
    # Durable sync protocol: ``cursor`` counts applied operations; ``op_ledger`` maps recent op
    # ids to the cursor they were applied at (int) or their rejection reason (str), oldest
    # first; ``op_floor_ms`` is the newest UUIDv7 time the ledger has forgotten, so that an op
    # older than the window is refused rather than applied twice; ``idempotency`` maps recent
    # Idempotency-Key digests to the first response.
    cursor: int = 0
    op_ledger: dict[str, int | str] = field(default_factory=dict)
    op_floor_ms: int = 0
    idempotency: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The serialised size of the ``idempotency`` records, kept as they come and go (memory_bytes
    # counts it on every commit; serialising the whole window each time was per-sync waste).
    idempotency_bytes: int = field(default=0, compare=False)
    # Whether ``session`` came from a sync: the placeholder a create writes (stamped "now") must
    # not make the client's real session, with older times, look like a regression.
    session_synced: bool = False
    # The audit trail (shares/audit.py), oldest first, bounded.
    audit: list[dict[str, Any]] = field(default_factory=list)

    def record_audit(self, records: list[Any]) -> None:
        self.audit.extend(r for r in records if isinstance(r, dict))
        del self.audit[: max(0, len(self.audit) - AUDIT_WINDOW)]

    def record_ops(self, outcomes: list[Any]) -> None:
        """Fold ``[[op_id, cursor | reason], ...]`` into the op ledger, evicting the oldest."""
        for op_id, outcome in outcomes:
            self.op_ledger[op_id] = outcome
        while len(self.op_ledger) > OP_LEDGER_WINDOW:
            forgotten = next(iter(self.op_ledger))
            del self.op_ledger[forgotten]
            self.op_floor_ms = max(self.op_floor_ms, uuid7_ms(forgotten))

    def record_idempotency(self, records: dict[str, Any]) -> None:
        for digest, record in records.items():
            old = self.idempotency.get(digest)  # replaced in place: its place in the order kept
            if old is not None:
                self.idempotency_bytes -= len(stored_bytes(old))
            self.idempotency[digest] = record
            self.idempotency_bytes += len(stored_bytes(record))
        while len(self.idempotency) > IDEMPOTENCY_WINDOW:
            self.idempotency_bytes -= len(stored_bytes(self.idempotency.pop(next(iter(self.idempotency)))))


@dataclass(slots=True)
class ShareState:
    """The folded share: what the snapshot plus every journal entry up to ``meta.seq`` give."""

    share_id: str
    meta: ShareMeta
    session: dict[str, Any]
    messages: EntityMap
    parts: EntityMap
    diffs: list[dict[str, Any]]
    models: dict[tuple[str, str], dict[str, Any]]
    # Bookkeeping for cost control: which snapshot this came from and how much sits in the tail.
    snapshot_etag: str | None = None
    snapshot_seq: int = 0
    snapshot_bytes: int = 0
    compacted_at: int | None = None
    # Recent compactions as (seq, compactedAt ms), oldest first, and the seq up to which folded
    # entries were deleted (None: unknown, a snapshot written before these were kept). Written
    # to ``metadata.cloudsession`` as ``compactions`` and ``prunedSeq`` (ShareService.compact).
    compactions: list[tuple[int, int]] = field(default_factory=list)
    pruned_seq: int | None = None
    # time.monotonic() when this process last confirmed with the store that the share exists
    # and that nothing follows ``meta.seq`` (ShareService.load): writers trust it for a while.
    checked_at: float = 0.0
    tail_entries: int = 0
    tail_bytes: int = 0
    approx_bytes: int = 0
    # Updates the fold ignored because they would have moved an item backwards (in this process).
    regressions_ignored: int = 0
    # memory_bytes' estimate of each parsed part, and what it was computed for.
    _parsed_costs: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def new(cls, share_id: str, session_id: str, now: int, *, incarnation: str | None = None) -> ShareState:
        """A fresh share, initialised like the reference's create (§8.3)."""
        session = {
            "id": session_id, "slug": session_id, "projectID": "", "directory": "", "title": "",
            "version": "1", "time": {"created": now, "updated": now},
        }
        meta = ShareMeta(session_id=session_id, created_at=now, last_updated=now, incarnation=incarnation or new_incarnation())
        return cls(share_id, meta, session, EntityMap(), EntityMap(), [], {})

    @classmethod
    def from_snapshot(cls, share_id: str, doc: Any, etag: str | None, size: int) -> ShareState:
        """Read a snapshot written by us or by the reference Worker. Defensive: a reference
        blob may hold nulls or odd types, which are skipped rather than allowed to poison reads."""
        if not isinstance(doc, dict):
            raise ValueError("snapshot is not a JSON object")
        metadata = _dict(doc.get("metadata"))
        ours = _dict(metadata.get("cloudsession"))
        session = _dict(doc.get("session"))
        session_id = metadata.get("sessionID") if isinstance(metadata.get("sessionID"), str) else session.get("id")
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("snapshot has no session ID")
        created = _int(metadata.get("createdAt"), 0)
        meta = ShareMeta(
            session_id=session_id,
            created_at=created,
            last_updated=_int(metadata.get("lastUpdated"), created),
            sync_count=_int(metadata.get("syncCount"), 0),
            seq=_int(ours.get("seq"), 0),
            incarnation=str(ours.get("incarnation", "0")),
            epoch=_int(ours.get("epoch"), 0),
            legacy_secret_sha256=_legacy_secret_hash(metadata, ours),
            extra=dict(ours["extra"]) if isinstance(ours.get("extra"), dict) else {},
            cursor=_int(ours.get("cursor"), 0),
            session_synced=ours.get("sessionSynced") is True,
        )
        ledger = _dict(ours.get("ledger"))
        meta.record_ops([pair for pair in ledger.get("ops") or [] if _is_ledger_pair(pair)])
        meta.op_floor_ms = max(meta.op_floor_ms, _int(ledger.get("floorMs"), 0))
        if isinstance(ours.get("audit"), list):
            meta.record_audit(ours["audit"])
        keys = ledger.get("keys")
        meta.record_idempotency({k: v for k, v in keys.items() if isinstance(v, dict)} if isinstance(keys, dict) else {})
        state = cls(share_id, meta, session, EntityMap(), EntityMap(), [], {})
        for message in _objects_with_id(doc.get("messages")):
            state.messages[message["id"]] = message
        for part in _objects_with_id(doc.get("parts")):
            state.parts[part["id"]] = part
        state.diffs = [d for d in doc.get("diffs") or [] if isinstance(d, dict)] if isinstance(doc.get("diffs"), list) else []
        for model in _objects_with_id(doc.get("models")):
            state.models[model_key(model)] = model
        state.snapshot_etag = etag
        state.snapshot_seq = meta.seq
        state.snapshot_bytes = size
        state.approx_bytes = size
        state.compacted_at = ours.get("compactedAt") if isinstance(ours.get("compactedAt"), int) else None
        state.compactions = _compactions(ours.get("compactions"))
        pruned = ours.get("prunedSeq")
        state.pruned_seq = pruned if isinstance(pruned, int) and not isinstance(pruned, bool) and 0 <= pruned <= meta.seq else None
        return state

    # -- folding ----------------------------------------------------------------------------

    def apply_items(self, items: list[dict[str, Any]]) -> None:
        """Merge validated sync items, in order (later items see earlier ones); an update that
        would move an item backwards is ignored (module docstring)."""
        for item in items:
            kind, data = item["type"], item["data"]
            if kind == "session":
                if self._ignored(kind, self.synced_session, data):
                    continue
                self.session = data
                self.meta.session_synced = True
            elif kind == "message":
                if self._ignored(kind, self.messages.get(data["id"]), data):
                    continue
                self.messages[data["id"]] = data
            elif kind == "part":
                if self._ignored(kind, self.parts.get(data["id"]), data):
                    continue
                self.parts[data["id"]] = data
            elif kind == "session_diff":
                self.diffs = data
            elif kind == "model":
                for model in data:
                    self.models[model_key(model)] = model

    @property
    def synced_session(self) -> dict[str, Any] | None:
        """The session a sync stored, None while it is still the create's placeholder."""
        return self.session if self.meta.session_synced else None

    def _ignored(self, kind: str, stored: dict[str, Any] | None, update: dict[str, Any]) -> bool:
        reason = regression(kind, stored, update)
        if reason is None:
            return False
        self.regressions_ignored += 1
        log.debug("share %s: ignored an update of %s %r that would regress it (%s)", self.share_id, kind, update.get("id"), reason)
        return True

    def apply_entry(self, entry: dict[str, Any], size: int) -> None:
        """Fold one journal entry (its ``seq`` must be the next one)."""
        self.apply_items(entry.get("items") or [])
        self.meta.sync_count += int(entry.get("syncs", 0))
        # Every accepted sync is one applied operation, so it moves the ack cursor too.
        self.meta.cursor += int(entry.get("syncs", 0))
        if entry.get("ops"):
            self.meta.record_ops(entry["ops"])
        if entry.get("idem"):
            self.meta.record_idempotency(entry["idem"])
        if isinstance(entry.get("audit"), list):
            self.meta.record_audit(entry["audit"])
        self.meta.last_updated = max(self.meta.last_updated, int(entry.get("at", 0)))
        meta_update = entry.get("meta") or {}
        if "epoch" in meta_update:
            self.meta.epoch = int(meta_update["epoch"])
        for key, value in (meta_update.get("extra") or {}).items():
            if value is None:
                self.meta.extra.pop(key, None)
            else:
                self.meta.extra[key] = value
        self.meta.seq = int(entry["seq"])
        self.tail_entries += 1
        self.tail_bytes += size
        self.approx_bytes += size

    # -- output -----------------------------------------------------------------------------

    def snapshot_doc(self, compacted_at: int, *, raw: bool = False) -> dict[str, Any]:
        """The snapshot document. Its containers are its own (items are replaced, never changed
        in place, by the fold), so it may be encoded while the state moves on. ``raw``: messages
        and parts as ``orjson.Fragment`` (their stored bytes, for ``stored_bytes``: nothing is
        parsed or encoded again); otherwise parsed."""
        meta = self.meta
        return {
            "session": self.session,
            "messages": self.messages.fragments() if raw else list(self.messages.values()),
            "parts": self.parts.fragments() if raw else list(self.parts.values()),
            "diffs": self.diffs,
            "models": list(self.models.values()),
            "metadata": {
                "createdAt": meta.created_at,
                "lastUpdated": meta.last_updated,
                "syncCount": meta.sync_count,
                "sessionID": meta.session_id,
                "cloudsession": {
                    "v": 1,
                    "seq": meta.seq,
                    "incarnation": meta.incarnation,
                    "epoch": meta.epoch,
                    "compactedAt": compacted_at,
                    "extra": dict(meta.extra),
                    "cursor": meta.cursor,
                    **({"sessionSynced": True} if meta.session_synced else {}),
                    **({"ledger": _ledger_doc(meta)} if meta.op_ledger or meta.idempotency or meta.op_floor_ms else {}),
                    # So a reference-written share keeps its original secret after compaction.
                    **({"legacySecretSha256": meta.legacy_secret_sha256} if meta.legacy_secret_sha256 else {}),
                    **({"audit": list(meta.audit)} if meta.audit else {}),
                    **({"compactions": [list(c) for c in self.compactions]} if self.compactions else {}),
                    **({"prunedSeq": self.pruned_seq} if self.pruned_seq is not None else {}),
                },
            },
        }

    def index_doc(self) -> dict[str, Any]:
        """The reference's ``SessionIndex`` (key order kept), plus a few listing extras."""
        session = self.session
        doc: dict[str, Any] = {"id": self.share_id, "sessionID": self.meta.session_id}
        for key in ("title", "directory"):
            if isinstance(session.get(key), str):
                doc[key] = session[key]
        doc.update(
            messageCount=len(self.messages),
            partCount=len(self.parts),
            diffCount=len(self.diffs),
            modelCount=len(self.models),
            lastUpdated=self.meta.last_updated,
            syncCount=self.meta.sync_count,
            createdAt=self.meta.created_at,
        )
        if self.meta.extra.get("private"):
            doc["private"] = True
        if self.meta.extra.get("expiresAt"):
            doc["expiresAt"] = self.meta.extra["expiresAt"]
        if self.meta.extra.get("labels"):
            doc["labels"] = self.meta.extra["labels"]
        if self.meta.extra.get("final"):
            doc["final"] = True
        return doc

    def snapshot_bytes_now(self, compacted_at: int) -> bytes:
        return stored_bytes(self.snapshot_doc(compacted_at, raw=True))

    def memory_bytes(self) -> int:
        """What this state costs in memory, about: the entities' bytes (counted exactly as they
        change) plus the parsed rest (session, diffs, models, ledgers) at ``PARSED_COST_FACTOR``."""
        meta = self.meta
        small = (len(meta.op_ledger) * 160 + meta.idempotency_bytes * PARSED_COST_FACTOR
                 + len(meta.audit) * 400 + 2048)
        return self.messages.nbytes + self.parts.nbytes + self._parsed_bytes() + small

    def _parsed_bytes(self) -> int:
        # Each part measured again only when it was replaced (a sync usually sends the session,
        # rarely the diffs, which may be large).
        costs = self._parsed_costs
        for name, value in (("session", self.session), ("diffs", self.diffs), ("models", self.models)):
            key = id(value) if name != "models" else len(self.models)
            known = costs.get(name)
            if known is None or known[0] != key:
                costs[name] = (key, parsed_cost(value if name != "models" else list(self.models.values())))
        return sum(cost for _, cost in costs.values())


def regression(kind: str, stored: dict[str, Any] | None, update: dict[str, Any]) -> str | None:
    """Why ``update`` would move ``stored`` backwards, or None when it may be applied. Values of
    unexpected types never count as a regression (the reference stores anything)."""
    if stored is None or stored is update:
        return None
    old_time, new_time = _dict(stored.get("time")), _dict(update.get("time"))
    old_updated, new_updated = _number(old_time.get("updated")), _number(new_time.get("updated"))
    if old_updated is not None and new_updated is not None and new_updated < old_updated:
        return f"time.updated {new_updated} is older than {old_updated}"
    if kind == "message" and _is_number(old_time.get("completed")) and not _is_number(new_time.get("completed")):
        return "it loses time.completed"
    if kind == "part":
        if _is_number(old_time.get("end")) and not _is_number(new_time.get("end")):
            return "it loses time.end"
        old_status, new_status = _status(stored), _status(update)
        if old_status is not None and new_status is not None and STATUS_RANK[new_status] < STATUS_RANK[old_status]:
            return f"tool status {old_status} -> {new_status}"
    return None


def _status(part: dict[str, Any]) -> str | None:
    status = _dict(part.get("state")).get("status")
    return status if isinstance(status, str) and status in STATUS_RANK else None


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _is_number(value: Any) -> bool:
    return _number(value) is not None


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def uuid7_ms(op_id: str) -> int:
    """The millisecond timestamp in a UUIDv7's first 48 bits (0 if it is not one)."""
    digits = op_id.replace("-", "")
    if len(digits) != 32 or digits[12:13] != "7":
        return 0
    try:
        return int(digits[:12], 16)
    except ValueError:
        return 0


def _ledger_doc(meta: ShareMeta) -> dict[str, Any]:
    # Lists of pairs, not objects, so that the eviction order survives the round trip.
    return {"ops": [[k, v] for k, v in meta.op_ledger.items()], "floorMs": meta.op_floor_ms, "keys": dict(meta.idempotency)}


def _is_ledger_pair(pair: Any) -> bool:
    return (
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
        and isinstance(pair[1], (int, str)) and not isinstance(pair[1], bool)
    )


def _compactions(value: Any) -> list[tuple[int, int]]:
    """The ``compactions`` history, skipping malformed pairs (never a reason to refuse a read)."""
    if not isinstance(value, list):
        return []
    return [
        (pair[0], pair[1]) for pair in value
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    ]


def _legacy_secret_hash(metadata: dict[str, Any], ours: dict[str, Any]) -> str | None:
    if isinstance(metadata.get("secret"), str):
        return sha256_hex(metadata["secret"])
    value = ours.get("legacySecretSha256")
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    """``value`` when it is an object, else an empty one: reference blobs may hold nulls."""
    return value if isinstance(value, dict) else {}


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _objects_with_id(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict) and isinstance(v.get("id"), str)]
