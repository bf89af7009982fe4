"""The durable sync protocol's core: operation envelopes applied at most once, and the ack cursor.

Persistence lives in the protocol and the store, not in the transport. A client persists each
change as an *operation* (an envelope around one sync item, with a client-chosen UUIDv7
``op_id``) before sending it, and re-sends until it sees an acknowledgement. The server applies
every op at most once: each decision is made inside ``ShareService.commit``'s ``build`` against
the folded share, and the journal entry that applies the ops also records their ids in the
share's bounded ledger (``journal.ShareMeta``), so the decision is linearizable across
processes and replicas and survives restarts. The ledger is compacted with the share.

Both doors (REST in ``web/api.py``, Cap'n Web in ``web/rpc.py``) call the functions
here and in ``owner.py``, ``idempotency.py`` and ``sweep.py``; the wire format is documented in ``docs/protocol.md``. Every function raises the domain
errors of ``errors.py``: 403 for a secret that is not the share's current capability, 404 for
an unknown share, 410 for an expired one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cloudsession.errors import (
    InvalidSecret,
    ValidationFailed,
)
from cloudsession.shares.inputs import AppendOpsBody, parse_body
from cloudsession.shares.items import parse_sync_items
from cloudsession.shares.service import ShareService
from cloudsession.shares.state import ShareState, uuid7_ms

log = logging.getLogger(__name__)


# Why an op was rejected (final for that op_id: a retry gets the same answer).
OUTSIDE_WINDOW = "outside_window"
EPOCH_MISMATCH = "epoch_mismatch"
UNKNOWN_DEPENDENCY = "unknown_dependency"
DEPENDENCY_REJECTED = "dependency_rejected"
CURSOR_MISMATCH = "cursor_mismatch"



@dataclass(frozen=True, slots=True)
class Op:
    op_id: str
    depends_on: list[str]
    expected_cursor: int | None
    capability_epoch: int | None
    item: dict[str, Any]


def parse_ops_request(raw: Any, *, max_items: int) -> tuple[str, int | None, list[Op]]:
    """Validate an appendOps request (``{secret, epoch?, ops}``); ValidationFailed otherwise.
    Bad input is refused as a whole before anything is read or written."""
    body: AppendOpsBody = parse_body(AppendOpsBody, raw)
    if len(body.ops) > max_items:
        raise ValidationFailed(f"Too many ops in one request: {len(body.ops)} (limit {max_items})")
    last_seq: dict[str, int] = {}
    ops = []
    for index, envelope in enumerate(body.ops):
        # A batch is sent in sequence order; anything else is a client bug worth hearing about.
        if last_seq.get(envelope.batch_id, -1) >= envelope.seq:
            raise ValidationFailed(f"ops.{index}.seq: sequence numbers must increase within batch {envelope.batch_id!r}")
        last_seq[envelope.batch_id] = envelope.seq
        [item] = parse_sync_items([envelope.item], max_items=1, path=("ops", index, "item"))
        ops.append(Op(envelope.op_id, envelope.dependencies(), envelope.expected_cursor, envelope.capability_epoch, item))
    return body.secret, body.epoch, ops


# -- appendOps --------------------------------------------------------------------------------


@dataclass(slots=True)
class OpsPlan:
    """What appending a batch to a given state does: the answer and the entry to write."""

    cursor: int
    applied: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    records: list[list[Any]] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "applied": self.applied, "duplicates": self.duplicates, "rejected": self.rejected}

    def entry(self) -> dict[str, Any] | None:
        if not self.records:
            return None  # everything was a duplicate: nothing to write
        return {"items": self.items, "syncs": len(self.applied), "ops": self.records}


def plan_ops(state: ShareState, ops: list[Op]) -> OpsPlan:
    """Decide every op against the folded state, in order. Pure: ``commit`` may call it again."""
    meta = state.meta
    plan = OpsPlan(cursor=meta.cursor)
    seen: dict[str, int | str] = {}

    def outcome_of(op_id: str) -> int | str | None:
        return seen[op_id] if op_id in seen else meta.op_ledger.get(op_id)

    for op in ops:
        known = outcome_of(op.op_id)
        if isinstance(known, int):
            plan.duplicates.append({"op_id": op.op_id, "cursor": known})
            continue
        if isinstance(known, str):
            plan.rejected.append({"op_id": op.op_id, "reason": known})
            continue
        reason = _rejection(op, state, plan.cursor, outcome_of)
        if reason is None:
            plan.cursor += 1
            outcome: int | str = plan.cursor
            plan.applied.append({"op_id": op.op_id, "cursor": plan.cursor})
            plan.items.append(op.item)
        else:
            outcome = reason
            plan.rejected.append({"op_id": op.op_id, "reason": reason})
        seen[op.op_id] = outcome
        plan.records.append([op.op_id, outcome])
    return plan


def _rejection(op: Op, state: ShareState, cursor: int, outcome_of: Any) -> str | None:
    if uuid7_ms(op.op_id) <= state.meta.op_floor_ms:
        # The ledger has forgotten ops this old: it cannot tell a retry from a new op.
        return OUTSIDE_WINDOW
    if op.capability_epoch is not None and op.capability_epoch != state.meta.epoch:
        return EPOCH_MISMATCH
    for dependency in op.depends_on:
        known = outcome_of(dependency)
        if known is None:
            return UNKNOWN_DEPENDENCY
        if isinstance(known, str):
            return DEPENDENCY_REJECTED
    if op.expected_cursor is not None and op.expected_cursor != cursor:
        return CURSOR_MISMATCH
    return None


def check_epoch(state: ShareState, epoch: int | None) -> None:
    """A client that names the epoch of its capability must hold the current one."""
    if epoch is not None and epoch != state.meta.epoch:
        raise InvalidSecret()


async def append_ops(service: ShareService, share_id: str, secret: str, epoch: int | None, ops: list[Op]) -> dict[str, Any]:
    """Apply a batch of ops; the answer is ``{cursor, applied, duplicates, rejected}``."""
    decided: list[OpsPlan] = []

    def build(state: ShareState) -> dict[str, Any] | None:
        service.check_secret(state, secret)
        check_epoch(state, epoch)
        decided[:] = [plan_ops(state, ops)]
        return decided[0].entry()

    result = await service.commit(share_id, build)
    plan = decided[0]
    if plan.items:
        await service.notify_sync(result.state, plan.items, result.sync_count)
    return plan.answer()
