"""The hook box and dispatcher in one process, on a real filesystem store: what they write, how
often, and what they clean up (the end-to-end behaviour is in test_hooks.py)."""

from __future__ import annotations

import asyncio

import factories as f
import orjson
import pytest
from factories import settings_for_tests

from cloudsession.config import HookSettings
from cloudsession.hooks.dispatch import command_env
from cloudsession.shares import hookbox, owner
from cloudsession.shares.hookbox import HookBox
from cloudsession.shares.service import open_service
from cloudsession.store.base import iter_keys

SID = "ses_hookbox00000000000000001"


@pytest.fixture
async def box(tmp_path):
    settings = settings_for_tests(tmp_path / "data", hooks={"webhooks": [{"url": "http://127.0.0.1:9/h"}], "synced_interval": 3600})
    async with open_service(settings) as service:
        service.hooks = HookBox(service, settings.hooks, "http://share.test")
        yield service.hooks


async def records(box: HookBox) -> list[dict]:
    await box.flush()
    found = []
    async for key in iter_keys(box.service.store, "hooks/"):
        found.append(orjson.loads((await box.service.store.get(key)).body))
    return found


class CountingPuts:
    """Counts the create-if-absent writes a store receives (wrapping the real store)."""

    def __init__(self, store):
        self.store, self.puts = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    async def put_if_absent(self, key, body):
        self.puts += 1
        return await self.store.put_if_absent(key, body)


async def test_concurrent_creates_of_one_session_record_one_created_event(box):
    service = box.service
    await asyncio.gather(*(owner.create(service, SID, origin="http://share.test") for _ in range(3)))
    assert [r["kind"] for r in await records(box)] == ["share.created"]


async def test_syncs_in_one_window_cost_one_store_write(box):
    service = box.service
    creds = await service.create(SID, origin="http://share.test")
    await box.flush()
    counting = CountingPuts(service.store)
    service.store = counting
    for n in range(20):
        await service.sync(creds.id, creds.secret, [f.item("session", f.session(SID, title=f"t{n}"))])
    await box.flush()
    journal_writes = 20
    assert counting.puts == journal_writes + 1  # one hook record for the whole window
    assert sorted(r["kind"] for r in await records(box)) == ["share.created", "share.synced"]


async def test_delivered_records_are_deleted_after_they_are_kept(box, monkeypatch):
    service = box.service
    await service.create(SID, origin="http://share.test")
    await box.flush()
    [(key, record, etag)] = await box.due()
    record["finished"] = record["at"]
    assert await box.save(key, record, etag) is not None
    assert await box.due() == [] and len(await records(box)) == 1  # kept: no second event
    monkeypatch.setattr(hookbox, "KEEP_DONE_MS", 0)
    await asyncio.sleep(0.01)
    assert await box.due() == [] and await records(box) == []


async def test_the_idle_scan_records_each_quiet_share_once(box):
    service = box.service
    await service.create(SID, origin="http://share.test")
    await service.settle_index()  # the idle scan reads the list, written just after the answer
    await box.flush()
    writes = CountingPuts(service.store)
    service.store = writes
    await box.record_idle(0)
    await box.flush()
    assert writes.puts == 1
    await box.record_idle(0)  # nothing went quiet since
    await box.flush()
    assert writes.puts == 1
    assert sorted(r["kind"] for r in await records(box)) == ["share.created", "share.idle"]


def test_a_nul_in_the_title_never_reaches_a_command_environment():
    env = command_env({"event": "share.synced", "share": {"id": "x", "title": "a\0b", "labels": {"k": "v\0"}}}, "d1")
    assert env["OPENCODE_SESSION_TITLE"] == "ab" and env["CLOUDSESSION_LABEL_K"] == "v"


def test_check_config_shows_webhooks_without_their_path():
    settings = HookSettings(webhooks=[{"url": "https://hooks.slack.com/services/T000/B000/SECRETPART"}])
    shown = settings_for_tests(__import__("pathlib").Path("/tmp/unused"), hooks=settings.model_dump()).redacted()
    assert "SECRETPART" not in str(shown) and shown["hooks"]["webhooks"][0]["url"] == "https://hooks.slack.com/…"
