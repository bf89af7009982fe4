"""``cloudsession import <url>`` and ``cloudsession export <id>``: URL forms, both payload shapes,
private shares, every failure with its message and exit code, and the operator's export.

Servers are real HTTP servers: the cloudsession app built by ``create_app`` on a filesystem
store, and small stand-ins for what other servers answer (the reference Worker's object form,
HTML error pages, redirects). The CLI runs through ``cli.main`` in a thread (it owns its loop).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import factories as f
import pytest
from aiohttp import web

from cloudsession import cli
from cloudsession.client.importer import BadShareData, InvalidShareURL, parse_share_url, to_export
from cloudsession.config import Settings
from cloudsession.web.app import create_app

SES = "ses_importtest000000000001"


def share_items(session_id: str = SES) -> list[dict[str, Any]]:
    user = f.user_message(session_id, id="msg_0001")
    reply = f.assistant_message(session_id, "msg_0001", id="msg_0002")
    return [
        f.item("session", f.session(session_id)),
        f.item("message", user),
        f.item("part", f.text_part(session_id, "msg_0001", "question", id="prt_0001")),
        f.item("message", reply),
        f.item("part", f.text_part(session_id, "msg_0002", "answer two", id="prt_0003")),
        f.item("part", f.text_part(session_id, "msg_0002", "answer one", id="prt_0002")),
        f.item("model", [f.model()]),
    ]


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """The CLI sees the same namespace as the app under test."""
    monkeypatch.setenv("SESSIONS_SHARED_SECRET", settings.shared_secret.get_secret_value())
    monkeypatch.delenv("CLOUDSESSION_SHARE_TOKEN", raising=False)
    monkeypatch.delenv("CLOUDSESSION_STORE", raising=False)
    return settings


@pytest.fixture
async def live(aiohttp_server, env: Settings):  # type: ignore[no-untyped-def]
    """A cloudsession server on a real port."""
    return await aiohttp_server(create_app(env))


async def make_share(live, items: list[dict[str, Any]] | None = None, **options: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    async with live_client(live) as client:
        async with client.post("/api/share", json={"sessionID": SES, **options}) as resp:
            share = await resp.json()
        async with client.post(f"/api/share/{share['id']}/sync", json={"secret": share["secret"], "data": items or share_items()}) as resp:
            assert resp.status == 200, await resp.text()
    return share


def live_client(live) -> aiohttp.ClientSession:  # type: ignore[no-untyped-def]
    return aiohttp.ClientSession(base_url=str(live.make_url("/")))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- URL parsing and conversion -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url, share_id, token",
    [
        ("https://share.example.com/share/abc123", "abc123", None),
        ("  http://127.0.0.1:8787/share/D0r58s46/  ", "D0r58s46", None),
        ("https://share.example.com/api/share/abc-1_2", "abc-1_2", None),
        ("https://share.example.com/api/shares/abc/data", "abc", None),
        ("https://share.example.com/share/abc?token=rt_x", "abc", "rt_x"),
    ],
)
def test_share_url_forms(url: str, share_id: str, token: str | None) -> None:
    location = parse_share_url(url)
    assert (location.share_id, location.token) == (share_id, token)
    assert location.data_url.endswith(f"/api/share/{share_id}/data")


@pytest.mark.parametrize(
    "url",
    ["ftp://host/share/abc", "https:///share/abc", "https://host/s/abc", "https://host/share/a.b", "https://host/share/",
     "https://user:pw@host/share/abc", "https://host:99999/share/abc", "https://host/share/" + "a" * 3000, "not a url"],
)
def test_invalid_share_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidShareURL) as info:
        parse_share_url(url)
    assert info.value.exit_code == 2
    assert "pw" not in info.value.message


def test_explicit_token_wins_over_the_link() -> None:
    assert parse_share_url("https://h/share/abc?token=from-link", "explicit").token == "explicit"


def test_conversion_follows_the_clients_reading_rules() -> None:
    items = share_items()
    newer = dict(items[1]["data"], agent="plan")
    items += [
        f.item("session", f.session(SES, title="ignored: only the first session counts")),
        f.item("message", newer),
        f.item("part", f.text_part(SES, "msg_missing", id="prt_0009")),
        f.item("part", {"id": "prt_bad"}),
    ]
    conversion = to_export(items)
    doc = conversion.document
    assert doc["info"]["title"] == f.session(SES)["title"]
    assert [m["info"]["id"] for m in doc["messages"]] == ["msg_0001", "msg_0002"]
    assert doc["messages"][0]["info"]["agent"] == "plan"
    assert [p["id"] for p in doc["messages"][1]["parts"]] == ["prt_0002", "prt_0003"]
    assert conversion.warnings == ["skipped 1 parts without id and messageID", "skipped 1 parts whose message is not in the share"]


def test_the_reference_object_form_converts_like_the_flat_form() -> None:
    items = share_items()
    obj = {
        "session": items[0]["data"],
        "messages": [i["data"] for i in items if i["type"] == "message"][::-1],
        "parts": [i["data"] for i in items if i["type"] == "part"],
        "diffs": [], "models": [], "metadata": {"secret": "s3cret", "sessionID": SES},
    }
    assert to_export(obj).document == to_export(items).document
    assert "s3cret" not in json.dumps(to_export(obj).document)


@pytest.mark.parametrize(
    "payload, message",
    [
        ([], "no session"),
        ([f.item("session", f.session(SES))], "no messages"),
        ({"data": []}, "neither"),
        ("text", "neither"),
        ([1, 2], "not an object"),
        ({"session": None, "messages": []}, "no session"),
        ({"session": f.session(SES), "messages": "x"}, "not a list"),
    ],
)
def test_unusable_payloads_are_refused(payload: Any, message: str) -> None:
    with pytest.raises(BadShareData, match=message):
        to_export(payload)


# -- import from a cloudsession server ----------------------------------------------------------


async def test_import_writes_the_export_format(live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live)
    out = tmp_path / "out.json"
    assert share["url"].endswith(f"/share/{share['id']}")
    assert await run_cli("import", str(live.make_url(f"/share/{share['id']}")), "-o", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["info"]["id"].startswith("ses_") and doc["info"]["id"] != SES  # the public id
    assert SES not in out.read_text()
    assert [[p["text"] for p in m["parts"]] for m in doc["messages"]] == [["question"], ["answer one", "answer two"]]
    assert "Wrote session" in capsys.readouterr().err


async def test_import_to_stdout(live, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live)
    assert await run_cli("import", str(live.make_url(f"/share/{share['id']}"))) == 0
    assert json.loads(capsys.readouterr().out)["messages"][0]["info"]["id"] == "msg_0001"


async def test_a_large_share_arrives_whole(live, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Several megabytes reach the client in many reads; all of them must be kept.
    long_text = "line of a long tool output\n" * 150_000
    items = [*share_items(), f.item("part", f.text_part(SES, "msg_0002", long_text, id="prt_0009"))]
    share = await make_share(live, items)
    out = tmp_path / "out.json"
    assert await run_cli("import", str(live.make_url(f"/share/{share['id']}")), "-o", str(out)) == 0
    texts = [p["text"] for p in json.loads(out.read_text())["messages"][1]["parts"]]
    assert texts == ["answer one", "answer two", long_text]


async def test_private_share_needs_its_read_token(live, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live, private=True)
    token = share["readToken"]
    url = str(live.make_url(f"/share/{share['id']}"))
    out = tmp_path / "out.json"

    assert await run_cli("import", url, "-o", str(out)) == 3
    err = capsys.readouterr().err
    assert "Share not found" in err and "--token" in err
    assert not out.exists()

    assert await run_cli("import", url, "--token", token, "-o", str(out)) == 0
    assert await run_cli("import", f"{url}?token={token}", "-o", str(out)) == 0
    monkeypatch.setenv("CLOUDSESSION_SHARE_TOKEN", token)
    assert await run_cli("import", url, "-o", str(out)) == 0
    assert json.loads(out.read_text())["messages"]
    assert token not in capsys.readouterr().err


async def test_deleted_share_is_not_found(live, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live)
    async with live_client(live) as client, client.delete(f"/api/share/{share['id']}", json={"secret": share["secret"]}) as resp:
        assert resp.status == 200
    assert await run_cli("import", str(live.make_url(f"/share/{share['id']}"))) == 3
    assert f"Share not found: {live.make_url('/share/' + share['id'])}" in capsys.readouterr().err


async def test_expired_share_is_gone(live, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live, ttl=1)
    await asyncio.sleep(1.1)
    assert await run_cli("import", str(live.make_url(f"/share/{share['id']}"))) == 4
    assert "Share expired" in capsys.readouterr().err


async def test_empty_share_is_reported(live, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live, [f.item("session", f.session(SES))])
    assert await run_cli("import", str(live.make_url(f"/share/{share['id']}"))) == 5
    assert "no messages yet" in capsys.readouterr().err


# -- import from other servers ------------------------------------------------------------------


async def stand_in(aiohttp_server, routes: dict[str, Any], seen: list[dict[str, str]] | None = None):  # type: ignore[no-untyped-def]
    """A server answering ``routes[path]`` (a response factory) and recording request headers."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if seen is not None:
            seen.append({"path": request.path, **{k.lower(): v for k, v in request.headers.items()}})
        factory = routes.get(request.path)
        if factory is None:
            return web.json_response({"error": "Not Found"}, status=404)
        return factory(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await aiohttp_server(app)


async def test_reference_worker_object_form(aiohttp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The reference has no /data; its GET /api/share/<id> answers the stored object (with the
    secret, a defect): the import falls back to it and leaves the secret behind."""
    items = share_items()
    agent_session = {
        "session": items[0]["data"], "messages": [i["data"] for i in items if i["type"] == "message"],
        "parts": [i["data"] for i in items if i["type"] == "part"], "diffs": [], "models": [],
        "metadata": {"createdAt": 1, "lastUpdated": 2, "syncCount": 3, "secret": "c710f211-4932", "sessionID": SES},
    }
    server = await stand_in(aiohttp_server, {"/api/share/ref12345": lambda r: web.json_response(agent_session)})
    out = tmp_path / "out.json"
    assert await run_cli("import", str(server.make_url("/share/ref12345")), "-o", str(out)) == 0
    assert json.loads(out.read_text()) == to_export(items).document
    assert "c710f211" not in out.read_text()


@pytest.mark.parametrize(
    "response, code, message",
    [
        (lambda r: web.Response(text="<html>login</html>", content_type="text/html"), 5, "not JSON (text/html)"),
        (lambda r: web.Response(text="boom", status=500), 5, "HTTP 500 Internal Server Error"),
        (lambda r: web.Response(status=403), 5, "refused (HTTP 403)"),
        (lambda r: web.json_response({"unexpected": True}), 5, "neither"),
        (lambda r: web.Response(status=302, headers={"Location": "javascript:alert(1)"}), 5, "unsupported URL"),
    ],
)
async def test_bad_answers_are_explained(aiohttp_server, capsys: pytest.CaptureFixture[str], response: Any, code: int, message: str) -> None:  # type: ignore[no-untyped-def]
    server = await stand_in(aiohttp_server, {"/api/share/abc/data": response})
    assert await run_cli("import", str(server.make_url("/share/abc"))) == code
    assert message in capsys.readouterr().err


async def test_too_large_answer_is_refused(aiohttp_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    server = await stand_in(aiohttp_server, {"/api/share/abc/data": lambda r: web.json_response(share_items())})
    assert await run_cli("import", str(server.make_url("/share/abc")), "--max-bytes", "100") == 5
    assert "larger than the limit of 100 bytes" in capsys.readouterr().err


async def test_token_is_sent_as_a_header_and_not_across_origins(aiohttp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seen: list[dict[str, str]] = []
    other = await stand_in(aiohttp_server, {"/api/share/abc/data": lambda r: web.json_response(share_items())}, seen)
    first = await stand_in(aiohttp_server, {"/api/share/abc/data": lambda r: web.Response(status=307, headers={"Location": str(other.make_url("/api/share/abc/data"))})}, seen)
    out = tmp_path / "out.json"
    assert await run_cli("import", str(first.make_url("/share/abc")) + "?token=rt_secret", "-o", str(out)) == 0
    assert [(s["path"], s.get("x-opencode-share-token")) for s in seen] == [("/api/share/abc/data", "rt_secret"), ("/api/share/abc/data", None)]
    assert all("token" not in s["path"] for s in seen)


async def test_network_error_and_invalid_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("import", f"http://127.0.0.1:{closed_port()}/share/abc") == 6
    assert "Could not reach http://127.0.0.1:" in capsys.readouterr().err
    assert await run_cli("import", "https://example.com/s/abc?token=rt_hidden") == 2
    err = capsys.readouterr().err
    assert "Invalid share URL 'https://example.com/s/abc'" in err and "rt_hidden" not in err


async def test_unwritable_output_fails_cleanly(live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live)
    target = tmp_path / "missing-dir" / "out.json"
    assert await run_cli("import", str(live.make_url(f"/share/{share['id']}")), "-o", str(target)) == 1
    assert "cannot write" in capsys.readouterr().err


# -- export from the store ----------------------------------------------------------------------


async def test_export_reads_the_store_like_import_reads_the_server(live, env: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    share = await make_share(live, private=True)
    imported, exported, original = tmp_path / "imported.json", tmp_path / "exported.json", tmp_path / "original.json"
    url = str(live.make_url(f"/share/{share['id']}"))
    assert await run_cli("import", url, "--token", share["readToken"], "-o", str(imported)) == 0
    data_dir = str(env.data_dir)
    assert await run_cli("export", share["id"], "--data-dir", data_dir, "-o", str(exported)) == 0
    assert json.loads(exported.read_text()) == json.loads(imported.read_text())
    assert await run_cli("export", share["id"], "--data-dir", data_dir, "--original-ids", "-o", str(original)) == 0
    doc = json.loads(original.read_text())
    assert doc["info"]["id"] == SES and doc["messages"][0]["info"]["sessionID"] == SES


async def test_export_of_an_unknown_share(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("export", "nosuchid", "--data-dir", str(env.data_dir)) == 1
    assert "no readable share 'nosuchid'" in capsys.readouterr().err


async def test_the_pages_downloads_match_the_cli_export(live, env: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bs4 import BeautifulSoup

    share = await make_share(live, private=True)
    token = share["readToken"]
    exported, standalone = tmp_path / "exported.json", tmp_path / "share.html"
    data_dir = str(env.data_dir)
    assert await run_cli("export", share["id"], "--data-dir", data_dir, "-o", str(exported)) == 0
    assert await run_cli("export", share["id"], "--data-dir", data_dir, "--html", "-o", str(standalone)) == 0
    async with live_client(live) as client:
        async with client.get(f"/share/{share['id']}/export.json", params={"token": token}) as resp:
            assert resp.status == 200 and resp.headers["Content-Disposition"] == f'attachment; filename="opencode-session-{share["id"]}.json"'
            assert resp.headers["Cache-Control"] == "private, no-store"
            assert json.loads(await resp.read()) == json.loads(exported.read_text())
        async with client.get(f"/share/{share['id']}/export.html", params={"token": token}) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
        async with client.get(f"/share/{share['id']}/export.json") as resp:
            assert resp.status == 404  # a private share needs its token here too
    for html in (page, standalone.read_text()):
        soup = BeautifulSoup(html, "html.parser")
        # Self-contained: styles inlined, no script, nothing loaded from anywhere.
        assert soup.select("script") == [] and soup.select("link[rel=stylesheet]") == [] and soup.select("[src^='/']") == []
        assert "--bg:" in soup.select_one("style").get_text()
        assert [a["id"] for a in soup.select("#messages > article")] == ["msg-msg_0001", "msg-msg_0002"]
        assert "answer one" in soup.get_text() and SES not in html


async def test_the_html_export_holds_every_page(live, env: Settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bs4 import BeautifulSoup

    items = [f.item("session", f.session(SES))]
    for n in range(230):
        items.append(f.item("message", f.user_message(SES, id=f"msg_{n:04d}", time={"created": 1_700_000_000_000 + n})))
        items.append(f.item("part", f.text_part(SES, f"msg_{n:04d}", f"prompt number {n}", id=f"prt_{n:04d}")))
    share = await make_share(live, items)
    out = tmp_path / "all.html"
    assert await run_cli("export", share["id"], "--data-dir", str(env.data_dir), "--html", "-o", str(out)) == 0
    soup = BeautifulSoup(out.read_text(), "html.parser")
    assert len(soup.select("#messages > article")) == 230 and soup.select("nav.pager") == []
    assert all(a["href"].startswith("#msg-") for a in soup.select("#nav-list a"))
