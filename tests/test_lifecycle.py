"""Share lifecycle and context through HTTP: labels, retention policies, finalised shares."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import factories as f
import pytest
from bs4 import BeautifulSoup
from factories import settings_for_tests

from cloudsession.client.ids import uuid7
from cloudsession.client.transport import RpcBatchTransport
from cloudsession.config import ConfigError, load_settings
from cloudsession.web.app import create_app
from cloudsession.web.keys import SERVICE

SID = "ses_lifecycle000000000000001"
ADMIN = "lifecycle-admin-key"
DAY_MS = 86_400_000


async def create(client, session_id=SID, headers=None, **body):
    resp = await client.post("/api/share", json={"sessionID": session_id, **body}, headers=headers or {})
    assert resp.status == 200, await resp.text()
    return await resp.json()


def store_digest(root: Path) -> str:
    """Every file under the store, names and bytes: to show that a refused request wrote nothing."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
async def admin_client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN)))


# -- labels -----------------------------------------------------------------------------------


async def test_labels_from_the_body_and_the_header_are_kept_shown_and_filterable(admin_client):
    share = await create(
        admin_client, labels={"job": "https://ci.example/jobs/42", "commit": "abc123"}, headers={"X-Cloudsession-Labels": "runner=linux-1, commit=overridden"}
    )
    # The body wins over the header for the same key.
    assert share["labels"] == {"runner": "linux-1", "job": "https://ci.example/jobs/42", "commit": "abc123"}
    await create(admin_client, "ses_lifecycle000000000000002", labels={"job": "other"})
    metadata = await (await admin_client.get(f"/api/share/{share['id']}/metadata")).json()
    assert metadata["labels"]["commit"] == "abc123"

    key = {"x-opencode-share-key": ADMIN}
    listed = await (await admin_client.get("/api/sessions?label=commit=abc123", headers=key)).json()
    assert [s["id"] for s in listed["sessions"]] == [share["id"]]
    both = await (await admin_client.get("/api/sessions?label=commit=abc123&label=runner=linux-1", headers=key)).json()
    assert both["count"] == 1
    none = await (await admin_client.get("/api/sessions?label=commit=nope", headers=key)).json()
    assert none["count"] == 0
    bad = await admin_client.get("/api/sessions?label=noequals", headers=key)
    assert bad.status == 400

    page = BeautifulSoup(await (await admin_client.get(f"/share/{share['id']}")).text(), "html.parser")
    assert {b.get_text() for b in page.select(".badge.label")} == {"commit=abc123", "job=https://ci.example/jobs/42", "runner=linux-1"}
    listing = BeautifulSoup(await (await admin_client.get("/sessions?label=runner=linux-1", headers=key)).text(), "html.parser")
    assert len(listing.select(".session-card")) == 1 and "runner=linux-1" in listing.get_text()
    searched = BeautifulSoup(await (await admin_client.get("/sessions?q=abc123", headers=key)).text(), "html.parser")
    assert len(searched.select(".session-card")) == 1


@pytest.mark.parametrize(
    "labels, header",
    [
        ({"ok": 1}, None),
        (["job", "x"], None),
        ({"bad key!": "x"}, None),
        ({"k": "x" * 257}, None),
        ({f"k{n}": "v" for n in range(17)}, None),
        ({"k": "line\nbreak"}, None),
        (None, "novalue"),
        (None, "bad key=1"),
    ],
)
async def test_bad_labels_are_a_400_and_create_nothing(client, settings, labels, header):
    store = settings.store_path
    store.mkdir(parents=True, exist_ok=True)
    before = store_digest(store)
    body = {"sessionID": SID} | ({"labels": labels} if labels is not None else {})
    resp = await client.post("/api/share", json=body, headers={"X-Cloudsession-Labels": header} if header else {})
    assert resp.status == 400
    assert "labels" in (await resp.text()).lower()
    assert store_digest(store) == before


# -- retention ---------------------------------------------------------------------------------

RETENTION = {
    "default_ttl": "90d",
    "max_ttl": "365d",
    "rules": [{"user_agent": "opencode-ci", "ttl": "7d"}, {"label": "ephemeral=true", "ttl": "1d"}],
}


@pytest.fixture
async def retained(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(settings_for_tests(tmp_path / "data", retention=RETENTION)))


def days_left(share: dict) -> float:
    return (share["expiresAt"] - time.time() * 1000) / DAY_MS


async def test_retention_chooses_the_ttl_of_shares_that_did_not_ask(retained):
    assert 89.9 < days_left(await create(retained, "ses_ret_default_00000000001")) <= 90
    ci = await create(retained, "ses_ret_ci_0000000000000001", headers={"User-Agent": "opencode-ci/1.0"})
    assert 6.9 < days_left(ci) <= 7
    labelled = await create(retained, "ses_ret_label_0000000000001", labels={"ephemeral": "true"})
    assert 0.9 < days_left(labelled) <= 1
    header = await create(retained, "ses_ret_header_000000000001", headers={"X-Cloudsession-TTL": "12h", "User-Agent": "opencode-ci"})
    assert 0.49 < days_left(header) <= 0.5
    bad = await retained.post("/api/share", json={"sessionID": "ses_ret_bad_000000000000001"}, headers={"X-Cloudsession-TTL": "soon"})
    assert bad.status == 400


async def test_explicit_expiry_wins_inside_the_maximum(retained):
    explicit = await create(retained, "ses_ret_explicit_0000000001", ttl=3600)
    assert 0.04 < days_left(explicit) <= 1 / 24
    # Beyond the maximum: capped (the request is honoured as far as policy allows).
    long = await create(retained, "ses_ret_long_00000000000001", ttl=3 * 365 * 86400)
    assert 364.9 < days_left(long) <= 365
    # Clearing the expiry cannot outlive the maximum either.
    cleared = await retained.post(f"/api/share/{long['id']}/expiry", json={"secret": long["secret"], "expiresAt": None})
    assert cleared.status == 200 and 364.9 < ((await cleared.json())["expiresAt"] - time.time() * 1000) / DAY_MS <= 365


async def test_without_retention_settings_shares_never_expire(client):
    assert "expiresAt" not in await create(client)


def test_retention_in_the_config_file(tmp_path):
    config = tmp_path / "cloudsession.toml"
    config.write_text(
        'name = "x"\n[retention]\ndefault_ttl = "30d"\nmax_ttl = 31536000\n'
        '[[retention.rules]]\nuser_agent = "GitHub-Actions"\nttl = "7d"\n'
        '[env.prod.retention]\ndefault_ttl = "60d"\n'
    )
    settings = load_settings(config_file=config, environ={})
    assert settings.retention.default_ttl_seconds == 30 * 86400
    assert settings.retention.max_ttl_seconds == 365 * 86400
    assert settings.retention.rules[0].ttl_seconds == 7 * 86400
    assert load_settings(config_file=config, env_name="prod", environ={}).retention.default_ttl_seconds == 60 * 86400
    env = load_settings(environ={"CLOUDSESSION_RETENTION_DEFAULT_TTL": "2w"})
    assert env.retention.default_ttl_seconds == 14 * 86400
    config.write_text('[retention]\ndefault_ttl = "soon"\n')
    with pytest.raises(ConfigError, match="default_ttl"):
        load_settings(config_file=config, environ={})
    config.write_text('[[retention.rules]]\nuser_agent = "("\nttl = "1d"\n')
    with pytest.raises(ConfigError, match="regular expression"):
        load_settings(config_file=config, environ={})


# -- finalise -----------------------------------------------------------------------------------


async def test_a_final_share_refuses_every_write_and_keeps_its_data(admin_client, tmp_path):
    share = await create(admin_client)
    sid, secret = share["id"], share["secret"]
    synced = await admin_client.post(f"/api/share/{sid}/sync", json={"secret": secret, "data": [f.item("session", f.session(SID, title="Final"))]})
    assert synced.status == 200
    wrong = await admin_client.post(f"/api/share/{sid}/finalize", json={"secret": "nope"})
    assert wrong.status == 403
    done = await admin_client.post(f"/api/share/{sid}/finalize", json={"secret": secret})
    assert done.status == 200 and (await done.json())["final"] is True

    store = tmp_path / "data" / "store"
    await admin_client.app[SERVICE].settle_index()  # the index entry lands just after the answer
    before = store_digest(store)
    attempts = [
        ("sync", {"secret": secret, "data": [f.item("session", f.session(SID, title="Changed"))]}),
        ("ops", {"secret": secret, "ops": [{"op_id": uuid7(), "batch_id": "b", "seq": 0, "item": f.item("session", f.session(SID))}]}),
        ("privacy", {"secret": secret, "private": True}),
        ("expiry", {"secret": secret, "ttl": 60}),
    ]
    for route, body in attempts:
        resp = await admin_client.post(f"/api/share/{sid}/{route}", json=body)
        assert resp.status == 409, route
        assert "final" in (await resp.json())["error"]
    # The wrong secret still learns nothing: 403 before 409.
    assert (await admin_client.post(f"/api/share/{sid}/sync", json={"secret": "nope", "data": []})).status == 403
    assert store_digest(store) == before

    page = await admin_client.get(f"/share/{sid}")
    assert "public" in page.headers["Cache-Control"] and "max-age" in page.headers["Cache-Control"]
    soup = BeautifulSoup(await page.text(), "html.parser")
    assert soup.select_one(".badge.final") is not None and "Final" in soup.select_one("h1").get_text()
    listed = await (await admin_client.get("/api/sessions", headers={"x-opencode-share-key": ADMIN})).json()
    assert listed["sessions"][0]["final"] is True

    # Rotation is allowed (an owner may still revoke a leaked secret), and so is deleting.
    rotated = await admin_client.post(f"/api/share/{sid}/rotate", json={"secret": secret})
    assert rotated.status == 200
    new_secret = (await rotated.json())["secret"]

    # Unfreezing: not by a stranger, by the owner, or by the admin.
    assert (await admin_client.post(f"/api/share/{sid}/unfinalize", json={"secret": secret})).status == 403
    reopened = await admin_client.post(f"/api/share/{sid}/unfinalize", json={"secret": new_secret})
    assert reopened.status == 200 and (await reopened.json())["final"] is False
    again = await admin_client.post(f"/api/share/{sid}/sync", json={"secret": new_secret, "data": [f.item("session", f.session(SID, title="Open"))]})
    assert again.status == 200
    await admin_client.post(f"/api/share/{sid}/finalize", json={"secret": new_secret})
    by_admin = await admin_client.post(f"/api/share/{sid}/unfinalize", headers={"x-opencode-share-key": ADMIN})
    assert by_admin.status == 200 and (await by_admin.json())["final"] is False
    assert (await admin_client.delete(f"/api/share/{sid}", json={"secret": new_secret})).status == 200


async def test_finalize_over_rpc(aiohttp_server, tmp_path):
    server = await aiohttp_server(create_app(settings_for_tests(tmp_path / "data")))
    transport = RpcBatchTransport(str(server.make_url("")).rstrip("/"))
    try:
        share = await transport.call("createShare", SID, None, {"labels": {"job": "rpc"}})
        assert share["labels"] == {"job": "rpc"}
        frozen = await transport.call("finalizeShare", share["id"], share["secret"])
        assert frozen["final"] is True
        with pytest.raises(Exception, match="final"):
            await transport.call("syncShare", share["id"], share["secret"], [f.item("session", f.session(SID))])
        opened = await transport.call("unfinalizeShare", share["id"], share["secret"])
        assert opened["final"] is False
        assert (await transport.call("syncShare", share["id"], share["secret"], [f.item("session", f.session(SID))]))["success"] is True
    finally:
        await transport.close()


# -- audit trail ----------------------------------------------------------------------------------


async def test_the_audit_trail_records_who_changed_what_and_keeps_it_with_the_share(aiohttp_client, tmp_path, caplog):
    settings = settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN, compact_max_entries=2)
    web = await aiohttp_client(create_app(settings))
    ci = {"User-Agent": "ci-bot/1.0", "X-Request-ID": "req-create-1"}
    share = await create(web, headers=ci)
    sid, secret = share["id"], share["secret"]
    rotated = await (await web.post(f"/api/share/{sid}/rotate", json={"secret": secret}, headers={"X-Request-ID": "req-rotate"})).json()
    secret = rotated["secret"]
    assert (await web.post(f"/api/share/{sid}/privacy", json={"secret": secret, "private": True})).status == 200
    assert (await web.post(f"/api/share/{sid}/expiry", json={"secret": secret, "ttl": 3600})).status == 200
    assert (await web.post(f"/api/share/{sid}/finalize", json={"secret": secret})).status == 200
    assert (await web.post(f"/api/share/{sid}/unfinalize", headers={"x-opencode-share-key": ADMIN})).status == 200
    # A refused attempt is not a change: it goes to the log, not the trail.
    with caplog.at_level("INFO", logger="cloudsession.audit"):
        assert (await web.post(f"/api/share/{sid}/rotate", json={"secret": "wrong"})).status == 403
    assert any("action=rotate outcome=denied" in r.getMessage() for r in caplog.records)

    owned = await web.post(f"/api/share/{sid}/audit", json={"secret": secret})
    assert owned.status == 200
    events = (await owned.json())["events"]
    assert [e["action"] for e in events] == ["create", "rotate", "privacy", "expiry", "finalize", "unfinalize"]
    assert events[0]["userAgent"] == "ci-bot/1.0" and events[0]["requestId"] == "req-create-1"
    assert events[1]["requestId"] == "req-rotate" and len(events[2]["requestId"]) == 32  # generated
    assert all(e["outcome"] == "ok" and e["address"] == "127.0.0.1" and e["via"] == "http" for e in events)
    assert events[2]["private"] is True and events[5]["admin"] is True
    text = await owned.text()
    assert secret not in text and share["secret"] not in text and SID not in text

    assert (await web.post(f"/api/share/{sid}/audit", json={"secret": "wrong"})).status == 403
    assert (await web.get(f"/api/share/{sid}/audit")).status == 401
    admin = await web.get(f"/api/share/{sid}/audit", headers={"x-opencode-share-key": ADMIN})
    assert [e["action"] for e in (await admin.json())["events"]] == [e["action"] for e in events]

    # Kept through compaction (compact_max_entries=2) and by a fresh process on the same store.
    fresh = await aiohttp_client(create_app(settings))
    again = await (await fresh.get(f"/api/share/{sid}/audit", headers={"x-opencode-share-key": ADMIN})).json()
    assert again["events"] == events

    # The CLI reads it from the store.
    done = subprocess.run(
        [sys.executable, "-m", "cloudsession", "admin", "audit", sid, "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, env={**os.environ, "SESSIONS_SHARED_SECRET": f.NAMESPACE}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["action"] for line in done.stdout.splitlines()] == [e["action"] for e in events]

    # Removed with the share; the delete itself is logged.
    with caplog.at_level("INFO", logger="cloudsession.audit"):
        assert (await web.delete(f"/api/share/{sid}", json={"secret": secret})).status == 200
    assert any(f"share={sid} action=delete outcome=ok" in r.getMessage() for r in caplog.records)
    assert (await web.get(f"/api/share/{sid}/audit", headers={"x-opencode-share-key": ADMIN})).status == 404
