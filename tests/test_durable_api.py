"""The durable sync protocol over REST, through HTTP against the app factory: operation
envelopes applied once, rejections, the cursor, redeem, capability epochs, private shares,
Idempotency-Key on the legacy routes, expiry and the sweep."""

from __future__ import annotations

import asyncio
import time

import factories as f
import pytest

from cloudsession.client.ids import uuid7
from cloudsession.shares import state as journal
from cloudsession.shares.inputs import MAX_OPS_PER_REQUEST
from cloudsession.shares.sweep import sweep
from cloudsession.web.app import SERVICE

SID = "ses_durable0000000000000001"


async def create(client, session_id=SID, **options):
    resp = await client.post("/api/share", json={"sessionID": session_id, **options})
    assert resp.status == 200, await resp.text()
    return await resp.json()


def op(n, *, depends_on=None, batch="b1", seq=None, **extra):
    envelope = {
        "op_id": uuid7(),
        "batch_id": batch,
        "seq": n if seq is None else seq,
        "item": f.item("message", {"id": f"msg_{n:04d}", "role": "user", "n": n}),
        **extra,
    }
    if depends_on is not None:
        envelope["depends_on"] = depends_on
    return envelope


async def append(client, share, ops, secret=None, **extra):
    return await client.post(f"/api/share/{share['id']}/ops", json={"secret": secret or share["secret"], "ops": ops, **extra})


async def appended(client, share, ops, **extra):
    resp = await append(client, share, ops, **extra)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def read(client, share, **kwargs):
    resp = await client.get(f"/api/share/{share['id']}", **kwargs)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def redeem(client, share, secret=None):
    return await client.post(f"/api/share/{share['id']}/redeem", json={"secret": secret or share["secret"]})


# -- appendOps ------------------------------------------------------------------------------


async def test_same_batch_twice_applies_once_and_answers_the_same(client):
    share = await create(client)
    ops = [op(1), op(2), op(3)]
    first = await appended(client, share, ops)
    assert first["cursor"] == 3
    assert first["applied"] == [{"op_id": o["op_id"], "cursor": n} for n, o in enumerate(ops, 1)]
    assert first["duplicates"] == [] and first["rejected"] == []
    again = await appended(client, share, ops)
    # The retry acknowledges the same ops at the same cursors, as duplicates, and applies nothing.
    assert again == {"cursor": 3, "applied": [], "duplicates": first["applied"], "rejected": []}
    data = await read(client, share)
    assert data["metadata"]["syncCount"] == 3
    assert [m["id"] for m in data["messages"]] == ["msg_0001", "msg_0002", "msg_0003"]
    # A batch that mixes known and new ops applies only the new ones.
    mixed = await appended(client, share, [ops[2], op(4, seq=9)])
    assert [a["cursor"] for a in mixed["applied"]] == [4] and mixed["duplicates"] == [first["applied"][2]]


async def test_dependencies_and_expected_cursor_are_enforced_in_order(client):
    share = await create(client)
    a, b = op(1), op(2, seq=6)
    orphan = op(3, depends_on=uuid7())
    after_a = op(4, depends_on=a["op_id"])
    on_orphan = op(5, depends_on=[a["op_id"], orphan["op_id"]])
    answer = await appended(client, share, [a, orphan, after_a, on_orphan, b])
    assert [x["op_id"] for x in answer["applied"]] == [a["op_id"], after_a["op_id"], b["op_id"]]
    assert answer["rejected"] == [
        {"op_id": orphan["op_id"], "reason": "unknown_dependency"},
        {"op_id": on_orphan["op_id"], "reason": "dependency_rejected"},
    ]
    # A dependency that comes later in the batch is not known yet: order is enforced.
    early = op(7, depends_on=(late := op(6, batch="b2"))["op_id"], batch="b2", seq=1)
    late["seq"] = 2
    answer = await appended(client, share, [early, late])
    assert answer["rejected"] == [{"op_id": early["op_id"], "reason": "unknown_dependency"}]
    assert answer["cursor"] == 4
    # expected_cursor is the cursor before the op.
    stale, fresh = op(8, batch="b3", expected_cursor=3), op(9, batch="b3", expected_cursor=4)
    answer = await appended(client, share, [stale, fresh])
    assert answer["rejected"] == [{"op_id": stale["op_id"], "reason": "cursor_mismatch"}]
    assert answer["applied"] == [{"op_id": fresh["op_id"], "cursor": 5}]
    # Rejections are final for an op id: the same batch again gets the same answer.
    assert (await appended(client, share, [stale, fresh]))["rejected"] == answer["rejected"]
    data = await read(client, share)
    assert sorted(m["id"] for m in data["messages"]) == ["msg_0001", "msg_0002", "msg_0004", "msg_0006", "msg_0009"]


async def test_cursor_counts_legacy_syncs_and_continues_across_redeem(client):
    share = await create(client)
    resp = await client.post(f"/api/share/{share['id']}/sync", json={"secret": share["secret"], "data": [f.item("session", f.session(SID))]})
    assert (await resp.json())["syncCount"] == 1
    redeemed = await (await redeem(client, share)).json()
    assert redeemed["cursor"] == 1 and redeemed["capabilityEpoch"] == 0
    assert redeemed["metadata"]["syncCount"] == 1 and redeemed["metadata"]["sessionID"] != SID
    assert SID not in str(redeemed) and share["secret"] not in str(redeemed)
    answer = await appended(client, share, [op(1), op(2)])
    assert [a["cursor"] for a in answer["applied"]] == [2, 3]
    assert (await (await redeem(client, share)).json())["cursor"] == 3


async def test_epoch_named_by_the_client_must_be_current(client):
    share = await create(client)
    assert (await append(client, share, [op(1)], epoch=1)).status == 403
    answer = await appended(client, share, [op(2), op(3, capability_epoch=1)], epoch=0)
    assert answer["rejected"][0]["reason"] == "epoch_mismatch" and len(answer["applied"]) == 1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(op_id="not-a-uuid"),
        lambda o: o.update(op_id="0d8b2a4c-1d2e-4f00-8a00-000000000000"),  # UUIDv4-shaped
        lambda o: o.pop("batch_id"),
        lambda o: o.update(seq=-1),
        lambda o: o.update(item={"type": "bogus", "data": {}}),
        lambda o: o.update(item={"type": "part", "data": {"id": "p"}}),
        lambda o: o.update(depends_on=["x"]),
        lambda o: o.update(expected_cursor="3"),
    ],
)
async def test_bad_envelopes_are_refused_whole_and_store_nothing(client, mutate):
    share = await create(client)
    good, bad = op(1), op(2)
    mutate(bad)
    resp = await append(client, share, [good, bad])
    assert resp.status == 400
    assert (await resp.json())["success"] is False
    assert (await (await redeem(client, share)).json())["cursor"] == 0
    assert (await read(client, share))["messages"] == []


async def test_request_level_limits(client):
    share = await create(client)
    resp = await append(client, share, [op(2), op(1)])  # sequence goes backwards in one batch
    assert resp.status == 400
    resp = await append(client, share, [op(n) for n in range(MAX_OPS_PER_REQUEST + 1)])
    assert resp.status == 400
    resp = await client.post(f"/api/share/{share['id']}/ops", json={"secret": share["secret"], "ops": "nope"})
    assert resp.status == 400
    assert (await append(client, {"id": "nosuch00"}, [op(1)], secret=share["secret"])).status == 404
    assert (await append(client, share, [op(1)], secret="wrong")).status == 403


async def test_ledger_window_refuses_ops_it_has_forgotten(client, monkeypatch):
    monkeypatch.setattr(journal, "OP_LEDGER_WINDOW", 3)
    share = await create(client)
    ops = [op(n) for n in range(1, 6)]
    await appended(client, share, ops)
    # The two oldest ids fell out of the window: a late retry is refused, never applied twice.
    late = await appended(client, share, ops[:2])
    assert late["rejected"] == [{"op_id": o["op_id"], "reason": "outside_window"} for o in ops[:2]]
    assert (await appended(client, share, ops[4:]))["duplicates"][0]["cursor"] == 5
    assert (await read(client, share))["metadata"]["syncCount"] == 5


async def test_ledger_survives_compaction_and_a_fresh_process(aiohttp_client, tmp_path):
    from factories import settings_for_tests

    from cloudsession.web.app import create_app

    settings = settings_for_tests(tmp_path / "data", compact_max_entries=2)
    client = await aiohttp_client(create_app(settings))
    share = await create(client)
    ops = [op(n, batch=f"b{n}", seq=0) for n in range(1, 7)]
    for one in ops:
        await appended(client, share, [one])
    service = client.app[SERVICE]
    # A background compaction (every 2 entries here) may still be uploading an older cut: the
    # forced one then loses its If-Match and folds nothing. Force again until all is folded.
    for _ in range(20):
        await service.compact(share["id"], force=True)
        state = await service.load(share["id"])
        if state.snapshot_seq == state.meta.seq:
            break
        await asyncio.sleep(0.05)
    assert state.snapshot_seq == state.meta.seq  # everything is folded into the snapshot
    await client.close()
    fresh = await aiohttp_client(create_app(settings))
    again = await appended(fresh, share, ops)
    assert again["applied"] == [] and [d["cursor"] for d in again["duplicates"]] == [1, 2, 3, 4, 5, 6]


# -- capability epochs --------------------------------------------------------------------------


async def test_rotation_revokes_the_old_secret_everywhere(client):
    share = await create(client)
    resp = await client.post(f"/api/share/{share['id']}/rotate", json={"secret": share["secret"]})
    rotated = await resp.json()
    assert resp.status == 200 and rotated["capabilityEpoch"] == 1
    assert rotated["secret"] != share["secret"] and rotated["id"] == share["id"] and rotated["url"] == share["url"]
    old = share["secret"]
    sid = share["id"]
    assert (await client.post(f"/api/share/{sid}/sync", json={"secret": old, "data": []})).status == 403
    assert (await append(client, share, [op(1)], secret=old)).status == 403
    assert (await redeem(client, share, secret=old)).status == 403
    assert (await client.post(f"/api/share/{sid}/rotate", json={"secret": old})).status == 403
    assert (await client.delete(f"/api/share/{sid}", json={"secret": old})).status == 403
    # The idempotent create hands out the current secret; the new one works.
    assert (await create(client))["secret"] == rotated["secret"]
    new = {**share, "secret": rotated["secret"]}
    assert (await appended(client, new, [op(1)], epoch=1))["cursor"] == 1
    assert (await (await redeem(client, new)).json())["capabilityEpoch"] == 1


async def test_epoch_zero_secret_is_the_reference_one(client):
    # Existing clients are unaffected: epoch 0 is uuid5(namespace, sessionID).
    share = await create(client, "session-abc123")
    assert share["secret"] == "3bd6334d-9d1a-5e35-b332-aaf934f6f45c"
    assert (await (await redeem(client, share)).json())["capabilityEpoch"] == 0


# -- private shares and read tokens ---------------------------------------------------------------


async def test_private_share_needs_its_read_token_and_the_token_cannot_write(client):
    share = await create(client, private=True)
    token = share["readToken"]
    assert token.startswith("rt_") and list(share)[:3] == ["id", "secret", "url"]
    sid = share["id"]
    for path in (f"/api/share/{sid}", f"/api/share/{sid}/data", f"/api/share/{sid}/metadata"):
        resp = await client.get(path)
        assert resp.status == 404 and (await resp.json()) == {"error": "Session not found"}
        assert (await client.get(path, params={"token": "rt_wrong"})).status == 404
        assert (await client.get(path, params={"token": token})).status == 200
        assert (await client.get(path, headers={"x-opencode-share-token": token})).status == 200
    assert (await client.get(f"/share/{sid}")).status == 404
    # A read token is not a write capability.
    assert (await append(client, share, [op(1)], secret=token)).status == 403
    assert (await client.post(f"/api/share/{sid}/sync", json={"secret": token, "data": []})).status == 403
    assert (await client.delete(f"/api/share/{sid}", json={"secret": token})).status == 403
    assert (await client.post(f"/api/share/{sid}/privacy", json={"secret": token, "private": False})).status == 403
    # Switch public and back; the explicit call hands out the same token.
    resp = await client.post(f"/api/share/{sid}/privacy", json={"secret": share["secret"], "private": False})
    assert (await resp.json())["private"] is False
    assert (await client.get(f"/api/share/{sid}")).status == 200
    await client.post(f"/api/share/{sid}/privacy", json={"secret": share["secret"], "private": True})
    assert (await client.get(f"/api/share/{sid}")).status == 404
    resp = await client.post(f"/api/share/{sid}/read-token", json={"secret": share["secret"]})
    assert (await resp.json())["readToken"] == token
    # Rotation revokes the read token along with the secret.
    rotated = await (await client.post(f"/api/share/{sid}/rotate", json={"secret": share["secret"]})).json()
    assert (await client.get(f"/api/share/{sid}", params={"token": token})).status == 404
    assert (await client.get(f"/api/share/{sid}", params={"token": rotated["readToken"]})).status == 200


async def test_create_options_apply_only_to_a_new_share(client):
    share = await create(client)
    assert list(share) == ["id", "secret", "url"]
    again = await create(client, private=True, ttl=60)
    assert list(again) == ["id", "secret", "url"]  # existing share: options ignored
    for bad in ({"private": "yes"}, {"ttl": 0}, {"ttl": 10**12}, {"ttl": 5, "expiresAt": 10**13}, {"expiresAt": 1}):
        resp = await client.post("/api/share", json={"sessionID": "ses_badoptions0001", **bad})
        assert resp.status == 400, bad
    assert (await client.get("/api/share/ions0001")).status == 404


# -- Idempotency-Key on the legacy routes ---------------------------------------------------------


async def test_idempotency_key_on_sync_create_and_delete(client):
    share = await create(client)
    sid = share["id"]
    body = {"secret": share["secret"], "data": [f.item("message", {"id": "m1", "role": "user"})]}
    headers = {"Idempotency-Key": "sync-1"}
    first = await client.post(f"/api/share/{sid}/sync", json=body, headers=headers)
    again = await client.post(f"/api/share/{sid}/sync", json=body, headers=headers)
    assert first.status == again.status == 200
    assert await first.json() == await again.json() == {"success": True, "syncCount": 1}
    other = await client.post(f"/api/share/{sid}/sync", json={**body, "data": []}, headers=headers)
    assert other.status == 409
    assert (await client.post(f"/api/share/{sid}/sync", json={**body, "secret": "x"}, headers=headers)).status == 403
    assert (await client.post(f"/api/share/{sid}/sync", json=body, headers={"Idempotency-Key": "a b"})).status == 400
    assert (await read(client, share))["metadata"]["syncCount"] == 1

    created = await client.post("/api/share", json={"sessionID": SID}, headers={"Idempotency-Key": "c1"})
    assert await created.json() == share
    assert await (await client.post("/api/share", json={"sessionID": SID}, headers={"Idempotency-Key": "c1"})).json() == share

    headers = {"Idempotency-Key": "del-1"}
    first = await client.delete(f"/api/share/{sid}", json={"secret": share["secret"]}, headers=headers)
    again = await client.delete(f"/api/share/{sid}", json={"secret": share["secret"]}, headers=headers)
    assert first.status == again.status == 200 and await again.json() == {"success": True}
    plain = await client.delete(f"/api/share/{sid}", json={"secret": share["secret"]})
    assert plain.status == 404
    other = await client.delete(f"/api/share/{sid}", json={"secret": "x"}, headers=headers)
    assert other.status == 409


async def test_idempotent_delete_of_a_malformed_share_id_is_a_404(client):
    # The id is checked before the delete record's key is built from it: a key the store
    # refuses would otherwise surface as a 503.
    for bad in ("a~b", "..", "x" * 65):
        resp = await client.delete(f"/api/share/{bad}", json={"secret": "s"}, headers={"Idempotency-Key": "k1"})
        assert resp.status == 404, (bad, resp.status)


# -- expiry -------------------------------------------------------------------------------------


async def test_expired_share_is_gone_everywhere_and_the_sweep_removes_it(client, settings):
    soon = int(time.time() * 1000) + 400
    share = await create(client, expiresAt=soon)
    assert share["expiresAt"] == soon
    sid = share["id"]
    await appended(client, share, [op(1)])
    keep = await create(client, "ses_durablekeep0000000000kept", ttl=3600)
    assert (await client.get(f"/api/share/{sid}")).status == 200
    await asyncio.sleep(0.5)
    for method, path, body in [
        ("GET", f"/api/share/{sid}", None),
        ("GET", f"/api/share/{sid}/data", None),
        ("GET", f"/api/share/{sid}/metadata", None),
        ("GET", f"/share/{sid}", None),
        ("POST", f"/api/share/{sid}/sync", {"secret": share["secret"], "data": []}),
        ("POST", f"/api/share/{sid}/ops", {"secret": share["secret"], "ops": [op(2)]}),
        ("POST", f"/api/share/{sid}/redeem", {"secret": share["secret"]}),
        ("POST", f"/api/share/{sid}/expiry", {"secret": share["secret"], "ttl": 60}),
    ]:
        resp = await client.request(method, path, json=body)
        assert resp.status == 410, (method, path)
    store_dir = settings.store_path
    assert any(store_dir.rglob(f"*{sid}*"))
    report = await sweep(client.app[SERVICE])
    assert report.expired == [sid]
    assert [p for p in store_dir.rglob(f"*{sid}*") if p.is_file()] == []
    assert (await client.get(f"/api/share/{sid}")).status == 404
    assert (await client.get(f"/api/share/{keep['id']}")).status == 200
    # Re-creating starts a fresh share at cursor 0.
    fresh = await create(client)
    assert fresh["id"] == sid and (await (await redeem(client, fresh)).json())["cursor"] == 0


async def test_expiry_can_be_changed_and_cleared(client):
    share = await create(client, ttl=60)
    sid, secret = share["id"], share["secret"]
    resp = await client.post(f"/api/share/{sid}/expiry", json={"secret": secret, "ttl": 7200})
    moved = (await resp.json())["expiresAt"]
    assert moved > share["expiresAt"]
    assert (await (await client.get(f"/api/share/{sid}/metadata")).json())["expiresAt"] == moved
    resp = await client.post(f"/api/share/{sid}/expiry", json={"secret": secret})
    assert await resp.json() == {"expiresAt": None}
    assert "expiresAt" not in await (await client.get(f"/api/share/{sid}/metadata")).json()
    assert (await client.post(f"/api/share/{sid}/expiry", json={"secret": secret, "expiresAt": 5})).status == 400


async def test_private_share_html_fragments_and_websocket_need_the_token(client):
    share = await create(client, "ses_durableprivatehtml00001", private=True)
    sid, token = share["id"], share["readToken"]
    assert (await client.get(f"/share/{sid}")).status == 404
    page = await client.get(f"/share/{sid}", params={"token": token})
    assert page.status == 200 and token not in await page.text()
    assert (await client.get(f"/share/{sid}/fragments")).status == 404
    assert (await client.get(f"/share/{sid}/fragments", params={"token": token})).status == 200
    assert (await client.get(f"/ws/{sid}", headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})).status == 404
    ws = await client.ws_connect(f"/ws/{sid}", params={"token": token})
    await client.post(f"/api/share/{sid}/sync", json={"secret": share["secret"], "data": [f.item("message", {"id": "m1", "role": "user"})]})
    frame = await asyncio.wait_for(ws.receive_json(), 5)
    assert frame == [f.item("message", {"id": "m1", "role": "user"})]
    await ws.close()


async def test_creating_an_expired_share_again_starts_afresh_without_waiting_for_the_sweep(client):
    share = await create(client, expiresAt=int(time.time() * 1000) + 300)
    await appended(client, share, [op(1)])
    await asyncio.sleep(0.4)
    assert (await client.get(f"/api/share/{share['id']}")).status == 410
    fresh = await create(client)
    assert fresh["id"] == share["id"] and "expiresAt" not in fresh
    data = await read(client, fresh)
    assert data["messages"] == [] and data["metadata"]["syncCount"] == 0
