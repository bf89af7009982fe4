"""The operator's store tools: ``cloudsession admin backfill-index | fsck | migrate | delete``.

Stores are real (the filesystem store on disk, S3 on a moto server) and are seeded with blobs in
the reference Worker's exact shape (compat-contract.md §8), damaged ones included. The commands
run through ``cli.main`` like an operator runs them; the store is then inspected directly and
through the share service, which is what a server would serve.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import factories as f
import orjson
import pytest
from factories import settings_for_tests
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cloudsession import cli
from cloudsession.client.importer import to_export
from cloudsession.config import Settings
from cloudsession.credentials import derive_secret
from cloudsession.errors import InvalidSecret, SessionNotFound
from cloudsession.shares.maintenance import diagnose
from cloudsession.shares.service import ShareService
from cloudsession.shares.state import ShareState
from cloudsession.shares.storage import journal_key
from cloudsession.store.base import ObjectStore, iter_keys
from cloudsession.store.fs import FilesystemStore
from cloudsession.store.s3 import S3Store

NOW = 1_795_236_034_225
# Ids of the damaged blobs seeded by ``seed_damaged`` and what fsck must call them.
UNREPAIRABLE = {"empty001": "empty", "badjson1": "invalid-json", "array001": "not-an-object", "nosessid": "no-session-id"}
REPAIRABLE = ("nometa01", "nullsess", "badarray", "notime01")


def session_id_for(share_id: str) -> str:
    return f"ses_{'0' * 18}{share_id}"


def reference_blob(share_id: str, *, secret: str | None = None, title: str = "A session", messages: int = 1) -> dict[str, Any]:
    """``share/<id>`` exactly as the reference Worker stores it after a few syncs."""
    sid = session_id_for(share_id)
    msgs = [f.user_message(sid, id=f"msg_{share_id}{n:03d}") for n in range(messages)]
    return {
        "session": f.session(sid, title=title),
        "messages": msgs,
        "parts": [f.text_part(sid, m["id"], f"text of {m['id']}", id=f"prt_{m['id'][4:]}") for m in msgs],
        "diffs": [],
        "models": [f.model()],
        "metadata": {"createdAt": NOW, "lastUpdated": NOW + 5, "syncCount": 2, "secret": secret or f"random-{share_id}", "sessionID": sid},
    }


def reference_index(share_id: str, blob: dict[str, Any]) -> dict[str, Any]:
    session = blob["session"]
    return {
        "id": share_id, "sessionID": session["id"], "title": session["title"], "directory": session["directory"],
        "messageCount": len(blob["messages"]), "partCount": len(blob["parts"]), "diffCount": 0, "modelCount": len(blob["models"]),
        "lastUpdated": blob["metadata"]["lastUpdated"], "syncCount": blob["metadata"]["syncCount"], "createdAt": blob["metadata"]["createdAt"],
    }


async def put_json(store: ObjectStore, key: str, value: Any) -> None:
    await store.put(key, orjson.dumps(value))


async def seed_reference(store: ObjectStore, count: int, *, with_index: bool = True, concurrency: int = 16) -> list[str]:
    ids = [f"r{n:07d}" for n in range(count)]
    semaphore = asyncio.Semaphore(concurrency)

    async def one(share_id: str) -> None:
        blob = reference_blob(share_id)
        async with semaphore:
            await put_json(store, f"share/{share_id}", blob)
            if with_index:
                await put_json(store, f"index/{share_id}", reference_index(share_id, blob))

    await asyncio.gather(*(one(i) for i in ids))
    return ids


async def seed_damaged(store: ObjectStore) -> None:
    """Blobs the reference's scripts trip over, one of each kind."""
    await store.put("share/empty001", b"")
    await store.put("share/badjson1", b'{"session": {"id": "ses_x", ')
    await store.put("share/array001", b"[1, 2, 3]")
    await put_json(store, "share/nosessid", {"session": {"title": "no id"}, "messages": [], "metadata": {"createdAt": 1}})
    # metadata missing: the reference's fix-malformed crashes on exactly this one
    blob = reference_blob("nometa01")
    del blob["metadata"]
    await put_json(store, "share/nometa01", blob)
    blob = reference_blob("nullsess")
    blob["session"] = None
    await put_json(store, "share/nullsess", blob)
    await put_json(store, "index/nullsess", reference_index("nullsess", reference_blob("nullsess")))
    blob = reference_blob("badarray")
    blob["parts"] = [None, "x", *blob["parts"]]
    blob["diffs"], blob["models"] = "not a list", None
    await put_json(store, "share/badarray", blob)
    blob = reference_blob("notime01")
    for key in ("time", "slug", "version"):
        del blob["session"][key]
    await put_json(store, "share/notime01", blob)


async def snapshot_all(store: ObjectStore) -> dict[str, bytes]:
    out = {}
    async for key in iter_keys(store, ""):
        obj = await store.get(key)
        assert obj is not None
        out[key] = obj.body
    return out


async def admin(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["admin", *argv])


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    settings = settings_for_tests(tmp_path / "cli-data")
    monkeypatch.setenv("SESSIONS_SHARED_SECRET", f.NAMESPACE)
    monkeypatch.delenv("CLOUDSESSION_STORE", raising=False)
    return settings


class Located:
    """A store plus the ``--store`` URL that names it for the CLI."""

    def __init__(self, store: ObjectStore, url: str) -> None:
        self.store, self.url = store, url


@pytest.fixture(params=["fs", "s3"])
async def located(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Located]:
    if request.param == "fs":
        store: ObjectStore = FilesystemStore(tmp_path / "store")
        url = str(tmp_path / "store")
    else:
        endpoint, bucket = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("s3_bucket")
        store = await S3Store.open(bucket=bucket, endpoint_url=endpoint, region="us-east-1")
        url = f"s3://{bucket}?endpoint={endpoint}&region=us-east-1"
    try:
        yield Located(store, url)
    finally:
        await store.close()


def service_on(store: ObjectStore, settings: Settings) -> ShareService:
    return ShareService(store, settings)


def summary_line(out: str, title: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(title + ":") or line.startswith(title + " ("))


# -- fsck ---------------------------------------------------------------------------------------


async def test_fsck_finds_repairs_and_reports(located: Located, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    store = located.store
    await seed_reference(store, 3)
    await seed_damaged(store)
    service = service_on(store, cli_env)
    # index drift and orphans on shares written by cloudsession itself
    creds = await service.create("ses_cloudsession0000drift1", origin="http://x")
    await service.sync(creds.id, creds.secret, [f.item("session", f.session("ses_cloudsession0000drift1", title="Fresh"))])
    await service.settle_index()  # written after the sync answered
    await store.delete(f"index/{creds.id}")
    await put_json(store, "index/r0000001", {"id": "r0000001", "title": "stale"})
    await put_json(store, "index/ghost001", {"id": "ghost001"})
    await store.put(f"journal/{creds.id}/deadbeef0000/000000000001", b"{}")
    await store.put("journal/ghost002/abc/000000000001", b"{}")
    before = await snapshot_all(store)

    assert await admin("fsck", "--store", located.url) == 1
    out = capsys.readouterr().out
    assert await snapshot_all(store) == before  # checking changes nothing
    for share_id, kind in UNREPAIRABLE.items():
        assert f"{share_id}: {kind}: " in out
    for share_id in REPAIRABLE:
        assert f"{share_id}: malformed: " in out
    assert "nometa01: malformed: metadata is missing" in out
    assert f"{creds.id}: index-missing" in out and "r0000001: index-stale" in out
    assert f"{creds.id}: orphan-journal: 1 journal entries" in out
    assert "ghost001: orphan" in out and "ghost002: orphan" in out
    assert "r0000000" not in out and "r0000002" not in out  # healthy shares are not listed
    assert "--repair fixes" in out

    assert await admin("fsck", "--store", located.url, "--repair", "--dry-run") == 1
    assert "would repair" in capsys.readouterr().out
    assert await snapshot_all(store) == before

    assert await admin("fsck", "--store", located.url, "--repair") == 1  # the unrepairable remain
    out = capsys.readouterr().out
    assert "nometa01: malformed: metadata is missing; " in out and "[repaired]" in out
    assert "4 problem(s) left" in out

    assert await admin("fsck", "--store", located.url) == 1
    out = capsys.readouterr().out
    assert sorted(line.split(":")[0] for line in out.splitlines() if ": " in line and not line.startswith("fsck")) == sorted(UNREPAIRABLE)

    # The repaired shares are served and importable; present values survived the repair.
    fresh = service_on(store, cli_env)
    for share_id in REPAIRABLE:
        view = await fresh.public_share(share_id)
        doc = to_export(view.data_items()).document
        assert doc["messages"][0]["parts"][0]["text"].startswith("text of msg_")
        assert {"slug", "title", "version", "time"} <= set(doc["info"])
    assert (await fresh.public_share("notime01")).session["title"] == "A session"
    assert (await fresh.public_share("badarray")).parts and (await fresh.public_share("badarray")).diffs == []
    nullsess = await fresh.load("nullsess")
    assert nullsess.meta.created_at == NOW  # taken from the index entry, not invented
    # The reference secret of a repaired share still works; the invented ones were never there.
    await fresh.sync("nullsess", "random-nullsess", [f.item("session", f.session(session_id_for("nullsess")))])
    await fresh.settle_index()  # written after the sync answered

    assert await admin("fsck", "--store", located.url, "--delete-unrepairable") == 0
    assert "[deleted]" in capsys.readouterr().out
    assert await admin("fsck", "--store", located.url) == 0
    assert "malformed" not in capsys.readouterr().out
    for share_id in UNREPAIRABLE:
        assert await store.get(f"share/{share_id}") is None


@hsettings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                st.sampled_from(["session", "messages", "parts", "diffs", "models", "metadata", "id", "sessionID", "time",
                                 "createdAt", "messageID", "title", "slug", "secret", "cloudsession"]), inner, max_size=6),
            max_leaves=30,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_diagnose_never_crashes_and_its_repairs_are_readable(body: bytes) -> None:
    """Whatever a blob holds, fsck classifies it, and a repaired blob is a readable share."""
    diagnosis = diagnose(body, "anyid001", now=NOW)
    assert diagnosis.kind in ("ok", "malformed", *UNREPAIRABLE.values())
    if diagnosis.fixed is not None:
        state = ShareState.from_snapshot("anyid001", diagnosis.fixed, None, len(body))
        assert diagnose(orjson.dumps(diagnosis.fixed), "anyid001").kind == "ok"
        assert isinstance(state.session.get("slug"), str) and isinstance(state.session["time"]["created"], int)


# -- backfill-index -----------------------------------------------------------------------------


async def test_backfill_index(located: Located, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    store = located.store
    ids = await seed_reference(store, 6, with_index=False)
    await put_json(store, f"index/{ids[0]}", {"id": ids[0], "messageCount": 99})
    await store.put(f"index/{ids[1]}", b"not json")
    await store.put("share/badjson1", b"{")
    before = await snapshot_all(store)

    assert await admin("backfill-index", "--store", located.url, "--dry-run") == 1  # the bad blob
    out = capsys.readouterr().out
    assert "backfill-index (dry run: nothing was changed): missing 4, stale 2, unreadable 1" in out
    assert "badjson1: unreadable" in out
    assert await snapshot_all(store) == before

    assert await admin("backfill-index", "--store", located.url, "--progress") == 1
    captured = capsys.readouterr()
    assert "backfill-index: missing 4, stale 2, unreadable 1" in captured.out
    assert f"[{'#' * 30}] 7/7" in captured.err
    service = service_on(store, cli_env)
    for share_id in ids:
        index = json.loads((await store.get(f"index/{share_id}")).body)
        assert index == (await service.load(share_id)).index_doc()
        assert index["messageCount"] == 1 and index["title"] == "A session"

    await store.delete("share/badjson1")
    assert await admin("backfill-index", "--store", located.url) == 0
    assert "backfill-index: ok 6" in capsys.readouterr().out


async def test_backfill_and_fsck_follow_pagination(tmp_path: Path, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """More than one listing page (1,000 keys) of shares, none of them indexed."""
    store = FilesystemStore(tmp_path / "big")
    ids = await seed_reference(store, 1_203, with_index=False)
    url = str(tmp_path / "big")
    assert await admin("fsck", "--store", url) == 1
    assert "index-missing 1203" in capsys.readouterr().out
    assert await admin("backfill-index", "--store", url) == 0
    assert "backfill-index: missing 1203" in capsys.readouterr().out
    assert await admin("fsck", "--store", url) == 0
    assert "fsck: shares 1203" in capsys.readouterr().out
    assert len([k async for k in iter_keys(store, "index/")]) == len(ids)
    await store.close()


# -- migrate ------------------------------------------------------------------------------------


async def test_migrate_a_reference_bucket(moto_endpoint: str, s3_bucket: str, tmp_path: Path, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A reference Worker's R2 bucket (S3 API, more than a page of shares, damaged blobs) into
    the configured filesystem store, twice: the second run changes nothing."""
    source = await S3Store.open(bucket=s3_bucket, endpoint_url=moto_endpoint, region="us-east-1")
    try:
        await seed_reference(source, 1_010, with_index=False)
        await seed_damaged(source)
        # A share whose secret is the reference's uuid5, and one with a random secret.
        uuid5_secret = derive_secret(uuid.UUID(f.NAMESPACE), session_id_for("uuid5sec"))
        await put_json(source, "share/uuid5sec", reference_blob("uuid5sec", secret=uuid5_secret))
        source_keys = [k async for k in iter_keys(source, "")]
        damaged_before = {k: (await source.get(k)).body for k in source_keys if not k.startswith("share/r")}
        from_url = f"s3://{s3_bucket}?endpoint={moto_endpoint}&region=us-east-1"
        data_dir = str(cli_env.data_dir)

        assert await admin("migrate", "--from", from_url, "--data-dir", data_dir) == 1
        out = capsys.readouterr().out
        assert "migrate: copied 1011, copied (repaired) 4, failed 4" in out
        for share_id, kind in UNREPAIRABLE.items():
            assert f"{share_id}: failed: {kind}" in out
        # The source is only read (its damaged blobs are repaired in the copy, not in place).
        assert [k async for k in iter_keys(source, "")] == source_keys
        assert {k: (await source.get(k)).body for k in damaged_before} == damaged_before

        target = FilesystemStore(cli_env.store_path)
        service = service_on(target, cli_env)
        stored = (await target.get("share/r0000007")).body
        assert b"random-r0000007" not in stored  # no secret in clear text any more
        view = await service.public_share("r0000007")
        assert to_export(view.data_items()).document["messages"][0]["parts"][0]["text"] == "text of msg_r0000007000"
        assert json.loads((await target.get("index/r0000007")).body)["messageCount"] == 1
        # Existing share ids and secrets keep working: the random one and the uuid5 one.
        assert await service.sync("r0000007", "random-r0000007", [f.item("session", f.session(session_id_for("r0000007"), title="New"))]) == 3
        assert await service.sync("uuid5sec", uuid5_secret, []) == 3
        with pytest.raises(InvalidSecret):
            await service.sync("r0000008", "random-r0000007", [])

        assert await admin("migrate", "--from", from_url, "--data-dir", data_dir) == 1
        assert "migrate: failed 4, unchanged 1011, unchanged (repaired) 4" in capsys.readouterr().out
        assert json.loads((await target.get("index/r0000007")).body)["title"] == "New"  # the target's own sync
        await target.close()
    finally:
        await source.close()


async def test_migrate_again_after_both_sides_moved_on(tmp_path: Path, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """The reference was still live during the move: a share changed only at the source is
    updated; one synced on cloudsession since the copy keeps cloudsession's version."""
    source = FilesystemStore(tmp_path / "reference")
    await seed_reference(source, 3)
    from_url, data_dir = str(tmp_path / "reference"), str(cli_env.data_dir)
    assert await admin("migrate", "--from", from_url, "--data-dir", data_dir) == 0
    capsys.readouterr()
    service = service_on(FilesystemStore(cli_env.store_path), cli_env)
    await service.sync("r0000000", "random-r0000000", [f.item("session", f.session(session_id_for("r0000000"), title="Synced"))])
    await service.compact("r0000000", force=True)  # the journal folded: only seq tells the sync apart
    for share_id in ("r0000000", "r0000001"):
        await put_json(source, f"share/{share_id}", reference_blob(share_id, title="Renamed at the source"))

    assert await admin("migrate", "--from", from_url, "--data-dir", data_dir, "--dry-run") == 0
    assert "migrate (dry run: nothing was changed): kept 1, unchanged 1, updated 1" in capsys.readouterr().out
    assert await admin("migrate", "--from", from_url, "--data-dir", data_dir) == 0
    assert "migrate: kept 1, unchanged 1, updated 1" in capsys.readouterr().out
    fresh = service_on(FilesystemStore(cli_env.store_path), cli_env)
    assert (await fresh.public_share("r0000000")).session["title"] == "Synced"
    assert (await fresh.public_share("r0000001")).session["title"] == "Renamed at the source"
    assert json.loads((await fresh.store.get("index/r0000001")).body)["title"] == "Renamed at the source"
    await source.close()


async def test_migrate_resumes_after_an_interruption(tmp_path: Path, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Cut short after some shares (a share copied, its index not yet written; a share never
    reached): the next run completes exactly what is missing."""
    source = FilesystemStore(tmp_path / "reference")
    ids = await seed_reference(source, 5)
    from_url, data_dir = str(tmp_path / "reference"), str(cli_env.data_dir)
    assert await admin("migrate", "--from", from_url, "--data-dir", data_dir) == 0
    capsys.readouterr()
    target = FilesystemStore(cli_env.store_path)
    await target.delete(f"index/{ids[0]}")
    await target.delete(f"share/{ids[1]}")
    await target.delete(f"index/{ids[1]}")
    assert await admin("migrate", "--from", from_url, "--data-dir", data_dir) == 0
    assert "migrate: copied 1, unchanged 4" in capsys.readouterr().out
    assert len([k async for k in iter_keys(target, "index/")]) == 5
    await source.close()
    await target.close()


async def test_migrate_between_cloudsession_stores_folds_the_journal(located: Located, tmp_path: Path, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """fs or S3 into another store: un-compacted journal entries travel inside the snapshot, and
    privacy and the capability epoch come along."""
    service = service_on(located.store, cli_env)
    sid = "ses_cloudsessionmigrate0001"
    creds = await service.create(sid, origin="http://x")
    await service.sync(creds.id, creds.secret, [f.item("session", f.session(sid)), f.item("message", f.user_message(sid, id="msg_1"))])
    await service.sync(creds.id, creds.secret, [f.item("part", f.text_part(sid, "msg_1", "journalled", id="prt_1"))])
    await service.commit(creds.id, lambda s: {"meta": {"extra": {"private": True}}})
    assert await admin("migrate", "--from", located.url, "--to", str(tmp_path / "copy")) == 0
    assert "migrate: copied 1" in capsys.readouterr().out
    copy = service_on(FilesystemStore(tmp_path / "copy"), cli_env)
    state = await copy.load(creds.id)
    assert state.parts["prt_1"]["text"] == "journalled" and state.meta.sync_count == 2
    with pytest.raises(SessionNotFound):
        await copy.public_share(creds.id)  # still private
    assert await copy.sync(creds.id, creds.secret, []) == 3


async def test_store_problems_are_one_line_messages(moto_endpoint: str, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await admin("migrate", "--from", "gs://bucket", "--to", "/tmp/x") == 2
    assert "unsupported scheme 'gs'" in capsys.readouterr().err
    assert await admin("fsck", "--store", "s3://bucket?endpont=http://x") == 2
    assert "unknown parameter(s) endpont" in capsys.readouterr().err
    assert await admin("fsck", "--store", f"s3://no-such-bucket-here?endpoint={moto_endpoint}&region=us-east-1") == 1
    assert capsys.readouterr().err.startswith("cloudsession: the store failed: ")


# -- delete -------------------------------------------------------------------------------------


async def test_delete_is_the_kill_switch(located: Located, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    store = located.store
    service = service_on(store, cli_env)
    sid = "ses_cloudsessiondelete00001"
    creds = await service.create(sid, origin="http://x")
    await service.sync(creds.id, creds.secret, [f.item("session", f.session(sid))])
    await service.settle_index()  # written after the sync answered
    await seed_reference(store, 2)
    await store.put("share/badjson1", b"{")
    await put_json(store, "index/leftover", {"id": "leftover"})
    before = await snapshot_all(store)

    argv = ["delete", "--store", located.url, creds.id, "r0000000", "badjson1", "leftover", "nosuchid"]
    assert await admin(*argv, "--dry-run") == 1
    out = capsys.readouterr().out
    assert f"{creds.id}: would delete" in out and "nosuchid: not found" in out
    assert "delete (dry run: nothing was changed): 4 of 5 found" in out
    assert await snapshot_all(store) == before

    assert await admin(*argv) == 1  # one id was not found
    out = capsys.readouterr().out
    assert f"{creds.id}: deleted" in out and "badjson1: deleted" in out and "leftover: leftovers removed" in out
    remaining = sorted(await snapshot_all(store))
    assert remaining == ["index/r0000001", "share/r0000001"]
    with pytest.raises(SessionNotFound):
        await service_on(store, cli_env).public_share(creds.id)


async def test_fsck_repairs_a_damaged_journal_entry(located: Located, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A journal entry that cannot be read hides every later entry and blocks new writes;
    --repair replaces it with an empty entry and the later ones are served again."""
    store = located.store
    service = service_on(store, cli_env)
    creds = await service.create("ses_fsckjournal0000000000001", origin="http://x")
    await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_1", "role": "user"}}])
    await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_2", "role": "user"}}])
    await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": "msg_3", "role": "user"}}])
    await service.settle_index()  # written after the syncs answered
    state = await service.load(creds.id)
    damaged = journal_key(creds.id, state.meta.incarnation, state.meta.seq - 1)
    await store.put(damaged, b"\\x00 torn write")
    fresh = service_on(store, cli_env)
    assert [m["id"] for m in (await fresh.public_share(creds.id)).messages] == ["msg_1"]

    assert await admin("fsck", "--store", located.url) == 1
    assert "damaged-journal" in capsys.readouterr().out
    assert await admin("fsck", "--store", located.url, "--repair") == 0
    assert "damaged-journal" in capsys.readouterr().out
    repaired = service_on(store, cli_env)
    assert [m["id"] for m in (await repaired.public_share(creds.id)).messages] == ["msg_1", "msg_3"]
    assert await repaired.sync(creds.id, creds.secret, []) == 4  # writable again
    await repaired.settle_index()
    assert await admin("fsck", "--store", located.url) == 0


# -- gc -----------------------------------------------------------------------------------------


async def gc(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["gc", *argv])


async def test_gc_dry_run_store_progress_and_summary(located: Located, cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """``gc`` is a store tool like the others: ``--store``, ``--dry-run`` (nothing changes, byte
    for byte), a progress bar with a rate, and a summary; then the real run deletes the same."""
    from cloudsession.shares.owner import set_expiry

    store = located.store
    service = service_on(store, cli_env)
    doomed = await service.create("ses_gcexpired0000000000expired", origin="http://x")
    await service.sync(doomed.id, doomed.secret, [{"type": "message", "data": {"id": "msg_1", "role": "user"}}])
    await set_expiry(service, doomed.id, doomed.secret, 1, None)
    kept = await service.create("ses_gckept000000000000000kept1", origin="http://x")
    await put_json(store, "index/stale001", {"id": "stale001", "sessionID": "ses_x", "expiresAt": 1})  # its share is gone
    await asyncio.sleep(1.1)
    before = await snapshot_all(store)

    assert await gc("--store", located.url, "--dry-run", "--progress") == 0
    captured = capsys.readouterr()
    assert f"{doomed.id}: expired, would delete" in captured.out
    assert "stale001: index entry without a share, would remove" in captured.out
    assert summary_line(captured.out, "gc") == (
        "gc (dry run: nothing was changed): expired shares 1, journal entries 0, delete records 0, stale index entries 1"
    )
    assert "gc expiry [" in captured.err and "/s" in captured.err
    assert await snapshot_all(store) == before

    assert await gc("--store", located.url) == 0
    out = capsys.readouterr().out
    assert f"{doomed.id}: expired, deleted" in out
    assert summary_line(out, "gc").startswith("gc: expired shares 1, ")
    after = await snapshot_all(store)
    assert not [k for k in after if doomed.id in k or "stale001" in k]
    assert f"index/{kept.id}" in after

    assert await gc("--store", located.url, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "expired": [], "journalEntriesDeleted": 0, "recordsDeleted": 0, "staleIndexEntries": [], "staleListingKeys": 0, "dryRun": False
    }


def test_progress_shows_rate_and_eta() -> None:
    import io

    from cloudsession.cli.common import Progress

    now = [100.0]
    stream = io.StringIO()
    progress = Progress("fsck", enabled=True, stream=stream, clock=lambda: now[0])
    tick = progress.start(1000)
    assert progress.line().endswith("0/1000 ?/s ETA ?")
    now[0] += 4.0
    tick(100)
    assert progress.line().endswith("100/1000 25/s ETA 0:36")
    now[0] += 3600.0
    tick(899)
    assert progress.line().endswith("999/1000 0.3/s ETA 0:04")
    now[0] += 1.0
    tick(1)
    assert progress.line().endswith("1000/1000 0.3/s in 1:00:05")
    drawn = stream.getvalue()
    assert drawn.endswith("in 1:00:05\n") and "\x1b" not in drawn


async def test_sweep_dry_run_counts_what_the_real_sweep_deletes(tmp_path: Path) -> None:
    from cloudsession.shares.sweep import sweep

    settings = settings_for_tests(tmp_path / "data", compact_max_entries=5, journal_grace_seconds=1)
    store = FilesystemStore(tmp_path / "store")
    service = ShareService(store, settings)
    creds = await service.create("ses_sweepdryrun00000000000001", origin="http://x")
    for i in range(12):
        await service.sync(creds.id, creds.secret, [{"type": "message", "data": {"id": f"msg_{i:02d}", "role": "user"}}])
    await service.close()  # waits for the background compactions
    await asyncio.sleep(1.1)  # past the grace period: folded entries may go
    before = await snapshot_all(store)
    phases: list[tuple[str, int]] = []
    ticks: list[str] = []

    def start(phase: str, total: int):  # type: ignore[no-untyped-def]
        phases.append((phase, total))
        return lambda count: ticks.extend([phase] * count)

    fresh = ShareService(store, settings)
    planned = await sweep(fresh, dry_run=True, start=start)
    assert planned.journal_entries_deleted > 0 and planned.dry_run
    assert await snapshot_all(store) == before
    assert [p for p, _ in phases] == ["expiry", "journals", "records"]
    assert all(ticks.count(p) == total for p, total in phases)  # every phase's bar reaches its total
    done = await sweep(fresh)
    assert done.journal_entries_deleted == planned.journal_entries_deleted
    # (The first real sweep on a store also marks its listing keys built: listing/built.)
    assert len(set(await snapshot_all(store)) - {"listing/built"}) == len(before) - planned.journal_entries_deleted
    view = await ShareService(store, settings).public_share(creds.id)
    assert [m["id"] for m in view.messages] == [f"msg_{i:02d}" for i in range(12)]
