"""Black-box tests of the REST API through HTTP: every route, its status codes and error bodies,
the reference's merge rules, and the deliberate security departures from the reference."""

from __future__ import annotations

import uuid

import factories as f
import pytest
from factories import settings_for_tests

SID = "ses_e0398094effebZevp8D0r58s46"


async def create(client, session_id=SID):
    resp = await client.post("/api/share", json={"sessionID": session_id})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def sync(client, share, items, secret=None):
    return await client.post(f"/api/share/{share['id']}/sync", json={"secret": secret or share["secret"], "data": items})


# -- create ---------------------------------------------------------------------------------


async def test_create_matches_reference_vectors(client):
    share = await create(client, "session-abc123")
    assert share == {"id": "n-abc123", "secret": "3bd6334d-9d1a-5e35-b332-aaf934f6f45c", "url": "http://share.test/share/n-abc123"}
    assert list(share) == ["id", "secret", "url"]
    assert (await create(client, "1234567890abcdefghijklmnop"))["secret"] == "a7b77cfb-b0ab-5b7d-8579-569364134f4d"
    assert (await create(client, SID))["secret"] == "8b376e6f-2c6a-54ba-9dd2-7c4176e1cb90"


async def test_create_is_idempotent_and_keeps_data(client):
    share = await create(client)
    assert (await sync(client, share, [f.item("session", f.session(SID, title="kept"))])).status == 200
    again = await create(client)
    assert again == share
    data = await (await client.get(f"/api/share/{share['id']}")).json()
    assert data["session"]["title"] == "kept"
    assert data["metadata"]["syncCount"] == 1


async def test_create_collision_gets_other_stable_id_and_never_the_secret(client):
    owner = await create(client, "ses_aaaaaaaaaaaaaaaaaaCOLLIDE1")
    assert (await sync(client, owner, [f.item("session", f.session("ses_aaaaaaaaaaaaaaaaaaCOLLIDE1", title="owner's"))])).status == 200
    intruder = await create(client, "ses_bbbbbbbbbbbbbbbbbbCOLLIDE1")
    assert intruder["id"] != owner["id"] and intruder["id"].startswith("COLLIDE1-")
    assert intruder["secret"] != owner["secret"]
    assert await create(client, "ses_bbbbbbbbbbbbbbbbbbCOLLIDE1") == intruder  # stable
    data = await (await client.get(f"/api/share/{owner['id']}")).json()
    assert data["session"]["title"] == "owner's"
    # The intruder's secret does not open the owner's share.
    resp = await sync(client, owner, [], secret=intruder["secret"])
    assert resp.status == 403


@pytest.mark.parametrize(
    "body",
    [{}, {"sessionID": 5}, {"sessionID": None}, [], None, "x", {"sessionID": ""}, {"sessionID": "a\u0000b"}, {"sessionID": "x" * 300}],
)
async def test_create_rejects_bad_bodies(client, body):
    resp = await client.post("/api/share", json=body)
    assert resp.status == 400
    payload = await resp.json()
    assert payload["success"] is False and payload["error"]["message"]
    assert (await client.get("/api/sessions", headers={"x-opencode-share-key": "k"})).status == 401


async def test_malformed_json_and_wrong_content_type(client):
    resp = await client.post("/api/share", data=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "Malformed JSON in request body"
    resp = await client.post("/api/share", data=b'{"sessionID":"ses_x"}', headers={"Content-Type": "text/plain"})
    assert resp.status == 400
    resp = await client.post("/api/share", data=b'{"sessionID":"ses_vnd00001"}', headers={"Content-Type": "application/vnd.api+json; charset=utf-8"})
    assert resp.status == 200


async def test_url_derived_from_forwarded_headers_without_public_url(aiohttp_client, tmp_path):
    from factories import settings_for_tests

    from cloudsession.web.app import create_app

    client = await aiohttp_client(create_app(settings_for_tests(tmp_path, public_url=None)))
    resp = await client.post("/api/share", json={"sessionID": SID}, headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "share.example.com"})
    assert (await resp.json())["url"] == "https://share.example.com/share/D0r58s46"
    resp = await client.post("/api/share", json={"sessionID": SID}, headers={"X-Forwarded-Host": "evil.com/<script>"})
    assert (await resp.json())["url"].startswith("http://localhost/share/")


# -- sync and merge -------------------------------------------------------------------------


async def test_sync_merge_rules(client):
    share = await create(client, "ses_merge0001")
    items = [
        f.item("message", {"id": "m1", "role": "user", "v": 1}),
        f.item("part", {"id": "p1", "messageID": "m1", "type": "text", "text": "a"}),
        f.item("message", {"id": "m1", "role": "user", "v": 2}),
        f.item("message", {"id": "m0", "role": "user", "v": 1}),
        f.item("session_diff", [{"file": "a"}, {"file": "a"}]),
        f.item("model", [{"id": "gpt", "name": "1"}, {"id": "gpt", "name": "2"}, {"id": "claude"}]),
        f.item("session", {"id": "ses_merge0001", "title": "T", "directory": "/d"}),
    ]
    resp = await sync(client, share, items)
    assert await resp.json() == {"success": True, "syncCount": 1}
    data = await (await client.get(f"/api/share/{share['id']}")).json()
    assert data["messages"] == [{"id": "m1", "role": "user", "v": 2}, {"id": "m0", "role": "user", "v": 1}]
    assert [p["id"] for p in data["parts"]] == ["p1"]
    assert data["diffs"] == [{"file": "a"}, {"file": "a"}]
    assert data["models"] == [{"id": "gpt", "name": "2"}, {"id": "claude"}]
    # session_diff replaces (the reference's append is a defect); models accumulate per provider+id.
    resp = await sync(client, share, [f.item("session_diff", [{"file": "b"}]), f.item("model", [{"id": "gpt", "name": "3"}])])
    assert (await resp.json())["syncCount"] == 2
    data = await (await client.get(f"/api/share/{share['id']}")).json()
    assert data["diffs"] == [{"file": "b"}]
    assert data["models"] == [{"id": "gpt", "name": "3"}, {"id": "claude"}]
    meta = await (await client.get(f"/api/share/{share['id']}/metadata")).json()
    assert meta["messageCount"] == 2 and meta["partCount"] == 1 and meta["diffCount"] == 1 and meta["modelCount"] == 2
    assert meta["title"] == "T" and meta["directory"] == "/d" and meta["syncCount"] == 2
    assert list(meta)[:2] == ["id", "sessionID"] and meta["sessionID"].startswith("ses_") and meta["sessionID"] != "ses_merge0001"


async def test_update_keeps_position_and_counters_advance(client):
    share = await create(client)
    await sync(client, share, [f.item("message", {"id": "msg_1", "role": "user"}), f.item("message", {"id": "msg_2", "role": "user"})])
    first = (await (await client.get(f"/api/share/{share['id']}/metadata")).json())["lastUpdated"]
    resp = await sync(client, share, [f.item("message", {"id": "msg_1", "role": "assistant"})])
    assert (await resp.json())["syncCount"] == 2
    assert (await (await sync(client, share, [])).json())["syncCount"] == 3  # empty syncs count too
    data = await (await client.get(f"/api/share/{share['id']}")).json()
    assert [(m["id"], m["role"]) for m in data["messages"]] == [("msg_1", "assistant"), ("msg_2", "user")]
    assert data["metadata"]["lastUpdated"] > first


async def test_sync_errors_in_reference_order(client):
    share = await create(client)
    # Validation runs before the lookup: a bad body for a missing share is a 400.
    assert (await client.post("/api/share/nosuch01/sync", json={"secret": 1})).status == 400
    resp = await client.post("/api/share/nosuch01/sync", json={"secret": "x", "data": []})
    assert resp.status == 404 and await resp.json() == {"error": "Share not found"}
    resp = await sync(client, share, [], secret="wrong")
    assert resp.status == 403 and await resp.json() == {"error": "Invalid secret"}


BAD_ITEMS = [
    "not-a-list",
    [None],
    [5],
    [{"type": "weird", "data": {}}],
    [{"type": "session"}],
    [{"type": "session", "data": None}],
    [{"type": "session", "data": {"title": "no id"}}],
    [{"type": "message", "data": {"id": 5}}],
    [{"type": "message", "data": None}],
    [{"type": "part", "data": {"id": "p1"}}],
    [{"type": "part", "data": {"id": "p1", "messageID": None}}],
    [{"type": "session_diff", "data": {"file": "a"}}],
    [{"type": "session_diff", "data": [None]}],
    [{"type": "model", "data": [None]}],
    [{"type": "model", "data": [{"name": "no id"}]}],
    [{"type": "message", "data": {"id": "x" * 300}}],
]


@pytest.mark.parametrize("data", BAD_ITEMS)
async def test_bad_items_rejected_and_nothing_stored(client, data):
    share = await create(client)
    good = [f.item("message", {"id": "msg_ok", "role": "user"})]
    # A valid item first: the whole batch must be refused, not applied up to the bad item.
    resp = await sync(client, share, good + data if isinstance(data, list) else data)
    assert resp.status == 400
    body = await resp.json()
    assert body["success"] is False and "Invalid" in body["error"]["message"]
    stored = await (await client.get(f"/api/share/{share['id']}")).json()
    assert stored["messages"] == [] and stored["metadata"]["syncCount"] == 0
    # And the share still works afterwards.
    assert (await sync(client, share, good)).status == 200
    assert (await client.get(f"/api/share/{share['id']}/data")).status == 200


async def test_unknown_item_keys_are_stripped(client):
    share = await create(client)
    await sync(client, share, [{"type": "message", "data": {"id": "msg_1", "role": "user"}, "extra": "dropped"}])
    data = await (await client.get(f"/api/share/{share['id']}")).json()
    assert data["messages"] == [{"id": "msg_1", "role": "user"}]


# -- limits -----------------------------------------------------------------------------------


async def test_limits_give_413_and_store_nothing(aiohttp_client, tmp_path):
    from cloudsession.web.app import create_app

    settings = settings_for_tests(tmp_path, limits={"max_body_bytes": 4096, "max_items_per_sync": 3, "max_share_bytes": 1024 * 1024})
    client = await aiohttp_client(create_app(settings))
    share = await create(client)
    resp = await sync(client, share, [f.item("message", {"id": f"msg_{i}", "role": "user"}) for i in range(4)])
    assert resp.status == 413 and "Too many items" in (await resp.json())["error"]
    resp = await sync(client, share, [f.item("message", {"id": "msg_big", "role": "user", "text": "x" * 5000})])
    assert resp.status == 413 and "exceeds" in (await resp.json())["error"]
    for i in range(300):
        resp = await sync(client, share, [f.item("message", {"id": f"msg_{i}", "role": "user", "text": "y" * 3500})])
        if resp.status != 200:
            break
    assert resp.status == 413 and "size limit" in (await resp.json())["error"]
    stored = await (await client.get(f"/api/share/{share['id']}")).json()
    assert len(stored["messages"]) == i  # the refused sync stored nothing


# -- reads --------------------------------------------------------------------------------------


async def test_reads_never_leak_secret_or_session_id(client):
    share = await create(client)
    msg = f.user_message(SID)
    items = [f.item("session", f.session(SID, slug=SID, parentID="ses_parent000000000000000000")), f.item("message", msg),
             f.item("part", f.text_part(SID, msg["id"], text=f"my id is {SID}"))]
    assert (await sync(client, share, items)).status == 200
    for path in ("", "/data", "/metadata"):
        resp = await client.get(f"/api/share/{share['id']}{path}")
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == ("no-store" if path == "/metadata" else "no-cache")  # reads revalidate by ETag
        text = await resp.text()
        assert share["secret"] not in text and SID not in text and "ses_parent000000000000000000" not in text
    data = await (await client.get(f"/api/share/{share['id']}/data")).json()
    public = data[0]["data"]["id"]
    assert public.startswith("ses_") and len(public) == 30
    assert data[0]["data"]["slug"] == public
    assert all(i["data"]["sessionID"] == public for i in data if i["type"] in ("message", "part"))
    # Stable across restarts of the derivation (same namespace, same id).
    assert (await (await client.get(f"/api/share/{share['id']}/data")).json())[0]["data"]["id"] == public


async def test_data_order_and_shape(client):
    share = await create(client)
    m2, m1 = f.user_message(SID, id="msg_2"), f.user_message(SID, id="msg_1")
    items = [f.item("message", m2), f.item("message", m1), f.item("part", f.text_part(SID, "msg_2", id="prt_b")),
             f.item("part", f.text_part(SID, "msg_1", id="prt_a")), f.item("model", [f.model()])]
    await sync(client, share, items)
    data = await (await client.get(f"/api/share/{share['id']}/data")).json()
    assert [(i["type"], i["data"].get("id") if isinstance(i["data"], dict) else None) for i in data] == [
        ("session", data[0]["data"]["id"]), ("message", "msg_1"), ("message", "msg_2"),
        ("part", "prt_a"), ("part", "prt_b"), ("session_diff", None), ("model", None)]


async def test_unknown_and_invalid_ids(client):
    for path in ("/api/share/nosuch01", "/api/share/nosuch01/metadata", "/api/share/nosuch01/data"):
        resp = await client.get(path)
        assert resp.status == 404 and await resp.json() == {"error": "Session not found"}
    for path in ("/api/share/a%2Fb", "/api/share/%2e%2e", "/api/share/a%20b/data", "/api/share/nosuch01%0A"):
        assert (await client.get(path)).status == 404


# -- delete -------------------------------------------------------------------------------------


async def test_delete(client):
    share = await create(client)
    assert (await client.delete(f"/api/share/{share['id']}", json={})).status == 400
    resp = await client.delete(f"/api/share/{share['id']}", json={"secret": "bad"})
    assert resp.status == 403 and await resp.json() == {"error": "Invalid secret"}
    resp = await client.delete(f"/api/share/{share['id']}", json={"secret": share["secret"]})
    assert resp.status == 200 and await resp.json() == {"success": True}
    resp = await client.delete(f"/api/share/{share['id']}", json={"secret": share["secret"]})
    assert resp.status == 404 and await resp.json() == {"error": "Share not found"}
    assert (await client.get(f"/api/share/{share['id']}")).status == 404
    assert (await sync(client, share, [])).status == 404
    # Re-creating after a delete starts empty and works.
    again = await create(client)
    assert again["secret"] == share["secret"]
    assert (await (await client.get(f"/api/share/{share['id']}")).json())["metadata"]["syncCount"] == 0


# -- listing, aliases, routing, CORS -------------------------------------------------------------


async def test_list_sessions_requires_key(aiohttp_client, tmp_path):
    from cloudsession.web.app import create_app

    client = await aiohttp_client(create_app(settings_for_tests(tmp_path)))
    assert (await client.get("/api/sessions", headers={"x-opencode-share-key": "x"})).status == 401  # no key configured
    keyed = await aiohttp_client(create_app(settings_for_tests(tmp_path, rpc_shared_key="k3y")))
    assert (await keyed.get("/api/sessions")).status == 401
    resp = await keyed.get("/api/sessions", headers={"x-opencode-share-key": "wrong"})
    assert resp.status == 401 and await resp.json() == {"error": "Unauthorized"}
    resp = await keyed.get("/api/sessions", headers={"x-opencode-share-key": "k3y"})
    assert await resp.json() == {"sessions": [], "count": 0}
    a = await create(keyed, "ses_listaaaa1")
    b = await create(keyed, "ses_listbbbb2")
    await sync(keyed, a, [])
    body = await (await keyed.get("/api/sessions", headers={"x-opencode-share-key": "k3y"})).json()
    assert body["count"] == 2 and [s["id"] for s in body["sessions"]] == [a["id"], b["id"]]
    assert all(isinstance(s["createdAt"], int) and s["sessionID"].startswith("ses_") for s in body["sessions"])
    assert "ses_listaaaa1" not in str(body)


async def test_shares_aliases(client):
    resp = await client.post("/api/shares", json={"sessionID": SID})
    share = await resp.json()
    assert (await client.post(f"/api/shares/{share['id']}/sync", json={"secret": share["secret"], "data": []})).status == 200
    assert (await client.get(f"/api/shares/{share['id']}/data")).status == 200
    assert (await client.delete(f"/api/shares/{share['id']}", json={"secret": share["secret"]})).status == 200


async def test_routing_fallbacks_and_cors(client):
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/sessions"
    for method, path in [("GET", "/api/unknown"), ("PUT", "/api/share"), ("GET", "/api/share"), ("GET", "/api/share/x/sync"),
                         ("POST", "/api/share/x"), ("GET", "/api/share/x/y/z")]:
        resp = await client.request(method, path)
        assert resp.status == 404, (method, path)
        assert await resp.json() == {"error": "Not Found"}
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.get("/nope")
    assert resp.status == 404 and await resp.text() == "404 Not Found" and resp.content_type == "text/plain"
    resp = await client.options("/api/share", headers={"Access-Control-Request-Headers": "content-type"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Methods"] == "GET,HEAD,PUT,POST,DELETE,PATCH"
    assert resp.headers["Access-Control-Allow-Headers"] == "content-type"
    resp = await client.post("/api/share/x/sync", json={})
    assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == "*"
    assert (await client.get("/healthz")).status == 200 and (await client.get("/readyz")).status == 200


async def test_reference_written_bucket(client, settings):
    """A share/<id> + index/<id> written by the Worker is served, synced and deleted."""
    import json as _json

    from cloudsession.store.fs import FilesystemStore

    store = FilesystemStore(settings.store_path)
    sid = "ses_0123456789ABCDEFGH"
    secret = str(uuid.uuid5(uuid.UUID(f.NAMESPACE), sid))
    blob = {"session": f.session(sid), "messages": [{"id": "msg_a", "role": "user", "time": {"created": 1}}], "parts": [],
            "diffs": [{"file": "x", "before": "", "after": "y", "additions": 1, "deletions": 0}], "models": [],
            "metadata": {"createdAt": 1, "lastUpdated": 2, "syncCount": 7, "secret": secret, "sessionID": sid}}
    await store.put("share/ABCDEFGH", _json.dumps(blob).encode())
    await store.put("index/ABCDEFGH", _json.dumps({"id": "ABCDEFGH", "sessionID": sid, "syncCount": 7}).encode())
    data = await (await client.get("/api/share/ABCDEFGH")).json()
    assert data["metadata"] == {"createdAt": 1, "lastUpdated": 2, "syncCount": 7}
    assert secret not in str(data) and sid not in str(data)
    assert (await create(client, sid))["secret"] == secret
    resp = await client.post("/api/share/ABCDEFGH/sync", json={"secret": secret, "data": [f.item("message", {"id": "msg_b", "role": "user"})]})
    assert await resp.json() == {"success": True, "syncCount": 8}
    assert [m["id"] for m in (await (await client.get("/api/share/ABCDEFGH")).json())["messages"]] == ["msg_a", "msg_b"]
    assert (await client.delete("/api/share/ABCDEFGH", json={"secret": secret})).status == 200
    assert await store.get("share/ABCDEFGH") is None and await store.get("index/ABCDEFGH") is None


async def test_reference_blob_with_foreign_secret_and_poison(client, settings):
    """A blob whose stored secret is not derivable (another namespace) keeps working with it;
    null entries the reference let in are skipped instead of poisoning reads."""
    import json as _json

    from cloudsession.store.fs import FilesystemStore

    store = FilesystemStore(settings.store_path)
    blob = {"session": None, "messages": [None, {"id": "msg_a", "role": "user"}], "parts": [None], "diffs": None, "models": [None],
            "metadata": {"createdAt": 1, "lastUpdated": 2, "syncCount": 1, "secret": "legacy-secret", "sessionID": "ses_poisoned01"}}
    await store.put("share/soned01x", _json.dumps(blob).encode())
    assert (await client.get("/api/share/soned01x/data")).status == 200
    assert (await client.post("/api/share/soned01x/sync", json={"secret": "legacy-secret", "data": []})).status == 200
    assert (await client.post("/api/share/soned01x/sync", json={"secret": "other", "data": []})).status == 403
