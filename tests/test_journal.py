"""The fold and the journal: property tests of the merge, compaction and pruning end to end."""

from __future__ import annotations

import asyncio

from factories import settings_for_tests
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cloudsession.jsonio import json_bytes, parse_json
from cloudsession.shares.service import ShareService
from cloudsession.shares.state import ShareState
from cloudsession.shares.storage import journal_prefix
from cloudsession.store.base import iter_keys
from cloudsession.store.fs import FilesystemStore

ids = st.sampled_from(["a", "b", "c", "d"])
entity = st.fixed_dictionaries({"id": ids, "v": st.integers(0, 9)})
item = st.one_of(
    st.builds(lambda d: {"type": "session", "data": d}, entity),
    st.builds(lambda d: {"type": "message", "data": d}, entity),
    st.builds(lambda d: {"type": "part", "data": {**d, "messageID": "a"}}, entity),
    st.builds(lambda ds: {"type": "session_diff", "data": ds}, st.lists(st.fixed_dictionaries({"file": ids}), max_size=3)),
    st.builds(lambda ds: {"type": "model", "data": ds}, st.lists(st.fixed_dictionaries({"id": ids, "providerID": st.sampled_from(["x", "y"])}), max_size=3)),
)
batches = st.lists(st.lists(item, max_size=6), max_size=8)


def reference_merge(all_batches):
    """The merge rules written out plainly, as the oracle."""
    session, messages, parts, diffs, models = None, {}, {}, [], {}
    for batch in all_batches:
        for it in batch:
            d = it["data"]
            if it["type"] == "session":
                session = d
            elif it["type"] == "message":
                messages[d["id"]] = d
            elif it["type"] == "part":
                parts[d["id"]] = d
            elif it["type"] == "session_diff":
                diffs = d
            else:
                for m in d:
                    models[(m["providerID"], m["id"])] = m
    return session, list(messages.values()), list(parts.values()), diffs, list(models.values())


@given(batches, st.integers(0, 8))
@hsettings(max_examples=200, deadline=None)
def test_fold_equals_merge_and_survives_compaction_at_any_point(all_batches, cut):
    state = ShareState.new("share1", "ses_x", 1)
    for n, batch in enumerate(all_batches, start=1):
        state.apply_entry({"seq": n, "at": n, "items": batch, "syncs": 1}, 10)
        if n == cut:  # compact here: snapshot round trip, then keep folding
            doc = parse_json(json_bytes(state.snapshot_doc(compacted_at=n)))
            state = ShareState.from_snapshot("share1", doc, "etag", 1)
    session, messages, parts, diffs, models = reference_merge(all_batches)
    if session is not None:
        assert state.session == session
    assert list(state.messages.values()) == messages
    assert list(state.parts.values()) == parts
    assert state.diffs == diffs
    assert list(state.models.values()) == models
    assert state.meta.sync_count == len(all_batches)


async def test_compaction_and_pruning(tmp_path):
    settings = settings_for_tests(tmp_path, compact_max_entries=5, journal_grace_seconds=1)
    store = FilesystemStore(tmp_path / "store")
    service = ShareService(store, settings)
    creds = await service.create("ses_compaction000000000001", origin="http://x")
    for i in range(12):
        await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": f"msg_{i:02d}", "role": "user"}}])
        await asyncio.sleep(0)
    await service.close()  # waits for background compactions
    snapshot = parse_json((await store.get(f"share/{creds.id}")).body)
    assert snapshot["metadata"]["cloudsession"]["seq"] >= 5
    assert len(snapshot["messages"]) == snapshot["metadata"]["cloudsession"]["seq"]
    # A fresh process (no cache) reads the same state from snapshot + tail.
    fresh = ShareService(store, settings)
    view = await fresh.public_share(creds.id)
    assert [m["id"] for m in view.messages] == [f"msg_{i:02d}" for i in range(12)] and view.sync_count == 12
    state = await fresh.load(creds.id)
    prefix = journal_prefix(creds.id, state.meta.incarnation)
    before = [k async for k in iter_keys(store, prefix)]
    assert len(before) == 12  # folded entries survive until the grace period has passed
    await asyncio.sleep(1.1)
    for i in range(12, 20):
        await fresh.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": f"msg_{i:02d}", "role": "user"}}])
    await fresh.close()
    after = [k async for k in iter_keys(store, prefix)]
    assert len(after) < len(before) + 8  # entries folded by an old-enough compaction were pruned
    final = await ShareService(store, settings).public_share(creds.id)
    assert [m["id"] for m in final.messages] == [f"msg_{i:02d}" for i in range(20)] and final.sync_count == 20


async def test_stale_cache_after_another_process_compacts(tmp_path):
    """Two services on one store: one compacts, the other's cached state must notice and stay correct."""
    settings = settings_for_tests(tmp_path)
    store = FilesystemStore(tmp_path / "store")
    a, b = ShareService(store, settings), ShareService(store, settings)
    creds = await a.create("ses_twoprocesses00000000001", origin="http://x")
    await a.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_1", "role": "user"}}])
    await b.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_2", "role": "user"}}])
    assert await a.compact(creds.id, force=True)
    await b.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_3", "role": "user"}}])
    for service in (a, b):
        view = await service.public_share(creds.id)
        assert [m["id"] for m in view.messages] == ["msg_1", "msg_2", "msg_3"] and view.sync_count == 3


async def test_public_view_of_a_share_deleted_and_recreated_by_another_process(tmp_path):
    """Process A cached the public view; B deletes the share and creates it again with other
    content at the same seq and syncCount. A must show the new share, not its cached view."""
    settings = settings_for_tests(tmp_path)
    store = FilesystemStore(tmp_path / "store")
    a, b = ShareService(store, settings), ShareService(store, settings)
    session = "ses_recreated0000000000001"
    creds = await a.create(session, origin="http://x", initial_items=[{"type": "message", "data": {"id": "msg_old", "role": "user"}}])
    assert [m["id"] for m in (await a.public_share(creds.id)).messages] == ["msg_old"]
    await b.delete(creds.id, creds.secret)
    again = await b.create(session, origin="http://x", initial_items=[{"type": "message", "data": {"id": "msg_new", "role": "user"}}])
    assert again.id == creds.id
    view = await a.public_share(creds.id)
    assert [m["id"] for m in view.messages] == ["msg_new"] and view.sync_count == 1


async def test_a_damaged_journal_entry_is_skipped_not_a_500(tmp_path):
    settings = settings_for_tests(tmp_path)
    store = FilesystemStore(tmp_path / "store")
    service = ShareService(store, settings)
    creds = await service.create("ses_damagedjournal000000001", origin="http://x")
    await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_1", "role": "user"}}])
    state = await service.load(creds.id)
    await store.put(f"{journal_prefix(creds.id, state.meta.incarnation)}{state.meta.seq + 1:012d}", b"\x00not json")
    view = await ShareService(store, settings).public_share(creds.id)
    assert [m["id"] for m in view.messages] == ["msg_1"]
