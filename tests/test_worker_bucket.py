"""Moving off the Worker loses nothing.

A bucket is seeded with ``share/<id>`` and ``index/<id>`` objects byte for byte as the reference
Worker writes them (compat-contract.md §8: compact ``JSON.stringify`` text, key order, the secret
in clear text in ``metadata.secret``, nulls inside entities, lone surrogates escaped as
``\\ud83d`` where the client cut text inside an emoji, share ids that are simply the last 8
characters of any session ID). cloudsession serves it in place through a real app (REST), the
owners sync with their reference secrets, and then ``cloudsession admin migrate`` copies it to
another store: every read of the migrated share must equal the read of the served one.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import factories as f
import pytest
from factories import settings_for_tests

from cloudsession import cli
from cloudsession.config import Settings
from cloudsession.credentials import derive_secret, share_id_candidates
from cloudsession.errors import SessionNotFound
from cloudsession.shares import maintenance
from cloudsession.shares.service import ShareService
from cloudsession.shares.storage import journal_key
from cloudsession.store.base import ObjectStore, iter_keys
from cloudsession.store.fs import FilesystemStore
from cloudsession.store.s3 import S3Store
from cloudsession.web.app import create_app
from cloudsession.web.keys import SERVICE

NAMESPACE = uuid.UUID(f.NAMESPACE)
NOW = 1_795_236_034_225
ADMIN_KEY = "admin-k3y"
LONE = "\ud83d"  # the first half of an emoji, as the Worker stores text cut inside one


def js_stringify(value: Any) -> bytes:
    """``JSON.stringify(value)`` as V8 writes it: compact, non-ASCII as is, lone surrogates as
    ``\\udXXX`` escapes (well-formed JSON.stringify), then UTF-8 (what R2 stores)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8")


def js_share_id(session_id: str) -> str:
    """The Worker's ``sessionID.slice(-8)`` (UTF-16 code units)."""
    return session_id.encode("utf-16-le", "surrogatepass")[-16:].decode("utf-16-le", "surrogatepass")


def worker_share(session_id: str, *, title: str = "A session", text: str = "hello", syncs: int = 3) -> tuple[str, bytes, bytes]:
    """``(share id, share/<id> bytes, index/<id> bytes)`` of a share the Worker created and
    synced a few times with the real client's items."""
    share_id = js_share_id(session_id)
    msg = {"id": f"msg_{share_id}u", "sessionID": session_id, "role": "user", "time": {"created": NOW + 1},
           "agent": "build", "model": {"providerID": "stub", "modelID": "stub-model"}}
    reply = {"id": f"msg_{share_id}v", "sessionID": session_id, "role": "assistant", "time": {"created": NOW + 2, "completed": None},
             "parentID": msg["id"], "modelID": "stub-model", "providerID": "stub", "mode": "build", "agent": "build",
             "path": {"cwd": "/home/dev/proj", "root": "/home/dev/proj"}, "cost": 0, "error": None,
             "tokens": {"input": 10, "output": 2, "reasoning": 0, "cache": {"read": 0, "write": 0}}}
    parts = [
        {"id": f"prt_{share_id}1", "sessionID": session_id, "messageID": msg["id"], "type": "text", "text": text,
         "time": {"start": NOW + 1, "end": None}},
        {"id": f"prt_{share_id}2", "sessionID": session_id, "messageID": reply["id"], "type": "text", "text": f"re: {text}", "metadata": None},
    ]
    session = {"id": session_id, "slug": "proud-eagle", "projectID": "p1", "directory": "/home/dev/proj", "title": title,
               "version": "1.18.33", "parentID": None, "share": {"url": f"https://opencode.j9xym.com/share/{share_id}"},
               "time": {"created": NOW, "updated": NOW + 3}}
    blob = {
        "session": session, "messages": [msg, reply], "parts": parts,
        "diffs": [{"file": "a.py", "before": "", "after": "x = 1\n", "additions": 1, "deletions": 0}],
        "models": [{"id": "stub-model", "providerID": "stub", "name": "Stub", "limit": {"context": 1000, "output": None}}],
        "metadata": {"createdAt": NOW, "lastUpdated": NOW + 9, "syncCount": syncs, "secret": derive_secret(NAMESPACE, session_id), "sessionID": session_id},
    }
    index = {"id": share_id, "sessionID": session_id, "title": title, "directory": session["directory"], "messageCount": 2,
             "partCount": 2, "diffCount": 1, "modelCount": 1, "lastUpdated": NOW + 9, "syncCount": syncs, "createdAt": NOW}
    return share_id, js_stringify(blob), js_stringify(index)


async def put_worker_share(store: ObjectStore, session_id: str, **kw: Any) -> tuple[str, str]:
    share_id, blob, index = worker_share(session_id, **kw)
    await store.put(f"share/{share_id}", blob)
    await store.put(f"index/{share_id}", index)
    return share_id, derive_secret(NAMESPACE, session_id)


# The realistic odd shares: an opencode id, a date-like id with dots, a unicode id, text cut inside
# an emoji (in a part and in the title), and one a sync will add a lone surrogate to.
SESSIONS = {
    "ses_e0398094effebZevp8D0r58s46": {},
    "2026.11.26.11.30": {"title": "dots"},
    "ses_ünïcödé✓": {"title": "unicode ✓"},
    "ses_0000000000000000surrogat": {"title": f"cut {LONE}", "text": f"emoji cut here: {LONE}"},
}


class Place:
    """A store location: the store itself, its URL for the CLI, and settings for an app on it."""

    def __init__(self, store: ObjectStore, url: str, settings: Settings) -> None:
        self.store, self.url, self.settings = store, url, settings


@pytest.fixture(params=["fs", "s3"])
async def places(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Two locations of one backend: ``source`` (the Worker's bucket) and ``target``."""
    opened: list[ObjectStore] = []

    async def place(name: str) -> Place:
        if request.param == "fs":
            root = tmp_path / name
            store: ObjectStore = FilesystemStore(root)
            settings = settings_for_tests(tmp_path / f"{name}-data", store={"path": root}, rpc_shared_key=ADMIN_KEY)
            url = str(root)
        else:
            endpoint, bucket = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("s3_bucket")
            prefix = "" if name == "source" else f"{name}/"
            store = await S3Store.open(bucket=bucket, prefix=prefix, endpoint_url=endpoint, region="us-east-1")
            settings = settings_for_tests(
                tmp_path / f"{name}-data", rpc_shared_key=ADMIN_KEY,
                store={"backend": "s3", "bucket": bucket, "prefix": prefix, "endpoint": endpoint, "region": "us-east-1"},
            )
            url = f"s3://{bucket}/{prefix.rstrip('/')}?endpoint={endpoint}&region=us-east-1".replace(f"{bucket}/?", f"{bucket}?")
        opened.append(store)
        return Place(store, url, settings)

    try:
        yield {"source": await place("source"), "target": await place("target")}
    finally:
        for store in opened:
            await store.close()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONS_SHARED_SECRET", f.NAMESPACE)
    monkeypatch.delenv("CLOUDSESSION_STORE", raising=False)


async def admin(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["admin", *argv])


def url_id(share_id: str) -> str:
    return quote(share_id, safe="")


async def reads(client: Any, share_id: str) -> dict[str, Any]:
    """Everything a reader sees of one share (JSON parsed, pages as text)."""
    out: dict[str, Any] = {}
    base = f"/api/share/{url_id(share_id)}"
    for name, path in (("data", base + "/data"), ("object", base), ("metadata", base + "/metadata"), ("alias", f"/api/shares/{url_id(share_id)}/data")):
        resp = await client.get(path)
        assert resp.status == 200, (share_id, path, resp.status, await resp.text())
        out[name] = await resp.json()
    resp = await client.get(f"/share/{url_id(share_id)}")
    assert resp.status == 200, (share_id, await resp.text())
    out["page"] = await resp.text()
    return out


async def listing(client: Any) -> Any:
    resp = await client.get("/api/sessions", headers={"x-opencode-share-key": ADMIN_KEY})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def all_bytes(store: ObjectStore, prefix: str = "") -> dict[str, bytes]:
    out = {}
    async for key in iter_keys(store, prefix):
        obj = await store.get(key)
        assert obj is not None
        out[key] = obj.body
    return out


# -- served, synced, migrated ---------------------------------------------------------------------


async def test_a_served_worker_bucket_migrates_exactly(places: dict[str, Place], aiohttp_client: Any, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = places["source"], places["target"]
    shares = {sid: await put_worker_share(source.store, sid, **kw) for sid, kw in SESSIONS.items()}
    worker_bytes = await all_bytes(source.store)

    served = await aiohttp_client(create_app(source.settings))
    for sid, (share_id, secret) in shares.items():
        # Served in place under its own id, the owner's reference secret works, and opencode's
        # re-create (it re-sends POST /api/share freely) finds the same share and secret.
        resp = await served.post("/api/share", json={"sessionID": sid})
        assert (await resp.json())["id"] == share_id and (await resp.json())["secret"] == secret
        items = [f.item("message", {"id": f"msg_{share_id}w", "sessionID": sid, "role": "user", "time": {"created": NOW + 20}}),
                 f.item("part", {"id": f"prt_{share_id}3", "sessionID": sid, "messageID": f"msg_{share_id}w", "type": "text", "text": "synced on cloudsession"})]
        resp = await served.post(f"/api/share/{url_id(share_id)}/sync", json={"secret": secret, "data": items})
        assert await resp.json() == {"success": True, "syncCount": 4}, share_id
        resp = await served.post(f"/api/share/{url_id(share_id)}/sync", json={"secret": secret, "data": [f.item("session_diff", [])]})
        assert await resp.json() == {"success": True, "syncCount": 5}
    # The Worker's blobs were never rewritten: the syncs sit in journal/<id>/0/.
    assert await all_bytes(source.store, "share/") == {k: v for k, v in worker_bytes.items() if k.startswith("share/")}
    assert await source.store.get(journal_key(shares["2026.11.26.11.30"][0], "0", 2)) is not None
    before = {share_id: await reads(served, share_id) for share_id, _ in shares.values()}
    for share_id, _ in shares.values():
        assert before[share_id]["metadata"]["syncCount"] == 5
        assert [p["text"] for p in before[share_id]["object"]["parts"]][-1] == "synced on cloudsession"
    served_list = await listing(served)
    assert sorted(e["id"] for e in served_list["sessions"]) == sorted(s for s, _ in shares.values())

    # The other readers of a reference blob agree with the served view (once the server's index
    # writes, made after its answers, have landed).
    await served.app[SERVICE].settle_index()
    assert await admin("fsck", "--store", source.url) == 0
    assert "fsck: shares 4" in capsys.readouterr().out
    assert await admin("backfill-index", "--store", source.url) == 0
    assert "backfill-index: ok 4" in capsys.readouterr().out

    assert await admin("migrate", "--from", source.url, "--to", target.url) == 0
    out = capsys.readouterr().out
    assert "migrate: copied 4" in out, out
    moved = await aiohttp_client(create_app(target.settings))
    for share_id, _ in shares.values():
        assert await reads(moved, share_id) == before[share_id], share_id
    assert await listing(moved) == served_list
    # Lone surrogates are kept as they are in storage; only reads replace them.
    stored = (await target.store.get(f"share/{shares['ses_0000000000000000surrogat'][0]}")).body  # type: ignore[union-attr]
    assert b"\\ud83d" in stored and derive_secret(NAMESPACE, "ses_0000000000000000surrogat").encode() not in stored
    assert before["surrogat"]["object"]["session"]["title"] == "cut \ufffd"

    # A re-run changes nothing; the migrated shares keep working with the reference secrets.
    assert await admin("migrate", "--from", source.url, "--to", target.url) == 0
    assert "migrate: unchanged 4" in capsys.readouterr().out
    for share_id, secret in shares.values():
        resp = await moved.post(f"/api/share/{url_id(share_id)}/sync", json={"secret": secret, "data": []})
        assert await resp.json() == {"success": True, "syncCount": 6}
        assert (await moved.delete(f"/api/share/{url_id(share_id)}", json={"secret": secret})).status == 200
    assert await all_bytes(target.store, "share/") == {}
    assert await admin("fsck", "--store", target.url) == 0


async def test_migrate_fails_a_copy_that_reads_back_differently(tmp_path: Path, cli_env: None) -> None:
    """The verification step: a target store that changes what it is given is caught."""

    class Lossy(FilesystemStore):
        async def put_if_absent(self, key: str, body: bytes) -> str:
            return await super().put_if_absent(key, body.replace(b"synced", b"lost"))

    settings = settings_for_tests(tmp_path / "data")
    source = ShareService(FilesystemStore(tmp_path / "source"), settings)
    share_id, secret = await put_worker_share(source.store, "ses_e0398094effebZevp8D0r58s46")
    await source.sync(share_id, secret, [f.item("message", {"id": "msg_x", "role": "user", "text": "synced"})])
    target = ShareService(Lossy(tmp_path / "target"), settings)
    report = await maintenance.migrate(source, target, start=lambda total: lambda n: None)
    assert report.counts["failed"] == 1
    assert "reads back differently" in report.findings[0].detail


# -- lone surrogates ------------------------------------------------------------------------------


async def test_lone_surrogates_are_served_kept_and_deletable(places: dict[str, Place], aiohttp_client: Any, cli_env: None, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = places["source"].store
    sid = "ses_0000000000000000surrogat"
    share_id, secret = await put_worker_share(store, sid, title=f"cut {LONE}", text=f"emoji cut here: {LONE}")
    other, _ = await put_worker_share(store, "ses_000000000000000surrogat2", text=f"{LONE} again")
    blob_before = (await store.get(f"share/{share_id}")).body  # type: ignore[union-attr]
    client = await aiohttp_client(create_app(places["source"].settings))

    data = await (await client.get(f"/api/share/{share_id}/data")).json()
    texts = [item["data"]["text"] for item in data if item["type"] == "part"]
    assert "emoji cut here: \ufffd" in texts and "re: emoji cut here: \ufffd" in texts
    page = await client.get(f"/share/{share_id}")
    assert page.status == 200 and "emoji cut here: \ufffd" in await page.text()
    assert (await (await client.get(f"/api/share/{share_id}/metadata")).json())["title"] == "cut \ufffd"
    assert [e["title"] for e in (await listing(client))["sessions"] if e["id"] == share_id] == ["cut \ufffd"]
    resp = await client.post(f"/api/share/{share_id}/sync", json={"secret": secret, "data": [f.item("message", {"id": "msg_z", "role": "user"})]})
    assert await resp.json() == {"success": True, "syncCount": 4}
    for download in ("export.json", "export.html"):
        got = await client.get(f"/share/{share_id}/{download}")
        assert got.status == 200 and "emoji cut here: \ufffd" in await got.text(), download
    fragments = await client.get(f"/share/{share_id}/fragments", params={"header": "1", "digest": "1", "id": f"msg_{share_id}u"})
    assert fragments.status == 200
    # Request bodies stay strict: a lone surrogate from a client is still a 400.
    bad = b'{"secret":"%s","data":[{"type":"message","data":{"id":"m","text":"\\ud83d"}}]}' % secret.encode()
    resp = await client.post(f"/api/share/{share_id}/sync", data=bad, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await store.get(f"share/{share_id}")).body == blob_before  # type: ignore[union-attr]

    # Compaction keeps the stored text as it is (escaped surrogate, not a replacement).
    service = ShareService(store, places["source"].settings)
    assert await service.compact(share_id, force=True)
    compacted = (await store.get(f"share/{share_id}")).body  # type: ignore[union-attr]
    assert b"emoji cut here: \\ud83d" in compacted and "\ufffd".encode() not in compacted
    assert (await service.load(share_id)).session["title"] == f"cut {LONE}"

    url = places["source"].url
    await client.app[SERVICE].settle_index()  # the server's index writes, made after its answers
    assert await admin("fsck", "--store", url) == 0
    assert await admin("backfill-index", "--store", url) == 0
    assert "backfill-index: ok 2" in capsys.readouterr().out
    assert await admin("migrate", "--from", url, "--to", places["target"].url) == 0
    assert "migrate: copied 2" in capsys.readouterr().out
    exported = tmp_path / "export.json"
    assert await asyncio.to_thread(cli.main, ["export", share_id, "--store", url, "-o", str(exported)]) == 0
    assert "emoji cut here: \ufffd" in exported.read_text()
    # The owner deletes with the secret; the operator deletes without it.
    assert (await client.delete(f"/api/share/{share_id}", json={"secret": secret})).status == 200
    assert await admin("delete", "--store", url, other) == 0
    assert f"{other}: deleted" in capsys.readouterr().out
    assert await all_bytes(store, "share/") == {}


# -- share ids the Worker accepted ----------------------------------------------------------------


async def test_odd_keys_never_break_the_list(places: dict[str, Place], aiohttp_client: Any) -> None:
    store = places["source"].store
    ok, _ = await put_worker_share(store, "ses_e0398094effebZevp8D0r58s46")
    odd, _ = await put_worker_share(store, "ses_ünïcödé✓")
    spaced, _ = await put_worker_share(store, "ses_00000000a b?c%d")
    await store.put("index/26/11/30", js_stringify({"id": "26/11/30", "sessionID": "ses_2026/11/30"}))  # an id with slashes
    await store.put("index/garbage1", b"{not json")
    await store.put("index/nullidxx", b"null")
    client = await aiohttp_client(create_app(places["source"].settings))
    answer = await listing(client)
    assert sorted(e["id"] for e in answer["sessions"]) == sorted([ok, odd, spaced])
    # The odd index entries never get a listing key (fsck reports them): nothing to skip.
    assert answer["count"] == 3 and "skipped" not in answer
    page = await client.get("/sessions", headers={"x-opencode-share-key": ADMIN_KEY})
    assert page.status == 200
    links = re.findall(r'href="(/share/[^"]*)"', await page.text())
    assert spaced == "0a b?c%d" and "/share/0a%20b%3Fc%25d" in links and f"/share/{quote(odd)}" in links
    assert (await client.get("/share/0a%20b%3Fc%25d")).status == 200


async def test_fsck_moves_a_share_whose_id_cannot_be_served(places: dict[str, Place], aiohttp_client: Any, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """``share/26/11/30``: the Worker's id for session ``ses_2026/11/30`` holds slashes, so no URL
    reaches it. fsck says so; --repair moves it to the id cloudsession gives that session, where
    the owner's link (re-created by opencode) and secret find it."""
    store, url = places["source"].store, places["source"].url
    sid = "ses_2026/11/30"
    share_id, blob, index = worker_share(sid)
    assert share_id == "26/11/30"
    await store.put(f"share/{share_id}", blob)
    await store.put(f"index/{share_id}", index)
    await put_worker_share(store, "2026.11.26.11.30")
    new_id = share_id_candidates(NAMESPACE, sid)[0]

    assert await admin("migrate", "--from", url, "--to", places["target"].url, "--dry-run") == 0
    assert f"26/11/30: moved: the id cannot be served (it contains '/'); copied as {new_id}" in capsys.readouterr().out
    assert await admin("backfill-index", "--store", url) == 1
    assert "26/11/30: unservable-id: the id cannot be served (it contains '/'); `cloudsession admin fsck --repair` moves it" in capsys.readouterr().out
    assert await admin("fsck", "--store", url) == 1
    out = capsys.readouterr().out
    assert f"26/11/30: unservable-id: the id cannot be served (it contains '/'); --repair moves it to {new_id}" in out
    assert await admin("fsck", "--store", url, "--repair") == 0
    assert "[repaired]" in capsys.readouterr().out
    assert await store.get("share/26/11/30") is None and await store.get("index/26/11/30") is None
    assert await admin("fsck", "--store", url) == 0
    capsys.readouterr()

    client = await aiohttp_client(create_app(places["source"].settings))
    created = await (await client.post("/api/share", json={"sessionID": sid})).json()
    assert created["id"] == new_id and created["secret"] == derive_secret(NAMESPACE, sid)
    resp = await client.post(f"/api/share/{new_id}/sync", json={"secret": created["secret"], "data": []})
    assert await resp.json() == {"success": True, "syncCount": 4}
    assert (await reads(client, new_id))["metadata"]["title"] == "A session"


async def test_migrate_renames_an_unservable_id_in_the_copy(tmp_path: Path, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    source = FilesystemStore(tmp_path / "source")
    sid = "ses_2026/11/30"
    share_id, blob, index = worker_share(sid)
    await source.put(f"share/{share_id}", blob)
    await source.put(f"index/{share_id}", index)
    new_id = share_id_candidates(NAMESPACE, sid)[0]
    target_url = str(tmp_path / "target")
    for outcome in ("moved", "unchanged"):
        assert await admin("migrate", "--from", str(tmp_path / "source"), "--to", target_url) == 0
        out = capsys.readouterr().out
        assert f"migrate: {outcome} 1" in out, out
    assert await source.get(f"share/{share_id}") is not None  # the source is only read
    service = ShareService(FilesystemStore(tmp_path / "target"), settings_for_tests(tmp_path / "data"))
    assert await service.sync(new_id, derive_secret(NAMESPACE, sid), []) == 4
    with pytest.raises(SessionNotFound):
        await service.load("26/11/30")


async def test_served_journal_entries_are_folded_by_every_tool(tmp_path: Path, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """export, backfill-index and fsck read a reference blob with its journal, as the server does."""
    root = tmp_path / "store"
    settings = settings_for_tests(tmp_path / "data", store={"path": root})
    service = ShareService(FilesystemStore(root), settings)
    share_id, secret = await put_worker_share(service.store, "ses_e0398094effebZevp8D0r58s46")
    await service.sync(share_id, secret, [f.item("session", f.session("ses_e0398094effebZevp8D0r58s46", title="Renamed"))])
    assert await service.store.get(journal_key(share_id, "0", 1)) is not None
    await service.store.delete(f"index/{share_id}")
    assert await admin("backfill-index", "--store", str(root)) == 0
    capsys.readouterr()
    assert json.loads((await service.store.get(f"index/{share_id}")).body)["title"] == "Renamed"  # type: ignore[union-attr]
    out = tmp_path / "export.json"
    assert await asyncio.to_thread(cli.main, ["export", share_id, "--store", str(root), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["info"]["title"] == "Renamed"


async def test_migrate_keeps_the_syncs_made_while_serving(tmp_path: Path, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The plainest case of the first defect: one ordinary share, one sync while served."""
    settings = settings_for_tests(tmp_path / "data")
    source = ShareService(FilesystemStore(tmp_path / "source"), settings)
    share_id, secret = await put_worker_share(source.store, "ses_e0398094effebZevp8D0r58s46")
    assert await source.sync(share_id, secret, [f.item("message", {"id": "msg_x", "role": "user"})]) == 4
    assert await admin("migrate", "--from", str(tmp_path / "source"), "--to", str(tmp_path / "target")) == 0
    assert "migrate: copied 1" in capsys.readouterr().out
    state = await ShareService(FilesystemStore(tmp_path / "target"), settings).load(share_id)
    assert state.meta.sync_count == 4 and "msg_x" in state.messages


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": [value]}
    return value


async def test_deep_nesting_the_worker_wrote_is_served_and_kept(tmp_path: Path, aiohttp_client: Any, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    """V8 writes and reads nesting far deeper than orjson writes (254 levels): a tool part's
    metadata 300 levels deep is served, synced, compacted and migrated without loss."""
    root = tmp_path / "store"
    settings = settings_for_tests(tmp_path / "data", store={"path": root})
    store = FilesystemStore(root)
    sid = "ses_e0398094effebZevp8D0r58s46"
    share_id, blob, index = worker_share(sid)
    doc = json.loads(blob)
    doc["parts"][1]["metadata"] = nested(150)  # 300 JSON levels, inside parts[1]
    await store.put(f"share/{share_id}", js_stringify(doc))
    await store.put(f"index/{share_id}", index)
    client = await aiohttp_client(create_app(settings))
    before = await reads(client, share_id)
    assert json.dumps(before["object"]["parts"][1]["metadata"]) == json.dumps(nested(150))
    # New data from a client is held to the input limit (shares/items.MAX_NESTING, 200 levels):
    # what the Worker stored deeper stays readable, but nobody adds more of it.
    secret = derive_secret(NAMESPACE, sid)
    resp = await client.post(f"/api/share/{share_id}/sync", json={"secret": secret, "data": [
        f.item("part", {"id": "prt_deep", "messageID": f"msg_{share_id}u", "type": "tool", "state": nested(200)})]})
    assert resp.status == 400
    resp = await client.post(f"/api/share/{share_id}/sync", json={"secret": secret, "data": [
        f.item("part", {"id": "prt_deep", "messageID": f"msg_{share_id}u", "type": "tool", "state": nested(90)})]})
    assert await resp.json() == {"success": True, "syncCount": 4}
    service = ShareService(store, settings)
    assert await service.compact(share_id, force=True)
    state = await service.load(share_id)
    assert state.parts["prt_deep"]["state"] == nested(90)
    assert json.dumps(state.parts[doc["parts"][1]["id"]]["metadata"]) == json.dumps(nested(150))
    assert await admin("migrate", "--from", str(root), "--to", str(tmp_path / "target")) == 0
    assert "migrate: copied 1" in capsys.readouterr().out


async def test_a_list_the_store_cannot_give_is_a_503(moto_endpoint: str, tmp_path: Path, aiohttp_client: Any) -> None:
    settings = settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN_KEY, store={
        "backend": "s3", "bucket": "no-such-bucket-here", "endpoint": moto_endpoint, "region": "us-east-1"})
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/api/sessions", headers={"x-opencode-share-key": ADMIN_KEY})
    assert resp.status == 503  # a StoreError from the listing itself used to escape as a 500
