"""Property tests of the fold, the merge, sync item validation and the Cap'n Web codec, beyond the
ones beside each module (test_journal.py, test_durable_ledger.py, test_rpc_codec.py):

- compaction is invisible: folding a snapshot of any prefix (taken any number of times, through
  its JSON bytes) and then the rest gives exactly the state, ledgers and metadata included, that
  folding every entry gives;
- the merge is idempotent and does not depend on how items are split into syncs;
- whatever JSON a client sends as sync items is either refused with a 400/413 or can be stored
  and read back;
- any wire-shaped RPC expression and any text decode or fail with a ProtocolError, and JSON values
  survive a whole message round trip.

These hold whatever the per-item merge rules are (they are rule-independent on purpose).
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudsession.errors import PayloadTooLarge, ValidationFailed
from cloudsession.jsonio import json_bytes, parse_json
from cloudsession.rpc.codec import ProtocolError, RpcLimits, decode, dumps, encode, parse_message
from cloudsession.shares import state as journal
from cloudsession.shares.items import parse_sync_items
from cloudsession.shares.state import ShareState

LIMITS = RpcLimits()

# -- the fold -------------------------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c", "d", "e"])
# Printable text without surrogates (the strict parser refuses lone ones before they get here).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)
statuses = st.sampled_from(["pending", "running", "completed", "error"])


def _entity(extra: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"id": ids, **extra},
        optional={"v": values, "state": st.fixed_dictionaries({"status": statuses}), "time": st.fixed_dictionaries({"created": st.integers(0, 9)}, optional={"completed": st.integers(0, 9), "updated": st.integers(0, 9)})},
    )


items = st.one_of(
    st.builds(lambda d: {"type": "session", "data": d}, _entity({})),
    st.builds(lambda d: {"type": "message", "data": d}, _entity({"role": st.sampled_from(["user", "assistant"])})),
    st.builds(lambda d: {"type": "part", "data": d}, _entity({"messageID": ids})),
    st.builds(lambda ds: {"type": "session_diff", "data": ds}, st.lists(st.fixed_dictionaries({"file": ids, "v": values}), max_size=3)),
    st.builds(lambda ds: {"type": "model", "data": ds}, st.lists(st.fixed_dictionaries({"id": ids, "providerID": st.sampled_from(["x", "y"]), "v": values}), max_size=3)),
)


def _uuid7(ms: int, rand: int) -> str:
    h = f"{ms:012x}7{rand % 4096:03x}{8 + rand % 4:x}{rand % 4096:03x}{rand:012x}"[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


op_records = st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 2**40), st.one_of(st.integers(1, 99), st.sampled_from(["epoch_mismatch", "cursor_mismatch"]))), max_size=4)
meta_updates = st.fixed_dictionaries(
    {}, optional={"epoch": st.integers(0, 5), "extra": st.dictionaries(st.sampled_from(["private", "expiresAt"]), st.none() | st.just(True) | st.integers(1, 10**13), max_size=2)}
)
entries = st.lists(
    st.fixed_dictionaries(
        {"items": st.lists(items, max_size=5), "syncs": st.integers(0, 2)},
        optional={
            "ops": op_records.map(lambda rs: [[_uuid7(ms, r), outcome] for ms, r, outcome in rs]),
            "idem": st.dictionaries(st.sampled_from(["k1", "k2", "k3"]), st.fixed_dictionaries({"fp": text, "body": st.fixed_dictionaries({"success": st.just(True), "syncCount": st.integers(0, 9)})}), max_size=2),
            "meta": meta_updates,
        },
    ),
    max_size=10,
)


def _fold(start: ShareState, batch: list[dict[str, Any]], first_seq: int) -> ShareState:
    for n, entry in enumerate(batch, start=first_seq):
        start.apply_entry({"seq": n, "at": 1000 + n, **entry}, 10)
    return start


def _compact(state: ShareState) -> ShareState:
    """What a compaction writes and a fresh process reads back: the snapshot through its bytes."""
    doc = parse_json(json_bytes(state.snapshot_doc(compacted_at=state.meta.seq)))
    return ShareState.from_snapshot(state.share_id, doc, "etag", 1)


def _observable(state: ShareState) -> tuple[Any, Any]:
    return json_bytes(state.snapshot_doc(compacted_at=0)), state.index_doc()


def _new() -> ShareState:
    return ShareState.new("share1", "ses_property", 1000, incarnation="inc1")


@settings(max_examples=200, deadline=None)
@given(entries, st.lists(st.integers(0, 10), max_size=3), st.sampled_from([2, 4, 4096]))
def test_compaction_is_invisible_wherever_and_however_often_it_happens(all_entries, cuts, window):
    # A small ledger window makes eviction (and the floor it leaves) cross compactions too.
    with mock.patch.object(journal, "OP_LEDGER_WINDOW", window), mock.patch.object(journal, "IDEMPOTENCY_WINDOW", min(window, 256)):
        straight = _fold(_new(), all_entries, 1)
        compacted, done = _new(), 0
        for cut in sorted(set(cuts)):
            compacted = _compact(_fold(compacted, all_entries[done:cut], done + 1))
            done = max(done, min(cut, len(all_entries)))
        compacted = _fold(compacted, all_entries[done:], done + 1)
        assert _observable(compacted) == _observable(straight)
        assert compacted.meta.op_floor_ms == straight.meta.op_floor_ms


def _entities(state: ShareState) -> Any:
    return json_bytes([state.session, list(state.messages.items()), list(state.parts.items()), state.diffs, [[list(k), v] for k, v in state.models.items()]])


@settings(max_examples=200, deadline=None)
@given(st.lists(items, max_size=8), st.lists(items, max_size=8))
def test_applying_the_same_sync_again_changes_no_entity(before, batch):
    state = _new()
    state.apply_items(before)
    state.apply_items(batch)
    once = _entities(state)
    state.apply_items(batch)  # a retried sync that the server did not recognise as one
    assert _entities(state) == once


@settings(max_examples=200, deadline=None)
@given(st.lists(items, max_size=12), st.lists(st.integers(0, 12), max_size=4))
def test_how_items_are_split_into_syncs_does_not_matter(all_items, cuts):
    whole = _new()
    whole.apply_entry({"seq": 1, "at": 1, "items": all_items, "syncs": 1}, 10)
    split, bounds = _new(), [0, *sorted(set(cuts)), len(all_items)]
    for seq, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False), start=1):
        split.apply_entry({"seq": seq, "at": 1, "items": all_items[lo:hi], "syncs": 0}, 10)
    assert _entities(split) == _entities(whole)


# -- sync item validation --------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | text
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=20)
item_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["session", "message", "part", "session_diff", "model", "other"])},
    optional={"data": any_json | st.dictionaries(st.sampled_from(["id", "messageID", "x"]), any_json, max_size=3) | st.lists(st.dictionaries(st.sampled_from(["id", "providerID"]), any_json), max_size=3)},
)


def _deep(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=300, deadline=None)
@given(st.lists(items | item_like | any_json, max_size=5) | any_json, st.sampled_from([0, 150, 260]))
def test_sync_items_are_refused_cleanly_or_storable(raw, depth):
    if depth and isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and isinstance(item.get("data"), dict):
                item["data"]["x"] = _deep(depth)
                break
    try:
        accepted = parse_sync_items(raw, max_items=4)
    except (ValidationFailed, PayloadTooLarge):
        return
    state = _new()
    state.apply_entry({"seq": 1, "at": 1, "items": accepted, "syncs": 1}, 10)
    # Storable in a journal entry and a snapshot, and readable back.
    assert parse_json(json_bytes({"seq": 1, "items": accepted}))["items"] == accepted
    assert _compact(state).snapshot_doc(0) == state.snapshot_doc(0)


# -- the Cap'n Web codec --------------------------------------------------------------------------

tags = st.sampled_from(["undefined", "inf", "-inf", "nan", "bigint", "date", "bytes", "error", "pipeline", "import", "export", "promise", "remap", "unknown", ""])
wire_args = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text | st.just("-") | st.just("12345678901234567890") | st.just("AQID+g=="),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)
wire_exprs = st.recursive(
    wire_args,
    lambda inner: st.builds(lambda tag, args: [tag, *args], tags, st.lists(inner, max_size=4)) | st.lists(inner, max_size=3).map(lambda xs: [xs]) | st.dictionaries(text, inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(wire_exprs)
def test_any_wire_shaped_expression_decodes_or_is_a_protocol_error(expr):
    try:
        decode(expr, LIMITS)
    except ProtocolError:  # LimitExceeded is one too
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.builds(lambda d, tail: "[" * d + tail + "]" * d, st.integers(0, 400), st.sampled_from(["", "1", '"x"', "{", "]]"])))
def test_any_text_parses_as_a_message_or_is_a_protocol_error(raw):
    try:
        message = parse_message(raw, LIMITS)
    except ProtocolError:
        return
    assert message == json.loads(raw)


safe_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(safe_json)
def test_any_json_value_survives_a_whole_message_round_trip(value):
    message = ["push", ["pipeline", 0, ["sync"], [encode(value, LIMITS)]]]
    parsed = parse_message(dumps(message), LIMITS)
    [argument] = parsed[1][3]
    assert decode(argument, LIMITS).value == value
