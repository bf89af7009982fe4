"""Every store key the share domain reads or writes, built here and nowhere else.

Storage keys (all JSON, under the store's optional prefix):

``share/<id>``
    The snapshot, in the reference Worker's ``AgentSession`` shape (``session``, ``messages``,
    ``parts``, ``diffs``, ``models``, ``metadata``) so that reference-written buckets are read
    as they are. Our own bookkeeping lives in ``metadata.cloudsession`` (``seq`` folded so far,
    ``incarnation``, capability ``epoch`` and the rest). A snapshot without it is a reference
    blob: ``seq`` 0, incarnation ``"0"``, and its ``metadata.secret`` is honoured.
``journal/<id>/<incarnation>/<seq:012d>``
    One accepted change (a sync batch, or a metadata change such as a secret rotation). Written
    with If-None-Match ``*``: the store hands out each ``seq`` exactly once, and a 412 tells the
    writer that somebody else got there first, so it re-reads and tries the next one. The
    incarnation is random per create, so a writer that raced a delete can never leak into a
    later share with the same id.
``index/<id>``
    The listing entry (reference ``SessionIndex`` shape). Derived; it may lag, it is never the
    source of truth.
``listing/<day>/<hour>/<ms>-<id>``
    The share list's order: one small key per share, named after its index entry's
    ``lastUpdated`` *inverted* (``<day>``, ``<hour>`` and ``<ms>`` count down from a fixed
    future instant, zero-padded), so an ascending listing is newest first and a page is one
    listing call from a cursor. Day and hour segments keep each directory of the filesystem
    store small. Written by the index writer just before ``index/<id>``; the previous key of
    the share is deleted just after. A key is *valid* only while ``index/<id>``'s
    ``lastUpdated`` is the key's: readers skip the others (a crash between the two writes
    leaves one, never a duplicate), and the sweep and ``admin fsck`` remove them.
``listing/built``
    Written once every share's listing key exists: by the one-time rebuild from ``index/`` that
    the server runs at startup on a store written before listing keys existed (at once on an
    empty store), or by ``admin backfill-index``. Until then ``admin fsck`` reports the store
    as ``listing-unbuilt``.
``idem/<id>/<digest>``
    The Idempotency-Key record of a DELETE (a share's own ledger goes with the share), kept for
    a day beside the deleted share so that a retried delete answers as the first one did.

``hooks/<event id>``
    One share event waiting for (or recently done with) delivery to the configured webhooks and
    commands (``shares/hookbox.py``): written once (If-None-Match ``*``, so replicas that notice
    the same event record it once), claimed with a lease, kept for a while after delivery so the
    same event is not recorded again.

``docs/storage-layout.md`` documents the same families; a test keeps the two in step.
"""

from __future__ import annotations

import re
import secrets

SNAPSHOT_PREFIX = "share/"
INDEX_PREFIX = "index/"
LISTING_PREFIX = "listing/"
LISTING_BUILT_KEY = "listing/built"
JOURNAL_PREFIX = "journal/"
DELETE_RECORD_PREFIX = "idem/"
HOOK_PREFIX = "hooks/"
# Every key family, for the docs test and the store tools.
KEY_FAMILIES = (SNAPSHOT_PREFIX, INDEX_PREFIX, LISTING_PREFIX, JOURNAL_PREFIX, DELETE_RECORD_PREFIX, HOOK_PREFIX)

SEQ_WIDTH = 12


def snapshot_key(share_id: str) -> str:
    return SNAPSHOT_PREFIX + share_id


def index_key(share_id: str) -> str:
    return INDEX_PREFIX + share_id


# Listing keys count down from this instant (ms since the epoch, in the year 2286): 13 digits.
_LAST_MS = 10**13 - 1
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_LEAF_RE = re.compile(r"([0-9]{13})-(.+)\Z")


def _listing_dir(ms: int) -> str:
    return f"{LISTING_PREFIX}{_LAST_MS // _DAY_MS - ms // _DAY_MS:06d}/{_LAST_MS // _HOUR_MS - ms // _HOUR_MS:07d}/"


def _clamp_ms(last_updated: int) -> int:
    return min(max(int(last_updated), 0), _LAST_MS)


def listing_key(share_id: str, last_updated: int) -> str:
    """The listing key of a share whose index entry says ``lastUpdated`` = ``last_updated``."""
    ms = _clamp_ms(last_updated)
    return f"{_listing_dir(ms)}{_LAST_MS - ms:013d}-{share_id}"


def listing_position(last_updated: int) -> str:
    """A ``start_after`` from which the listing goes on with the shares updated at or before
    ``last_updated`` (newest first)."""
    ms = _clamp_ms(last_updated)
    return f"{_listing_dir(ms)}{_LAST_MS - ms:013d}"


def parse_listing_key(key: str) -> tuple[int, str] | None:
    """(lastUpdated, share id) of a listing key; None for any other key (``listing/built``)."""
    if not key.startswith(LISTING_PREFIX):
        return None
    match = _LEAF_RE.match(key.rsplit("/", 1)[-1])
    if match is None:
        return None
    ms = _LAST_MS - int(match.group(1))
    if key != listing_key(match.group(2), ms):
        return None
    return ms, match.group(2)


def listing_cursor(key: str) -> str:
    """The public form of a listing position (the key's last segment: time and share id)."""
    return key.rsplit("/", 1)[-1]


def listing_cursor_key(cursor: str) -> str | None:
    """The listing key a cursor names, or None when it is not one."""
    match = _LEAF_RE.match(cursor)
    if match is None:
        return None
    return listing_key(match.group(2), _LAST_MS - int(match.group(1)))


def journal_prefix(share_id: str, incarnation: str | None = None) -> str:
    if incarnation is None:
        return f"{JOURNAL_PREFIX}{share_id}/"
    return f"{JOURNAL_PREFIX}{share_id}/{incarnation}/"


def journal_key(share_id: str, incarnation: str, seq: int) -> str:
    return f"{journal_prefix(share_id, incarnation)}{seq:0{SEQ_WIDTH}d}"


def delete_record_key(share_id: str, digest: str) -> str:
    return f"{DELETE_RECORD_PREFIX}{share_id}/{digest}"


def hook_key(event_id: str) -> str:
    return HOOK_PREFIX + event_id


def new_incarnation() -> str:
    return secrets.token_hex(6)
