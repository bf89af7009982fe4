"""Property tests of the op ledger (durable.plan_ops folded through journal.ShareState): however
batches are split, repeated and interleaved, every op is decided once, an applied op is never
applied again, a retry gets the acknowledgement the first delivery got, and the cursor counts
exactly the applied ops, including when the window forgets old ops."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudsession.client.ids import uuid7
from cloudsession.shares import state as journal
from cloudsession.shares.ops import Op, plan_ops
from cloudsession.shares.state import ShareState


def make_ops(shape: list[tuple[int | None, bool]]) -> list[Op]:
    """Ops whose dependency (if any) points at an earlier op, some never-sent op ids mixed in."""
    ids = [uuid7() for _ in shape]
    ops = []
    for n, (dep, phantom) in enumerate(shape):
        depends_on = [uuid7()] if phantom else ([ids[dep % n]] if dep is not None and n else [])
        ops.append(Op(ids[n], depends_on, None, None, {"type": "message", "data": {"id": f"m{n}", "role": "user"}}))
    return ops


# (index of an earlier op to depend on, or None; whether to depend on an op never sent instead)
shapes = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 50)), st.sampled_from([False, False, False, True])), min_size=1, max_size=25)
deliveries = st.lists(st.tuples(st.integers(0, 24), st.integers(1, 6), st.integers(1, 3)), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(shape=shapes, plan=deliveries, window=st.sampled_from([4, 8, 4096]))
def test_any_delivery_order_applies_each_op_at_most_once(shape, plan, window):
    ops = make_ops(shape)
    state = ShareState.new("s1", "ses_property", 0)
    first_outcome: dict[str, int | str] = {}
    applied_total = 0
    seq = 0
    with mock.patch.object(journal, "OP_LEDGER_WINDOW", window):
        for start, length, repeats in plan:
            batch = ops[start % len(ops) :][:length]
            for _ in range(repeats):
                decided = plan_ops(state, batch)
                answer = decided.answer()
                for ack in answer["applied"]:
                    assert ack["op_id"] not in first_outcome  # never applied twice
                    first_outcome[ack["op_id"]] = ack["cursor"]
                for ack in answer["duplicates"]:
                    assert first_outcome[ack["op_id"]] == ack["cursor"]  # the first acknowledgement
                for rejection in answer["rejected"]:
                    known = first_outcome.setdefault(rejection["op_id"], rejection["reason"])
                    # A rejection is final, except that a forgotten op is refused as outside_window.
                    assert known == rejection["reason"] or rejection["reason"] == "outside_window"
                    assert rejection["reason"] != "outside_window" or window < len(ops)
                applied_total += len(answer["applied"])
                entry = decided.entry()
                if entry is not None:
                    seq += 1
                    state.apply_entry({"seq": seq, "at": seq, **entry}, 0)
                assert state.meta.cursor == applied_total == answer["cursor"]
                assert len(state.messages) == applied_total
                assert len(state.meta.op_ledger) <= window
    # Round trip through the snapshot keeps the ledger, its order and the cursor.
    doc = state.snapshot_doc(0)
    again = ShareState.from_snapshot("s1", doc, None, 0)
    assert list(again.meta.op_ledger.items()) == list(state.meta.op_ledger.items())
    assert again.meta.cursor == state.meta.cursor and again.meta.op_floor_ms == state.meta.op_floor_ms
