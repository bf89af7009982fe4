"""Reads of a share: the public view kept serialised between versions (a read after a sync redacts
only what changed, and gives the same bytes as encoding the whole view), version ETags with 304s
on the API reads, brotli and gzip negotiated from Accept-Encoding, and the share cache bounded by
what it costs in memory."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any
from unittest import mock

import brotli
import pytest
from factories import settings_for_tests
from view_data import SES, item, part, rich_items, session, user

from cloudsession.jsonio import json_bytes
from cloudsession.shares.service import ShareService
from cloudsession.store.fs import FilesystemStore
from cloudsession.web.app import create_app
from cloudsession.web.http import negotiate_encoding
from cloudsession.web.keys import COMPRESSED, SERVICE

ORIGIN = "http://share.test"


def mentioning(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The share's own id mentioned in text, in another case too (what the redaction replaces)."""
    message = user(50_000)
    return [*items, item("message", message), item("part", part(message, "text", text=f"see {SES} and {SES.upper()}"))]


@pytest.fixture
def service(tmp_path: Path) -> ShareService:
    settings = settings_for_tests(tmp_path / "data")
    return ShareService(FilesystemStore(tmp_path / "store"), settings)


async def test_pieces_joined_are_the_whole_view_encoded_at_every_version(service: ShareService, tmp_path: Path) -> None:
    creds = await service.create(SES, origin=ORIGIN)
    versions = [
        mentioning(rich_items()),
        [item("part", part(user(60_000), "text", text=f"a new part naming {SES.lower()}"))],
        [item("session", session(title=f"renamed {SES}")), item("session_diff", [{"file": "a.py", "before": SES, "after": "x"}])],
        [item("message", user(10_000, summary={"title": "edited in place"}))],
    ]
    for items in versions:
        await service.sync(creds.id, creds.secret, items)
        view = await service.public_share(creds.id)
        assert view.object_json() == json_bytes(view.agent_session())
        assert view.data_json() == json_bytes(view.data_items())
        # Kept pieces or a fresh process folding from the store: the same bytes.
        fresh = ShareService(FilesystemStore(tmp_path / "store"), service.settings)
        again = await fresh.public_share(creds.id)
        assert again.object_json() == view.object_json() and again.data_json() == view.data_json()
        assert SES.lower() not in view.object_json().decode().lower() and SES.lower() not in view.data_json().decode().lower()


async def test_a_read_after_a_sync_redacts_only_the_entities_it_changed(service: ShareService) -> None:
    creds = await service.create(SES, origin=ORIGIN)
    items = rich_items()
    await service.sync(creds.id, creds.secret, items)
    await service.public_share(creds.id)
    target = next(i["data"] for i in items if i["type"] == "part")
    made: list[bytes] = []
    real = service._public_piece

    def counting(*args: Any) -> Any:
        piece = real(*args)

        def wrapped(raw: bytes) -> bytes:
            made.append(raw)
            return piece(raw)

        return wrapped

    with mock.patch.object(service, "_public_piece", counting):
        await service.sync(creds.id, creds.secret, [item("part", {**target, "text": "changed"})])
        view = await service.public_share(creds.id)
    assert len(made) == 1 and b"changed" in made[0]
    assert [p for p in view.parts if p["id"] == target["id"]][0]["text"] == "changed"


async def test_cache_counts_what_shares_cost_and_stays_within_its_budget(tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path / "data", cache_budget_bytes=400_000)
    service = ShareService(FilesystemStore(tmp_path / "store"), settings)
    shares = []
    for n in range(6):
        creds = await service.create(f"ses_budget{n:020d}", origin=ORIGIN)
        big = user(1000)
        await service.sync(creds.id, creds.secret, [item("message", big), item("part", part(big, "text", text="x" * 100_000))])
        await service.public_share(creds.id)
        shares.append(creds.id)
        # The entity bytes are counted (the public pieces share them: the owner's id is swapped
        # over the joined body).
        state = service._cache[creds.id]
        assert state.parts.nbytes > 100_000 and service._cache_costs[creds.id] > 100_000
        assert service.cache_bytes <= 400_000
    assert len(service._cache) < 6 and shares[-1] in service._cache and shares[0] not in service._cache
    # An evicted share is read again from the store, whole.
    assert (await service.public_share(shares[0])).parts[0]["text"] == "x" * 100_000


@pytest.fixture
async def web(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await aiohttp_client(create_app(settings_for_tests(tmp_path / "data")))


async def make_share(web, **create: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    creds = await (await web.post("/api/share", json={"sessionID": SES, **create})).json()
    response = await web.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": mentioning(rich_items())})
    assert response.status == 200
    return dict(creds)


async def test_api_reads_answer_304_while_the_version_is_the_same(web) -> None:  # type: ignore[no-untyped-def]
    creds = await make_share(web)
    sid = creds["id"]
    first = await web.get(f"/api/share/{sid}")
    etag = first.headers["ETag"]
    assert first.status == 200 and etag.startswith('W/"') and first.headers["Cache-Control"] == "no-cache"
    data = await web.get(f"/api/share/{sid}/data")
    assert data.headers["ETag"] != etag
    for path, tag in ((f"/api/share/{sid}", etag), (f"/api/shares/{sid}", etag), (f"/api/share/{sid}/data", data.headers["ETag"])):
        same = await web.get(path, headers={"If-None-Match": tag, "Accept-Encoding": "br, gzip"}, auto_decompress=False)
        assert same.status == 304 and await same.read() == b"" and same.headers["ETag"] == tag
        assert "Content-Encoding" not in same.headers and same.headers["Access-Control-Allow-Origin"] == "*"
        assert same.headers["Vary"] == "Accept-Encoding"  # as on the 200 (RFC 9110 15.4.5)
    assert (await web.get(f"/api/share/{sid}", headers={"If-None-Match": '"other", ' + etag})).status == 304
    await web.post(f"/api/share/{sid}/sync", json={"secret": creds["secret"], "data": [item("message", user(90_000))]})
    changed = await web.get(f"/api/share/{sid}", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    body = await changed.json()
    assert list(body) == ["session", "messages", "parts", "diffs", "models", "metadata"]


async def test_private_share_reads_are_never_stored_and_reveal_nothing_without_the_token(web) -> None:  # type: ignore[no-untyped-def]
    creds = await make_share(web, private=True)
    sid, token = creds["id"], creds["readToken"]
    for path in (f"/api/share/{sid}", f"/api/share/{sid}/data"):
        read = await web.get(path, headers={"x-opencode-share-token": token})
        assert read.status == 200 and read.headers["Cache-Control"] == "private, no-store"
        etag = read.headers["ETag"]
        hidden = await web.get(path, headers={"If-None-Match": etag})
        assert hidden.status == 404 and "ETag" not in hidden.headers
        assert (await web.get(path, headers={"If-None-Match": "*"})).status == 404
        again = await web.get(path, headers={"If-None-Match": etag, "x-opencode-share-token": token})
        assert again.status == 304 and again.headers["Cache-Control"] == "private, no-store"


async def test_json_html_and_static_are_compressed_as_the_client_prefers(web) -> None:  # type: ignore[no-untyped-def]
    creds = await make_share(web)
    sid = creds["id"]
    for path in (f"/api/share/{sid}", f"/api/share/{sid}/data", f"/share/{sid}", "/static/app.css"):
        plain = await web.get(path, headers={"Accept-Encoding": "identity"}, auto_decompress=False)
        raw = await plain.read()
        assert plain.status == 200 and "Content-Encoding" not in plain.headers and "Accept-Encoding" in plain.headers["Vary"]
        for header, coding in (("br", "br"), ("gzip, br", "br"), ("gzip;q=1, br;q=0.9", "gzip"), ("br;q=0, *", "gzip"), ("x-gzip", "gzip")):
            for _ in range(2):  # the second is served from the compressed cache
                packed = await web.get(path, headers={"Accept-Encoding": header}, auto_decompress=False)
                assert packed.headers.get("Content-Encoding") == coding, (path, header)
                assert "Accept-Encoding" in packed.headers["Vary"]
                body = await packed.read()
                assert (brotli.decompress(body) if coding == "br" else gzip.decompress(body)) == raw
                assert len(body) < len(raw) / 2
        head = await web.head(path, headers={"Accept-Encoding": "br, gzip"}, auto_decompress=False)
        assert head.status == 200 and "Content-Encoding" not in head.headers
    assert web.server.app[COMPRESSED].nbytes > 0
    # Live updates are never compressed by us (permessage-deflate is not negotiated either).
    async with web.ws_connect(f"/ws/{sid}", headers={"Accept-Encoding": "br, gzip"}) as ws:
        assert ws.compress == 0


def test_accept_encoding_is_negotiated_by_q_value() -> None:
    assert negotiate_encoding("gzip, deflate, br") == "br"
    assert negotiate_encoding("br;q=0.5, gzip;q=0.8") == "gzip"
    assert negotiate_encoding("gzip;q=0, br;q=0") is None
    assert negotiate_encoding("identity") is None and negotiate_encoding("") is None
    assert negotiate_encoding("*;q=0.1") == "br" and negotiate_encoding("*, br;q=0") == "gzip"
    assert negotiate_encoding("GZIP;Q=0.3, BR;q=bogus") == "gzip"
    assert negotiate_encoding(", ".join(["x"] * 40 + ["br"])) is None  # at most 32 entries read


async def test_the_service_behind_the_app_keeps_one_view_per_version(web) -> None:  # type: ignore[no-untyped-def]
    creds = await make_share(web)
    service = web.server.app[SERVICE]
    first = await service.public_share(creds["id"])
    assert await service.public_share(creds["id"]) is first and first.version


def test_the_allocator_threshold_is_fixed_unless_the_operator_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudsession.web.app import tune_allocator

    assert tune_allocator() is True  # glibc (Debian): mallopt accepted the fixed threshold
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tune_allocator() is False


def test_a_snapshot_from_stored_bytes_reads_back_as_the_parsed_one_even_with_lone_surrogates() -> None:
    from cloudsession.jsonio import parse_stored, stored_bytes
    from cloudsession.shares.state import ShareState

    state = ShareState.new("snap0001", SES, 1)
    message = user(1000)
    state.apply_items([item("session", session(title="cut \ud83d")), item("message", message), item("part", part(message, "text", text="tail \udc00"))])
    raw = stored_bytes(state.snapshot_doc(5, raw=True))  # orjson refuses the session: the standard library writes it
    assert parse_stored(raw) == parse_stored(stored_bytes(state.snapshot_doc(5)))
    assert parse_stored(raw)["parts"][0]["text"] == "tail \udc00"


async def test_a_view_of_a_state_the_cache_no_longer_holds_leaves_the_kept_pieces_current(service: ShareService, tmp_path: Path) -> None:
    """A request that loaded the share, then saw the cache replace its state (another read found
    a new snapshot), builds a one-off view of its state: that view must not consume the change
    list the kept pieces follow, or the kept view goes stale once the state is cached again (a
    commit in flight puts its state back)."""
    creds = await service.create(SES, origin=ORIGIN)
    items = rich_items()
    await service.sync(creds.id, creds.secret, items)
    state = await service.load(creds.id)
    service.public_view(state)  # the kept pieces follow this state's entities
    target = next(i["data"] for i in items if i["type"] == "part")
    await service.sync(creds.id, creds.secret, [item("part", {**target, "text": "changed after the kept view"})])
    assert service._cache[creds.id] is state
    # Another process compacts; a read here finds the new snapshot and caches a new object.
    elsewhere = ShareService(FilesystemStore(tmp_path / "store"), service.settings)
    assert await elsewhere.compact(creds.id, force=True)
    other = await service.load(creds.id)
    assert other is not state
    service.public_view(state)  # a one-off view of the state this request still holds
    service._cache_put(state)  # a commit in flight puts its state back
    view = service.public_view(state)
    assert b"changed after the kept view" in view.object_json()
    assert view.object_json() == json_bytes(view.agent_session())


def test_the_memory_estimate_counts_idempotency_records_as_they_come_and_go() -> None:
    """The records' size is kept as they are added, replaced and evicted (not serialised again
    on every commit), and stays what serialising the window gives."""
    from cloudsession.jsonio import stored_bytes
    from cloudsession.shares.state import IDEMPOTENCY_WINDOW, ShareState

    state = ShareState.new("abcdefgh", SES, 1)
    for round_ in range(3):
        state.meta.record_idempotency({f"k{i:04d}": {"status": 200, "body": {"n": i * round_}, "at": i} for i in range(0, IDEMPOTENCY_WINDOW + 40, 3)})
        state.meta.record_idempotency({"k0003": {"status": 409, "body": {"error": "x" * round_}}})
        assert len(state.meta.idempotency) <= IDEMPOTENCY_WINDOW
        assert state.meta.idempotency_bytes == sum(len(stored_bytes(r)) for r in state.meta.idempotency.values())
