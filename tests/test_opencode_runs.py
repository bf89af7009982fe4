"""``opencode run --share`` with the cloudsession-share plugin, end to end and offline: the real
opencode 1.18.33 answered by a fake OpenAI-compatible model (tests/fake_model.py, one server for
the module), sharing to a real ``cloudsession serve``.

- Three runs (one with a bash tool call) put every message and part of opencode's own state
  (``opencode export``) on the share, by the time ``opencode run`` exits. The stock share client
  alone does not (scripts/opencode_run_share.py prints both; docs/opencode-plugin.md).
- The events (and client answers) of those runs match tests/plugin/event-contract.json, the
  shapes the plugin relies on: a new opencode that changes them fails here, naming the change.
- Backfill: a session that had messages before the plugin was installed reaches the share whole.
- The share server down for a whole run: the next opencode command delivers the session.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import event_contract
import pytest
from fake_model import FakeModel
from opencode_cli import Sandbox
from opencode_runs import PROMPTS, Comparison, Run, add_recorder, compare, install_plugin, run, sandbox_for, share_items
from servers import ServerProcess


@pytest.fixture(scope="module")
def fake_model() -> Iterator[FakeModel]:
    model = FakeModel().start()
    try:
        yield model
    finally:
        model.stop()


@pytest.fixture(scope="module")
def share_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("opencode-runs") / "share-data").start()
    try:
        yield proc
    finally:
        proc.stop()


@dataclass
class PluginRuns:
    sandbox: Sandbox
    runs: list[Run]
    items: list[list[dict[str, Any]]]  # each share, read as soon as its `opencode run` exited
    comparisons: list[Comparison]
    events: Path


@pytest.fixture(scope="module")
def plugin_runs(fake_model: FakeModel, share_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> PluginRuns:
    """Three ``opencode run --share`` with the stock share client on (as a user has it) and the plugin
    installed by ``cloudsession opencode install`` (following opencode's own share setting), plus the
    event recorder."""
    root = tmp_path_factory.mktemp("run-share")
    sandbox = sandbox_for(root / "opencode", share_server.url, fake_model.url)
    install_plugin(sandbox, share_server.url)
    add_recorder(sandbox, root / "events.jsonl")
    runs, items = [], []
    for prompt in PROMPTS:
        done = run(sandbox, prompt, "--share")
        runs.append(done)
        items.append(share_items(share_server.url, done.share_id))  # before anything else can deliver
    comparisons = [compare(held, sandbox.export(done.session_id)) for done, held in zip(runs, items, strict=True)]
    return PluginRuns(sandbox, runs, items, comparisons, root / "events.jsonl")


def status(sandbox: Sandbox) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "cloudsession", "opencode", "status", "--json"], env=sandbox.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_three_opencode_run_share_runs_put_every_message_and_part_on_the_share(plugin_runs: PluginRuns) -> None:
    for done, comparison in zip(plugin_runs.runs, plugin_runs.comparisons, strict=True):
        assert done.share_id, done.output[-2000:]
        assert comparison.complete, f"{comparison.line()}: missing {comparison.missing}, different {comparison.differ}, extra {comparison.extra}"
        assert comparison.messages >= 2 and comparison.parts >= 3
    # The first run called a tool: its part reached the share completed, with the command's output.
    tools = [i["data"] for i in plugin_runs.items[0] if i["type"] == "part" and i["data"].get("type") == "tool"]
    assert [(t["tool"], t["state"]["status"], t["state"]["output"].strip()) for t in tools] == [("bash", "completed", "cloudsession-tool-output")]
    # Each share is the one opencode printed (the plugin writes to the stock client's share), and the
    # plugin left nothing undelivered.
    shares = {s["sessionID"]: s for s in status(plugin_runs.sandbox)["shares"]}
    for done in plugin_runs.runs:
        assert (shares[done.session_id]["shareID"], shares[done.session_id]["pending"], shares[done.session_id]["failed"]) == (done.share_id, 0, 0)


def test_the_event_shapes_of_the_pinned_opencode_are_those_the_plugin_relies_on(plugin_runs: PluginRuns) -> None:
    records = event_contract.load_records(plugin_runs.events)
    assert event_contract.problems(records, event_contract.load_contract()) == []


def test_the_contract_check_names_what_changed(plugin_runs: PluginRuns) -> None:
    """The contract test is able to fail: each kind of change to the recorded events is reported,
    naming the event and the field."""
    contract = event_contract.load_contract()
    records = event_contract.load_records(plugin_runs.events)

    def changed(edit: Any) -> list[str]:
        copied = copy.deepcopy(records)
        for record in copied:
            if "event" in record:
                edit(record["event"])
        return event_contract.problems(copied, contract)

    def rename_part_id(event: dict[str, Any]) -> None:
        if event["type"] == "message.part.updated":
            event["properties"]["part"]["partID"] = event["properties"]["part"].pop("id")

    def rename_type(event: dict[str, Any]) -> None:
        if event["type"] == "session.diff":
            event["type"] = "session.diff.updated"

    def number_as_string(event: dict[str, Any]) -> None:
        if event["type"] == "message.updated":
            event["properties"]["info"]["time"]["created"] = str(event["properties"]["info"]["time"]["created"])

    def drop_share_url(event: dict[str, Any]) -> None:
        if event["type"] == "session.updated":
            event["properties"]["info"].pop("share", None)

    def text_only_in_deltas(event: dict[str, Any]) -> None:
        if event["type"] == "message.part.updated" and "text" in event["properties"]["part"]:
            event["properties"]["part"]["text"] = ""

    assert any(p.startswith("message.part.updated: `properties.part.id` is missing") for p in changed(rename_part_id)), changed(rename_part_id)
    found = changed(rename_type)
    assert any(p.startswith("session.diff: no such event") for p in found) and any(p.startswith("session.diff.updated: a new event") for p in found), found
    assert any(p.startswith("message.updated: `properties.info.time.created` is string") for p in changed(number_as_string))
    assert any(p.startswith("session.updated: `properties.info.share.url` (string) is in none") for p in changed(drop_share_url))
    assert any(p.startswith("message.part.delta: part ") for p in changed(text_only_in_deltas))
    without_client = [r for r in records if "client" not in r]
    assert "client: no client answers recorded (the recorder asks at session.idle)" in event_contract.problems(without_client, contract)


def test_a_session_with_messages_from_before_the_plugin_was_installed_reaches_the_share_whole(
    fake_model: FakeModel, share_server: ServerProcess, tmp_path: Path
) -> None:
    """Backfill: the plugin, installed after a session's first run (``share: auto``, the stock share
    client off), sends that run's messages and parts along with the new ones."""
    sandbox = sandbox_for(tmp_path / "opencode", share_server.url, fake_model.url, stock_share=False)
    before = run(sandbox, PROMPTS[0])  # a tool call, without the plugin
    install_plugin(sandbox, share_server.url, "--share", "auto")
    run(sandbox, PROMPTS[1], "--session", before.session_id)
    [share] = [s for s in status(sandbox)["shares"] if s["sessionID"] == before.session_id]
    items = share_items(share_server.url, share["shareID"])
    comparison = compare(items, sandbox.export(before.session_id))
    assert comparison.complete, f"{comparison.line()}: missing {comparison.missing}, different {comparison.differ}, extra {comparison.extra}"
    assert comparison.messages == 5  # the first run's prompt and two answers (around the tool call), then two more


def test_a_run_while_the_share_server_is_down_is_delivered_by_the_next_opencode_command(fake_model: FakeModel, tmp_path: Path) -> None:
    """The share server is down for a whole ``opencode run`` (with a tool call): the plugin keeps the
    session in its outbox, and the next opencode command (``opencode export``, which runs the
    plugin's dispose) delivers all of it once the server is back."""
    server = ServerProcess(tmp_path / "share-data")  # not started yet
    sandbox = sandbox_for(tmp_path / "opencode", server.url, fake_model.url, stock_share=False)
    install_plugin(sandbox, server.url, "--share", "auto")
    done = run(sandbox, PROMPTS[0])
    [share] = [s for s in status(sandbox)["shares"] if s["sessionID"] == done.session_id]
    assert (share["shareID"], share["acked"]) == (None, 0) and share["pending"] >= 7 and share["lastError"], share
    server.start()
    try:
        exported = sandbox.export(done.session_id)  # delivers on its way out
        [share] = [s for s in status(sandbox)["shares"] if s["sessionID"] == done.session_id]
        comparison = compare(share_items(server.url, share["shareID"]), exported)
        assert comparison.complete, f"{comparison.line()}: missing {comparison.missing}, different {comparison.differ}, extra {comparison.extra}"
        assert (comparison.messages, comparison.parts, share["pending"], share["failed"]) == (3, 7, 0, 0)
    finally:
        server.stop()
