"""The owner key never leaks: content that mentions the share's own real session ID (in any case)
is redacted in every public output, and a short session ID never becomes, or appears in, a link.

The real session ID is the owner's key: whoever knows it can ``POST /api/share {"sessionID"}``
and receive the secret. Agents mention it often (``opencode export ses_...``, a log line, a path).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from bs4 import BeautifulSoup
from factories import NAMESPACE, settings_for_tests
from hypothesis import given, settings
from hypothesis import strategies as st
from view_data import SES, item, part, rich_items, session, user

from cloudsession import cli, credentials
from cloudsession.shares import public
from cloudsession.shares.public import Redactor
from cloudsession.web.app import create_app
from cloudsession.web.keys import LIVE

ADMIN_KEY = "admin-key-for-redaction-tests-0123"
# Values whose text the page shows but that hold structure (ids, enums, links): left alone so the
# share still renders as a share.
STRUCTURAL = {"id", "sessionID", "messageID", "parentID", "type", "role", "status", "callID", "url", "mime", "tool", "providerID"}
PATH_KEYS = {"filePath", "file", "path", "directory", "cwd", "root", "filename"}


def variants(real: str) -> list[str]:
    return [real, real.upper(), real.lower(), real.swapcase(), real[:4].upper() + real[4:]]


def contaminate(value: Any, real: str) -> Any:
    """Mention ``real`` (cycling through its case variants) in every string that renders."""
    cycle = itertools.cycle(variants(real))

    def walk(v: Any, key: str | None) -> Any:
        if isinstance(v, dict):
            out = {k: walk(x, k) for k, x in v.items()}
            if key == "input":  # a tool input whose key is the id
                out[next(cycle)] = "as a key"
            return out
        if isinstance(v, list):
            return [walk(x, key) for x in v]
        if isinstance(v, str) and key not in STRUCTURAL:
            variant = next(cycle)
            return f"/tmp/{variant}/{v}" if key in PATH_KEYS else f"{v} {variant}"
        return v

    return walk(value, None)


def mentioning_items(real: str) -> list[dict[str, Any]]:
    items = contaminate(rich_items(), real)
    for entry in items:  # the share's own ids stay the owner's (the server rewrites sessionID)
        if entry["type"] == "session":
            entry["data"]["id"] = real
        elif entry["type"] in ("message", "part"):
            entry["data"]["sessionID"] = real
    message = next(e["data"] for e in items if e["type"] == "message")
    markdown = (
        f"Run `opencode export {real}` or **{real.upper()}** or _{real.lower()}_ or "
        f"[the log](https://example.com/{real}/log) or {real.replace('_', chr(92) + '_')}\n\n"
        f"```sh\nopencode export {real}\nls /tmp/{real.swapcase()}/\n```\n"
    )
    items.append(item("part", {**part(message, "text", text=markdown), "sessionID": real}))
    items.append(item("model", [{"id": f"model-{real}", "providerID": "anthropic", "name": f"Model {real.upper()}"}]))
    return items


def assert_clean(body: str, real: str, where: str) -> None:
    assert real.lower() not in body.lower(), f"{where} contains the real session id"


def page_text(html: str) -> str:
    return BeautifulSoup(html, "html.parser").get_text()


@pytest.fixture
async def web(aiohttp_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = settings_for_tests(tmp_path / "data", rpc_shared_key=ADMIN_KEY, public_listing=True)
    return await aiohttp_client(create_app(settings))


async def create(web, session_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    response = await web.post("/api/share", json={"sessionID": session_id})
    assert response.status == 200, await response.text()
    return await response.json()


async def sync(web, creds: dict[str, str], items: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    response = await web.post(f"/api/share/{creds['id']}/sync", json={"secret": creds["secret"], "data": items})
    assert response.status == 200, await response.text()


async def public_bodies(web, creds: dict[str, str], items: list[dict[str, Any]]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Every public (and admin) read of the share, by name."""
    sid = creds["id"]
    ids = [("id", i["data"]["id"]) for i in items if i["type"] == "message"]
    flags = [("header", "1"), ("diffs", "1"), ("digest", "1"), ("nav", "1")]
    admin = {"x-opencode-share-key": ADMIN_KEY}
    reads = {
        "page": f"/share/{sid}",
        "last page": f"/share/{sid}?page=last",
        "data": f"/api/share/{sid}/data",
        "object": f"/api/share/{sid}",
        "alias object": f"/api/shares/{sid}",
        "metadata": f"/api/share/{sid}/metadata",
        "public listing": "/sessions",
    }
    bodies = {}
    for name, url in reads.items():
        response = await web.get(url)
        assert response.status == 200, (name, response.status)
        bodies[name] = await response.text()
    fragments = await web.get(f"/share/{sid}/fragments", params=ids + flags)
    assert fragments.status == 200
    bodies["fragments"] = await fragments.text()
    bodies["admin list"] = await (await web.get("/api/sessions", headers=admin)).text()
    bodies["admin listing page"] = await (await web.get("/sessions", headers=admin)).text()
    return bodies


async def test_owner_id_in_every_field_is_redacted_in_every_public_read(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web, SES)
    items = mentioning_items(SES)
    await sync(web, creds, items)
    public = credentials.public_session_id(credentials.parse_namespace(NAMESPACE), SES)
    bodies = await public_bodies(web, creds, items)
    for name, body in bodies.items():
        assert_clean(body, SES, name)
        assert creds["secret"] not in body, name
    for name in ("page", "fragments"):
        assert_clean(page_text(bodies[name]), SES, name)
    # Replaced by the public id, not dropped: the content still reads.
    data = json.loads(bodies["data"])
    assert data[0]["data"]["title"] == f"Add a greeting module {public}"
    texts = [i["data"].get("text", "") for i in data if i["type"] == "part"]
    assert any(f"opencode export {public}" in t for t in texts)
    assert f"opencode export {public}" in page_text(bodies["page"])
    assert json.loads(bodies["metadata"])["title"] == f"Add a greeting module {public}"
    # Searching the listing for the real id finds nothing (no oracle for guessing it).
    found = await web.get("/sessions", params={"q": SES[-12:]})
    assert "session-card" not in await found.text()


async def test_owner_id_is_redacted_in_live_frames_of_both_formats_and_relay_messages(web) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web, SES)
    published: list[bytes] = []

    class CapturingRelay:
        def publish(self, share_id: str, sync_count: int | None, items: Any = None, *, kind: str = "synced") -> None:
            published.append(json.dumps(items).encode())

    web.server.app[LIVE].relay = CapturingRelay()
    reference = await web.ws_connect(f"/ws/{creds['id']}")
    events = await web.ws_connect(f"/ws/{creds['id']}?format=events")
    items = mentioning_items(SES)
    await sync(web, creds, items)
    message = items[1]["data"]
    await sync(web, creds, [item("part", {**part(message, "text", text=f"again: {SES.upper()}"), "sessionID": SES})])
    frames: list[str] = []
    for ws, count in ((reference, 2), (events, 3)):
        for _ in range(count):
            received = await asyncio.wait_for(ws.receive(), timeout=5)
            assert received.type == aiohttp.WSMsgType.TEXT
            frames.append(received.data)
        await ws.close()
    assert "again:" in frames[1]
    for frame in frames:
        assert_clean(frame, SES, "a live frame")
    assert len(published) == 2
    for message_bytes in published:
        assert_clean(message_bytes.decode(), SES, "a relay message")


async def test_export_for_others_redacts_the_owner_id(aiohttp_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for_tests(tmp_path / "data")
    web = await aiohttp_client(create_app(settings))
    creds = await create(web, SES)
    await sync(web, creds, mentioning_items(SES))
    monkeypatch.setenv("SESSIONS_SHARED_SECRET", NAMESPACE)
    monkeypatch.delenv("CLOUDSESSION_STORE", raising=False)
    out, original = tmp_path / "export.json", tmp_path / "original.json"
    args = ["export", creds["id"], "--data-dir", str(settings.data_dir)]
    assert await asyncio.to_thread(cli.main, [*args, "-o", str(out)]) == 0
    assert_clean(out.read_text(), SES, "the export")
    # The operator's own copy keeps the real ids, on request.
    assert await asyncio.to_thread(cli.main, [*args, "--original-ids", "-o", str(original)]) == 0
    assert SES in original.read_text()


SHORT_IDS = ["zq8Kx7Wp", "ses_Qz9w", "Qz9wXv7Kp2m", "k"]


@pytest.mark.parametrize("short", SHORT_IDS)
async def test_a_short_session_id_is_never_the_link_nor_in_any_output(web, short: str) -> None:  # type: ignore[no-untyped-def]
    creds = await create(web, short)
    if len(short) > 1:
        assert short.lower() not in creds["id"].lower() and short.lower() not in creds["url"].lower()
    assert creds["id"] != short[-8:]
    assert await create(web, short) == creds  # still idempotent
    if len(short) == 1:
        return  # a one-character id is in every page's markup; only the link matters
    u = user(1000, sessionID=short)
    items = [
        item("session", session(id=short, title=f"about {short} and {short.upper()}", directory=f"/tmp/{short.lower()}")),
        item("message", u),
        item("part", {**part(u, "text", text=f"run `opencode export {short}`; ok {short.swapcase()}"), "sessionID": short}),
    ]
    await sync(web, creds, items)
    bodies = await public_bodies(web, creds, items)
    for name, body in bodies.items():
        assert_clean(body, short, name)
    data = json.loads(bodies["data"])
    assert "opencode export ses_" in data[2]["data"]["text"]


def test_long_session_ids_keep_the_reference_share_ids() -> None:
    namespace = credentials.parse_namespace(NAMESPACE)
    for session_id, share_id in [
        ("session-abc123", "n-abc123"),
        ("ses_0123456789ABCDEFGH", "ABCDEFGH"),
        ("ses_rpc00001", "rpc00001"),
        ("ses_e0398094effebZevp8D0r58s46", "D0r58s46"),
    ]:
        assert credentials.share_id_candidates(namespace, session_id)[0] == share_id


def test_redactor_replaces_every_case_variant_in_values_and_keys() -> None:
    redactor = Redactor([(SES, "ses_PUBLIC")])
    value = {"a": [f"x {v} y" for v in variants(SES)], SES.upper(): 1, "n": 5, "b": None}
    out = redactor.value(value)
    assert out == {"a": ["x ses_PUBLIC y"] * 5, "ses_PUBLIC": 1, "n": 5, "b": None}
    assert redactor.serialised(f"<p>{SES.swapcase()}</p>") == "<p>ses_PUBLIC</p>"
    assert redactor.serialised_bytes(f'"{SES.lower()}"'.encode()) == b'"ses_PUBLIC"'


def test_redactor_handles_many_owners_and_short_ids_only_in_values() -> None:
    pairs = [(f"ses_{n:04d}{'q' * 22}", f"ses_pub{n}") for n in range(3000)] + [("ab1", "ses_short")]
    redactor = Redactor(pairs)
    text = " ".join(real.upper() for real, _ in pairs[::7])
    assert redactor.text(text) == " ".join(public for _, public in pairs[::7])
    # Short ids are replaced inside values, but serialised output (markup, JSON keys) only loses
    # the long ones: replacing three characters in markup would break it.
    assert redactor.value({"ab1": "xAB1y"}) == {"ab1": "xses_shorty"}
    assert redactor.serialised("<ab1>") == "<ab1>"


async def test_an_output_that_forgets_to_redact_is_redacted_at_the_boundary(aiohttp_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A handler added later that renders the raw stored state (the mistake the single redaction
    point exists for) still cannot leak the owner key: reading the share registered it."""
    from aiohttp import web as aioweb

    from cloudsession.web.keys import SERVICE

    async def careless(request: aioweb.Request) -> aioweb.Response:
        state = await request.app[SERVICE].load(request.match_info["id"])
        return aioweb.Response(text=f"<h1>{state.session['title']}</h1><p>{state.meta.session_id.upper()}</p>", content_type="text/html")

    app = create_app(settings_for_tests(tmp_path / "data"))
    app.router.add_get("/careless/{id}", careless)
    web = await aiohttp_client(app)
    creds = await create(web, SES)
    await sync(web, creds, [item("session", session(title=f"about {SES}"))])
    body = await (await web.get(f"/careless/{creds['id']}")).text()
    assert_clean(body, SES, "the careless page")
    public = credentials.public_session_id(credentials.parse_namespace(NAMESPACE), SES)
    assert body == f"<h1>about {public}</h1><p>{public}</p>"


async def test_every_live_frame_passes_through_the_viewers_redaction() -> None:
    """Even items that skipped the domain's redaction (a relayed message from an older replica)
    reach a viewer redacted: the hub makes every frame through the share's redactor."""
    from cloudsession.live.hub import FORMAT_REFERENCE, LiveHub, Viewer

    sent: list[str] = []

    class Socket:
        async def send_text(self, payload: bytes) -> None:
            sent.append(payload.decode())

        async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
            return True

        def abort(self) -> None:
            pass

    hub = LiveHub()
    viewer = Viewer(Socket(), FORMAT_REFERENCE)
    hub.add("D0r58s46", viewer, Redactor([(SES, "ses_PUBLIC")]).serialised)
    await hub.deliver_synced("D0r58s46", [item("part", {"id": "prt_1", "text": f"see {SES.upper()}"})], 1)
    viewer.queue.put_nowait(None)  # then close
    await viewer.pump()
    assert sent == ['[{"type":"part","data":{"id":"prt_1","text":"see ses_PUBLIC"}}]']


async def test_the_social_card_shows_no_owner_id_secret_or_token(web) -> None:  # type: ignore[no-untyped-def]
    """The card leaves the process as pixels, out of reach of the response-level redaction: its
    text is redacted before drawing, and credential-shaped words are left out as well."""
    from io import BytesIO

    from PIL import Image

    from cloudsession.web.keys import RENDERER, SERVICE

    creds = await create(web, SES)
    fake_key = "sk-ant-api03-" + "Q7xLp2" * 6
    title = f"Debug {SES.upper()} and {SES.swapcase()} with secret {creds['secret']} and key {fake_key}"
    items = [item("session", session(id=SES, title=title)), *mentioning_items(SES)[1:]]
    await sync(web, creds, items)
    response = await web.get(f"/share/{creds['id']}/card.png")
    assert response.status == 200 and response.content_type == "image/png"
    with Image.open(BytesIO(await response.read())) as image:
        assert image.size == (1200, 630)
    share = await web.server.app[SERVICE].public_share(creds["id"], None)
    text = web.server.app[RENDERER].pages.view(share).card_text("share.example.com")
    shown = " ".join([text.site, text.title, text.model, text.counts, text.updated])
    assert_clean(shown, SES, "card")
    public = credentials.public_session_id(credentials.parse_namespace(NAMESPACE), SES)
    for secret in (creds["secret"], fake_key, public):
        assert secret not in shown
    assert text.title == "Debug [hidden] and [hidden] with secret [hidden] and key [hidden]"
    assert text.model == "Claude Sonnet 4 [hidden] (anthropic/claude-sonnet-4) and 2 more"  # mentions it too


def test_the_card_filters_a_bounded_head_of_a_huge_title_and_never_shows_a_cut_word(monkeypatch: pytest.MonkeyPatch) -> None:
    """The card's lines are computed on every request for the card (before its ETag is known):
    a title of megabytes must cost the credential filter (quadratic at worst) no more than the
    head the card can show; the owner id is redacted wherever it stands, and a credential cut
    by that head does not show in part."""
    from cloudsession.render import card

    pattern = card._CREDENTIAL_LIKE

    class Bounded:
        def sub(self, repl: str, text: str) -> str:
            assert len(text) <= 4096, f"the credential filter reads {len(text)} characters of a line the card shows 400 of"
            return pattern.sub(repl, text)

    monkeypatch.setattr(card, "_CREDENTIAL_LIKE", Bounded())
    redactor = Redactor([(SES, "ses_PUBLIC")])
    huge = "a-" * 1_000_000
    text = card.card_text(site="s", title=huge, models=[huge], messages=1, parts=1, updated_ms=0, redact=redactor.serialised)
    assert text.title == card.HIDDEN and text.model == card.HIDDEN
    # A long token early on shrinks to "[hidden]": what stood near the cut comes into view.
    key = "sk-ant-api03-" + "Q7xLp2" * 6
    for secret in (SES, key):
        for start in range(780, 800):
            prefix = "w w " + "Q7" * 250 + " "
            title = prefix + ("x " * 400)[: start - len(prefix)].rstrip() + " " + secret + " tail"
            shown = card.card_text(site="s", title=title, models=[], messages=1, parts=1, updated_ms=0, redact=redactor.serialised).title
            assert shown.startswith("w w [hidden] x x") and len(shown) < 400
            # The owner id redacted where the head holds it whole; a cut credential left out.
            assert SES[4:10] not in shown and key[:3] not in shown


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["ses_abcdefghijkl", "SES_ABCDEFGHIJKLmn", "ses_abcdefghijklmn", "x", "ses_", "é", "\"", "ses_abcdefghijk"]), max_size=12),
)
def test_the_search_for_a_few_owner_ids_replaces_exactly_what_the_anchor_pattern_does(pieces: list[str]) -> None:
    # A share's few owners are searched for with bytes.find; a listing's many with the anchor
    # pattern: the same body must come out of both, overlaps and prefixes of one another included.
    redactor = Redactor([("ses_abcdefghijkl", "ses_PUBLIC_ONE_0"), ("ses_abcdefghijklmn", "ses_PUBLIC_TWO_00")])
    body = "".join(pieces).encode()
    found = redactor.serialised_bytes(body)
    with mock.patch.object(public, "_FIND_LIMIT", 0):
        assert redactor.serialised_bytes(body) == found
    assert b"abcdefghijkl" not in found.lower()
