"""Merges never move backwards: an update that would regress an item (a tool part from a terminal
status back to pending/running, a message losing ``time.completed``, a part losing ``time.end``,
an older ``time.updated`` over a newer one) is ignored for that item, counted, and logged at
debug, in the fold itself, so every path (REST sync, ops, RPC, replays, compaction, a fresh
process) obeys it and every replica folds the same journal to the same state."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from factories import settings_for_tests
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudsession.client.ids import uuid7
from cloudsession.shares.service import ShareService
from cloudsession.shares.state import STATUS_RANK, ShareState
from cloudsession.store.fs import FilesystemStore
from cloudsession.web.app import create_app

SID = "ses_monotonic0000000000000001"
T = 1_795_236_000_000


def tool_part(status: str, *, pid: str = "prt_tool", output: str = "", at: int = 0) -> dict[str, Any]:
    state: dict[str, Any] = {"status": status, "input": {"command": "ls"}}
    if status != "pending":
        state["time"] = {"start": T + 1000, **({"end": T + 2000 + at} if status in ("completed", "error") else {})}
    if status == "completed":
        state.update(title="ls", output=output or "done", metadata={})
    if status == "error":
        state["error"] = "failed"
    return {"id": pid, "sessionID": SID, "messageID": "msg_a", "type": "tool", "callID": "call_1", "tool": "bash", "state": state}


def message(completed: int | None = None, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "msg_a", "sessionID": SID, "role": "assistant", "time": {"created": T}}
    if completed is not None:
        data["time"]["completed"] = completed
    data.update(over)
    return data


def session(updated: int, title: str) -> dict[str, Any]:
    return {"id": SID, "title": title, "time": {"created": T, "updated": updated}}


def item(kind: str, data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


def fresh() -> ShareState:
    return ShareState.new("onotonic", SID, T)


# -- the rule, item by item ------------------------------------------------------------------


@pytest.mark.parametrize("terminal", ["completed", "error"])
@pytest.mark.parametrize("later", ["pending", "running"])
def test_a_tool_part_never_goes_back_from_a_terminal_status(terminal: str, later: str, caplog: pytest.LogCaptureFixture) -> None:
    state = fresh()
    state.apply_items([item("part", tool_part(terminal))])
    with caplog.at_level(logging.DEBUG, logger="cloudsession.shares.state"):
        state.apply_items([item("part", tool_part(later))])
    assert state.parts["prt_tool"]["state"]["status"] == terminal
    assert state.regressions_ignored == 1
    assert any("prt_tool" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_a_running_tool_part_never_goes_back_to_pending() -> None:
    state = fresh()
    state.apply_items([item("part", tool_part("running")), item("part", tool_part("pending"))])
    assert state.parts["prt_tool"]["state"]["status"] == "running" and state.regressions_ignored == 1


def test_forward_progress_and_same_status_updates_are_applied() -> None:
    state = fresh()
    for status in ("pending", "running", "running", "completed"):
        state.apply_items([item("part", tool_part(status))])
        assert state.parts["prt_tool"]["state"]["status"] == status
    state.apply_items([item("part", tool_part("completed", output="new output"))])  # same rank: applied
    assert state.parts["prt_tool"]["state"]["output"] == "new output"
    assert state.regressions_ignored == 0


def test_a_message_never_loses_its_completion_time() -> None:
    state = fresh()
    state.apply_items([item("message", message(completed=T + 5000, cost=1.5))])
    state.apply_items([item("message", message(cost=0.5))])
    assert state.messages["msg_a"]["time"]["completed"] == T + 5000 and state.messages["msg_a"]["cost"] == 1.5
    state.apply_items([item("message", message(completed=T + 6000, cost=2.0))])
    assert state.messages["msg_a"]["cost"] == 2.0
    assert state.regressions_ignored == 1


def test_a_text_part_never_loses_its_end_time() -> None:
    state = fresh()
    final = {"id": "prt_text", "messageID": "msg_a", "type": "text", "text": "the whole answer", "time": {"start": T, "end": T + 9}}
    partial = {**final, "text": "the wh", "time": {"start": T}}
    state.apply_items([item("part", final), item("part", partial)])
    assert state.parts["prt_text"]["text"] == "the whole answer" and state.regressions_ignored == 1


def test_an_older_time_updated_never_overwrites_a_newer_one() -> None:
    state = fresh()
    state.apply_items([item("session", session(T + 50, "newer"))])
    state.apply_items([item("session", session(T + 10, "older"))])
    assert state.session["title"] == "newer"
    state.apply_items([item("session", session(T + 50, "same time"))])  # not older: applied
    assert state.session["title"] == "same time"
    newer_message = message(completed=T + 9, time={"created": T, "completed": T + 9, "updated": T + 20})
    older_message = message(completed=T + 9, time={"created": T, "completed": T + 9, "updated": T + 15})
    state.apply_items([item("message", newer_message), item("message", older_message)])
    assert state.messages["msg_a"]["time"]["updated"] == T + 20
    part_new = {"id": "prt_x", "messageID": "msg_a", "type": "text", "text": "b", "time": {"start": T, "updated": T + 7}}
    part_old = {**part_new, "text": "a", "time": {"start": T, "updated": T + 3}}
    state.apply_items([item("part", part_new), item("part", part_old)])
    assert state.parts["prt_x"]["text"] == "b"
    assert state.regressions_ignored == 3


def test_odd_values_are_not_regressions() -> None:
    state = fresh()
    odd = [
        {"id": "prt_odd", "type": "tool", "state": "not an object"},
        {"id": "prt_odd", "type": "tool", "state": {"status": 5}},
        {"id": "prt_odd", "type": "tool", "state": {"status": "invented"}},
        {"id": "prt_odd", "type": "tool", "time": {"end": "soon"}},
    ]
    for data in odd:
        state.apply_items([item("part", data)])
        assert state.parts["prt_odd"] == data  # applied (entities are kept as bytes: equal, not the same object)
    assert state.regressions_ignored == 0


# -- hypothesis: any order of updates ends where the furthest one left it ----------------------

STATUSES = list(STATUS_RANK)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STATUSES), st.integers(0, 3)), min_size=1, max_size=12))
def test_folded_status_rank_is_the_highest_seen_and_terminal_states_stick(updates: list[tuple[str, int]]) -> None:
    state = fresh()
    highest = -1
    for status, variant in updates:
        state.apply_items([item("part", tool_part(status, output=f"v{variant}"))])
        highest = max(highest, STATUS_RANK[status])
        stored = state.parts["prt_tool"]["state"]["status"]
        assert STATUS_RANK[stored] == highest
        if highest == STATUS_RANK["completed"]:
            assert stored in ("completed", "error")


@settings(max_examples=200, deadline=None)
@given(st.permutations(["pending", "running", "completed", "running", "pending"]), st.integers(1, 4))
def test_any_batching_of_the_same_journal_folds_to_the_same_state(order: list[str], batch: int) -> None:
    # One item per entry or several per entry: the fold is the same function of the item order.
    items = [item("part", tool_part(s)) for s in order]
    one_by_one, batched = fresh(), fresh()
    for entry in items:
        one_by_one.apply_items([entry])
    for start in range(0, len(items), batch):
        batched.apply_items(items[start : start + batch])
    assert one_by_one.parts == batched.parts and one_by_one.parts["prt_tool"]["state"]["status"] == "completed"


# -- every path: REST sync, ops, a fresh process, compaction, live frames -----------------------


async def test_rest_ops_compaction_and_a_fresh_process_all_keep_the_completed_part(tmp_path: Path) -> None:
    settings_ = settings_for_tests(tmp_path)
    store = FilesystemStore(tmp_path / "store")
    service = ShareService(store, settings_)
    creds = await service.create(SID, origin="http://x")
    await service.sync(creds.id, creds.secret, [item("message", message()), item("part", tool_part("completed"))])
    await service.sync(creds.id, creds.secret, [item("part", tool_part("running"))])  # a late legacy sync
    state = await service.load(creds.id)
    assert state.parts["prt_tool"]["state"]["status"] == "completed"
    assert state.meta.sync_count == 2  # the sync is accepted; only its regressing item is ignored
    fresh_process = ShareService(store, settings_)
    assert (await fresh_process.load(creds.id)).parts["prt_tool"]["state"]["status"] == "completed"
    assert await service.compact(creds.id, force=True)
    compacted = ShareService(store, settings_)
    assert (await compacted.load(creds.id)).parts["prt_tool"]["state"]["status"] == "completed"
    await service.close()


async def test_the_create_placeholder_never_blocks_the_first_session_and_the_rule_survives_compaction(tmp_path: Path) -> None:
    settings_ = settings_for_tests(tmp_path)
    store = FilesystemStore(tmp_path / "store")
    service = ShareService(store, settings_)
    creds = await service.create(SID, origin="http://x")  # a placeholder session stamped "now"
    await service.sync(creds.id, creds.secret, [item("session", session(T + 50, "the real one"))])  # older than now
    assert (await service.load(creds.id)).session["title"] == "the real one"
    assert await service.compact(creds.id, force=True)
    other = ShareService(store, settings_)  # another replica, reading the compacted snapshot
    await other.sync(creds.id, creds.secret, [item("session", session(T + 10, "stale"))])
    assert (await other.load(creds.id)).session["title"] == "the real one"
    assert (await ShareService(store, settings_).load(creds.id)).session["title"] == "the real one"
    await service.close()


async def test_ops_and_the_live_feed_obey_the_rule(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    web = await aiohttp_client(create_app(settings_for_tests(tmp_path / "data")))
    creds = await (await web.post("/api/share", json={"sessionID": SID})).json()
    viewer = await web.ws_connect(f"/ws/{creds['id']}")

    def envelope(n: int, data: dict[str, Any]) -> dict[str, Any]:
        return {"op_id": uuid7(), "batch_id": "b", "seq": n, "item": item("part", data)}

    ops = [envelope(1, tool_part("completed")), envelope(2, tool_part("pending"))]
    response = await web.post(f"/api/share/{creds['id']}/ops", json={"secret": creds["secret"], "ops": ops})
    assert response.status == 200, await response.text()
    assert len((await response.json())["applied"]) == 2  # both ops acknowledged: nothing to retry
    data = await (await web.get(f"/api/share/{creds['id']}/data")).json()
    assert next(i for i in data if i["type"] == "part")["data"]["state"]["status"] == "completed"
    # A reference viewer is told only what was applied.
    await web.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": [item("part", tool_part("running"))]})
    frames = []
    for _ in range(2):
        received = await asyncio.wait_for(viewer.receive(), timeout=5)
        assert received.type == aiohttp.WSMsgType.TEXT
        frames.append(json.loads(received.data))
    statuses = [[i["data"]["state"]["status"] for i in frame if i["type"] == "part"] for frame in frames]
    assert statuses == [["completed"], []]
    await viewer.close()
