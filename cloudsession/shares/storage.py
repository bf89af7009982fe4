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

import secrets

SNAPSHOT_PREFIX = "share/"
INDEX_PREFIX = "index/"
JOURNAL_PREFIX = "journal/"
DELETE_RECORD_PREFIX = "idem/"
HOOK_PREFIX = "hooks/"
# Every key family, for the docs test and the store tools.
KEY_FAMILIES = (SNAPSHOT_PREFIX, INDEX_PREFIX, JOURNAL_PREFIX, DELETE_RECORD_PREFIX, HOOK_PREFIX)

SEQ_WIDTH = 12


def snapshot_key(share_id: str) -> str:
    return SNAPSHOT_PREFIX + share_id


def index_key(share_id: str) -> str:
    return INDEX_PREFIX + share_id


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
